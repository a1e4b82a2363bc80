"""The analysis's patching stage: each head's output carried between the images of given pairs.

Pairs of a clean and a corrupted image among the analysed ones (``analyze(patching_pairs=)``;
on the command line ``--patching-pairs pairs.csv``, read by
:func:`~jaxvit_interp.data.images.read_pairs_csv` and placed among the analysed images by
:func:`~jaxvit_interp.data.images.pair_positions`) are patched head by head in both directions
by :func:`~jaxvit_interp.importance.activation_patching`: denoising (the corrupted image with
one head's output restored from the clean one) and noising (the clean image with one head's
output from the corrupted one), each with its normalised score per pair and its mean over the
pairs that have one.

The result is the bundle's ``patching`` part (:data:`jaxvit_interp.quantities.SCHEMA`), kept in
the run folder as :data:`PATCHING_FILE` with the pairs it was computed for
(:mod:`.kept_stage`): a resumed run reads it back, other pairs compute this stage again and
nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.patching import PATCHING_DIRECTIONS
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.pipeline import kept_stage

PATCHING_FILE = "patching-stage.npz"


def pairs_key(pairs: np.ndarray, image_ids: list[str]) -> dict[str, Any]:
    """The stage's key: the pairs' image ids, clean then corrupted."""
    return {"pairs": [[image_ids[c], image_ids[k]] for c, k in np.asarray(pairs).tolist()]}


def compute_patching(
    config: ViTConfig,
    params: Any,
    images,
    labels: np.ndarray | None,
    pairs: np.ndarray,
    *,
    execution: Execution | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ``patching`` part and what the bundle's meta says of it.

    Args:
      images: every analysed image; ``labels``: theirs, or None for the clean images'
        predictions.
      pairs: ``[pair, 2]`` the positions among ``images`` of each pair's clean and corrupted
        image.
      execution: as :func:`~jaxvit_interp.importance.activation_patching` takes it.
    """
    from jaxvit_interp.importance.patching import activation_patching

    pairs = np.asarray(pairs, np.int64)
    clean, corrupted = images[pairs[:, 0]], images[pairs[:, 1]]
    y = None if labels is None else np.asarray(labels)[pairs[:, 0]]
    part: dict[str, np.ndarray] = {"pairs": pairs.astype(np.int32)}
    for direction in PATCHING_DIRECTIONS:
        result = activation_patching(
            config, params, clean, corrupted, y, direction=direction, execution=execution
        )
        part[f"{direction}_score"] = result.score.astype(np.float32)
        part[f"{direction}_score_mean"] = result.mean_score().astype(np.float32)
        part[f"{direction}_prob"] = result.prob_patched.astype(np.float32)
    # The unpatched runs and the class are the same in both directions.
    part.update(
        prob_clean=result.prob_clean,
        prob_corrupt=result.prob_corrupt,
        defined=result.defined,
        labels=result.labels.astype(np.int32),
    )
    meta = {
        "pairs": len(pairs),
        "scored": int(result.defined.sum()),
        "min_gap": result.min_gap,
        "labels_are_predictions": result.labels_are_predictions,
    }
    return part, meta


def check_pairs(config: ViTConfig, pairs, num_images: int) -> np.ndarray | None:
    """``patching_pairs`` as ``[pair, 2]`` int64 positions among the images, or None; refused
    (naming the pair at fault) before any work when they are not."""
    if pairs is None:
        return None
    if not config.num_classes:
        raise InputError(
            "patching_pairs were given for a backbone without a classifier: the patching "
            "score reads p(label)"
        )
    array = np.asarray(pairs)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise InputError(
            f"patching_pairs must be [pair, 2] (a clean and a corrupted image per pair), got "
            f"shape {array.shape}"
        )
    if array.dtype.kind not in "iu":
        raise InputError(f"patching_pairs must be image positions (integers), got {array.dtype}")
    bad = (array < 0) | (array >= num_images)
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise InputError(
            f"patching_pairs[{row}] = {array[row].tolist()} names an image outside "
            f"0..{num_images - 1}"
        )
    return array.astype(np.int64)


def stage_key(inputs) -> dict[str, Any] | None:
    """The stage's key as the run asks for it (its pairs' image ids), None without pairs.
    ``inputs``: the run's checked inputs (``analyze``'s)."""
    pairs = inputs.patching_pairs
    return None if pairs is None else pairs_key(pairs, inputs.image_ids)


def run_stage(inputs, out: Path, progress) -> tuple[dict, dict] | None:
    """The ``patching`` part and its meta, or None without pairs. Computed once, on the writing
    process, and kept in the run folder with its pairs, so a resumed run reads it back and a
    run with other pairs computes it again.

    Args:
      inputs: the run's checked inputs (``analyze``'s): model, images, labels, settings, pairs.
      out: the run folder.
      progress: as ``analyze`` takes it.
    """
    from jaxvit_interp.pipeline.chunk import run_execution

    key = stage_key(inputs)
    if key is None:
        return None
    return kept_stage.load_or_compute(
        out / PATCHING_FILE,
        key,
        lambda: compute_patching(
            inputs.config,
            inputs.params,
            inputs.images,
            inputs.labels,
            inputs.patching_pairs,
            execution=run_execution(inputs.settings, None, progress),
        ),
    )
