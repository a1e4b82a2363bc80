"""The analysis's Shapley stage: each head's fair share of the drop that removing heads causes.

On a seeded subset of ``shapley_images`` of the analysed images, with the run's first ablation
kind and its reference, :func:`~jaxvit_interp.importance.head_shapley` samples the Shapley value
of every head for the game ``v(S)`` = mean ``prob_drop`` with the heads of ``S`` ablated, until
every head's standard error is below ``shapley_stderr`` or ``shapley_permutations`` have run
(a model of a few heads gets exact values). Beside the values the part keeps the single-ablation
``prob_drop`` of each head averaged over the same images and the heads where the two disagree
(:func:`~jaxvit_interp.importance.shapley.disagreement`).

The result is the bundle's ``shapley`` part (:data:`jaxvit_interp.quantities.SCHEMA`), kept in
the run folder as :data:`SHAPLEY_FILE` with the settings it was computed with
(:mod:`.kept_stage`): a resumed run reads it back, and a run asked for other Shapley settings
(:data:`~.settings.SHAPLEY_SETTINGS`) computes this stage again and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.execution import Execution
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.pipeline import kept_stage
from jaxvit_interp.pipeline.settings import SHAPLEY_SETTINGS, AnalysisSettings
from jaxvit_interp.pipeline.subsets import SHAPLEY_STREAM, subset

SHAPLEY_FILE = "shapley-stage.npz"
# The game: the set-ablation metric whose Shapley values the stage computes.
SHAPLEY_METRIC = "prob_drop"


def stage_settings(settings: AnalysisSettings) -> dict[str, Any]:
    """The settings the stage's result depends on and the fingerprint leaves out: its key."""
    return {name: getattr(settings, name) for name in SHAPLEY_SETTINGS}


def compute_shapley(
    config: ViTConfig,
    params: Any,
    images,
    labels: np.ndarray | None,
    prob_drop: np.ndarray,
    image_index: np.ndarray,
    *,
    permutations: int,
    target_stderr: float,
    seed: int,
    ablation: str = "zero",
    reference=None,
    execution: Execution | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ``shapley`` part and what the bundle's meta says of it, for the images
    ``image_index`` of ``images``.

    Args:
      labels: ``[image]`` of all images, or None to measure against the unpruned predictions.
      prob_drop: ``[image, layer, head]`` the single-ablation ``prob_drop`` of all images under
        ``ablation`` (the chunk stage's): its mean over the subset sits beside the values.
      permutations, target_stderr, seed: as :func:`~jaxvit_interp.importance.head_shapley`
        takes them.
      ablation, reference: what takes an ablated head's place, and the reference images of the
        subset's images it comes from.
      execution: how the set ablations run; its progress counts the permutations.
    """
    from jaxvit_interp.importance.shapley import disagreement, head_shapley

    index = np.asarray(image_index)
    result = head_shapley(
        config,
        params,
        images[index],
        None if labels is None else labels[index],
        metric=SHAPLEY_METRIC,
        ablation=ablation,
        reference=reference,
        permutations=permutations,
        target_stderr=target_stderr,
        seed=seed,
        execution=execution,
    )
    single = np.asarray(prob_drop, np.float64)[index].mean(axis=0)
    part = {
        "image_index": index.astype(np.int32),
        "values": result.values.astype(np.float32),
        "stderr": result.stderr.astype(np.float32),
        "single_drop": single.astype(np.float32),
        "disagree": disagreement(result.values, result.stderr, single),
        "v_all": np.float32(result.v_all),
        "permutations": np.int32(result.permutations),
    }
    meta = {
        "images": len(index),
        "metric": SHAPLEY_METRIC,
        "ablation": result.ablation,
        "exact": result.exact,
        "sampling": result.sampling,
        "set_ablations": result.set_ablations,
        "converged": result.converged,
    }
    return part, meta


def wanted(inputs) -> bool:
    """Whether the run has a Shapley stage: asked for, and a classifier (the game is
    ``prob_drop``). ``inputs``: the run's checked inputs (``analyze``'s)."""
    return inputs.settings.shapley_images > 0 and bool(inputs.config.num_classes)


def stage_key(inputs) -> dict[str, Any] | None:
    """The stage's key as the run asks for it (its settings), None where it has none."""
    return stage_settings(inputs.settings) if wanted(inputs) else None


def run_stage(inputs, importance, out: Path, progress) -> tuple[dict, dict] | None:
    """The ``shapley`` part and its meta on the run's seeded subset of the images, with its
    first ablation kind, or None where the run has no Shapley stage (:func:`wanted`).
    Computed once, on the writing process, and kept in the run folder with its settings, so a
    resumed run reads it back and a run with other Shapley settings computes it again.

    Args:
      inputs: the run's checked inputs (``analyze``'s): model, images, labels, settings and the
        reference of each ablation kind.
      importance: the first kind's single-ablation metrics per image (the merged chunks', or a
        bundle's importance part).
      out: the run folder.
      progress: as ``analyze`` takes it.
    """
    from jaxvit_interp.pipeline.chunk import run_execution

    if not wanted(inputs):
        return None
    settings, images = inputs.settings, inputs.images
    index = subset(len(images), settings.shapley_images, settings.seed, SHAPLEY_STREAM)
    kind = settings.ablations[0]
    return kept_stage.load_or_compute(
        out / SHAPLEY_FILE,
        stage_settings(settings),
        lambda: compute_shapley(
            inputs.config,
            inputs.params,
            images,
            inputs.labels,
            importance[SHAPLEY_METRIC],
            index,
            # Pairs of a permutation and its reverse (antithetic sampling): an even number.
            permutations=settings.shapley_permutations // 2 * 2,
            target_stderr=settings.shapley_stderr,
            seed=settings.seed,
            ablation=kind,
            reference=inputs.reference(kind, index),
            execution=run_execution(settings, None, progress),
        ),
    )
