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
(:data:`~.settings.STAGE_SETTINGS`) computes this stage again and nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxvit_interp.execution import Execution
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.pipeline.settings import STAGE_SETTINGS, AnalysisSettings

SHAPLEY_FILE = "shapley-stage.npz"
# The game: the set-ablation metric whose Shapley values the stage computes.
SHAPLEY_METRIC = "prob_drop"


def stage_settings(settings: AnalysisSettings) -> dict[str, Any]:
    """The settings the stage's result depends on and the fingerprint leaves out: its key."""
    return {name: getattr(settings, name) for name in STAGE_SETTINGS}


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
