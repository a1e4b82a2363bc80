"""Activation patching: one head's output carried between a clean image and a corrupted one.

Each pair is a clean image and a corrupted one (the same scene with what matters changed), and
a class ``y``: the label given, else the clean image's prediction.  Patching head ``(l, h)``
runs one image with that head's output before the output projection taken from the other's
clean forward pass, which is a resample ablation
(:func:`~jaxvit_interp.importance.head_importance` with ``ablation="resample"``):

- ``"denoising"``: the corrupted image, with the head's output restored from the clean one
  (``reference=clean``): how much of the clean answer that one head brings back;
- ``"noising"``: the clean image, with the head's output from the corrupted one
  (``reference=corrupted``): how much of the clean answer survives that one head corrupted.

Both give ``p_patched = p(y)`` of the patched run and the normalised score

    score = (p_patched - p_corrupt) / (p_clean - p_corrupt)

per pair and head, with ``p_clean`` and ``p_corrupt`` the unpatched runs' ``p(y)``: 0 where
the patched run answers as the corrupted image does, 1 where it answers as the clean one does.
Denoising: 1 means the head alone restores the clean answer.  Noising: 1 means corrupting the
head alone changes nothing, 0 that it alone gives the corrupted answer.

Where ``|p_clean - p_corrupt| < min_gap`` the pair does not tell clean from corrupted on ``y``
and dividing by the gap would only magnify rounding, so the pair's score is NaN (its
``p_patched`` is still given) and it is not ``defined``; means over pairs leave it out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxvit_interp.attention_pass import reduce_over_images
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation import head_importance
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.summary import Summarized, number, sizes, top_heads

PATCHING_DIRECTIONS: tuple[str, ...] = ("denoising", "noising")


@dataclasses.dataclass(frozen=True, repr=False)
class ActivationPatching(Summarized):
    """Each head patched between the images of each pair (see the module docstring).

    Attributes:
      direction: ``"denoising"`` (the corrupted image with one head from the clean one) or
        ``"noising"`` (the clean image with one head from the corrupted one).
      score: ``[pair, layer, head]`` ``(p_patched - p_corrupt) / (p_clean - p_corrupt)``,
        NaN for a pair that is not ``defined``.
      prob_patched: ``[pair, layer, head]`` ``p(y)`` of the patched run.
      prob_clean, prob_corrupt: ``[pair]`` ``p(y)`` of the clean and of the corrupted image.
      defined: ``[pair]`` True where ``|p_clean - p_corrupt| >= min_gap``.
      labels: ``[pair]`` the class ``y``.
      labels_are_predictions: True when no labels were given (``y`` is the clean image's
        prediction).
      min_gap: the least ``|p_clean - p_corrupt|`` a pair needs for a score.
    """

    direction: str
    score: np.ndarray
    prob_patched: np.ndarray
    prob_clean: np.ndarray
    prob_corrupt: np.ndarray
    defined: np.ndarray
    labels: np.ndarray
    labels_are_predictions: bool
    min_gap: float

    def mean_score(self) -> np.ndarray:
        """``[layer, head]`` the score's mean over the defined pairs (NaN without any)."""
        if not self.defined.any():
            return np.full(self.score.shape[1:], np.nan, np.float32)
        return self.score[self.defined].mean(axis=0)

    def _summary(self):
        pairs, layers, heads = self.score.shape
        defined = int(self.defined.sum())
        rows = [
            ("direction", self.direction),
            (
                "p(y)",
                f"{number(self.prob_clean.mean())} clean, {number(self.prob_corrupt.mean())} "
                "corrupted (mean over pairs)",
            ),
            (
                "scored",
                f"{defined:,} of {pairs:,} pairs (|p_clean - p_corrupt| >= {self.min_gap:g})",
            ),
        ]
        if defined:
            rows.append(("top heads", f"by mean score: {top_heads(self.score[self.defined])}"))
        return sizes(pairs=pairs, layers=layers, heads=heads), rows


@dataclasses.dataclass(frozen=True)
class _ProbsReducer:
    """The unpatched ``softmax`` output of a batch, as a reducer of the attention pass
    (:mod:`jaxvit_interp.attention_pass`): ``probs [batch, class]``."""

    name: str = "probs"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        return {"probs": jax.nn.softmax(out.logits, axis=-1)}


def activation_patching(
    config: ViTConfig,
    params: Any,
    clean,
    corrupted,
    labels=None,
    *,
    direction: str = "denoising",
    min_gap: float = 1e-3,
    execution: Execution | None = None,
) -> ActivationPatching:
    """Patch every head of every layer, one at a time, between the images of each pair.

    Args:
      config, params: the model (a classifier: the score reads ``p(y)``).
      clean, corrupted: ``[pair, height, width, channels]`` preprocessed images, paired by
        position (:func:`~jaxvit_interp.data.images.load_image_pairs` reads pairs from a CSV).
      labels: ``[pair]`` int class ids ``y``, or None for the clean images' predictions.
      direction: ``"denoising"`` (the default: the corrupted image with one head's output
        restored from the clean one) or ``"noising"`` (the clean image with one head's output
        from the corrupted one); see the module docstring.
      min_gap: a pair whose ``|p_clean - p_corrupt|`` is below this gets no score (NaN).
      execution: as in :func:`~jaxvit_interp.importance.head_importance`.

    Returns:
      :class:`ActivationPatching` with arrays ``[pair, layer, head]``.

    Raises:
      InputError: before any model work, for images of the wrong size, an unequal number of
        clean and corrupted images, bad labels, an unknown direction, a gap that is not
        positive, or a backbone without a classifier.
    """
    validate.check_unpruned(config, "activation_patching")
    validate.check_classifier(config, ("prob",), labels, "activation_patching")
    if direction not in PATCHING_DIRECTIONS:
        raise InputError(
            f"unknown patching direction {direction!r}; expected one of "
            f"{', '.join(PATCHING_DIRECTIONS)}"
        )
    min_gap = validate.check_positive("min_gap", min_gap, float)
    execution = as_execution(execution)
    clean = validate.check_images(config, clean, "clean")
    corrupted = validate.check_images(config, corrupted, "corrupted")
    if len(clean) != len(corrupted):
        raise InputError(
            f"clean has {len(clean)} images and corrupted {len(corrupted)}: activation patching "
            "takes them in pairs, clean[i] with corrupted[i]"
        )
    labels = validate.check_labels(config, labels, len(clean))
    from_predictions = labels is None

    # The image that is not patched runs once, unpatched; the patched one runs in the engine,
    # whose unpruned pass gives its own p(y).
    patched, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    quiet = execution.with_progress(False)
    other = reduce_over_images(config, params, source, _ProbsReducer(), quiet, desc="patching")
    if labels is None and direction == "denoising":
        labels = other["probs"].argmax(axis=-1).astype(np.int32)  # the clean predictions
    result = head_importance(
        config,
        params,
        patched,
        labels,
        metrics=("prob",),
        ablation="resample",
        reference=source,
        execution=execution,
    )
    rows = np.arange(len(clean))
    y = result.labels
    own = result.probs[rows, y].astype(np.float64)
    others = other["probs"][rows, y].astype(np.float64)
    p_clean, p_corrupt = (others, own) if direction == "denoising" else (own, others)
    gap = p_clean - p_corrupt
    defined = np.abs(gap) >= min_gap
    shifted = result.prob.astype(np.float64) - p_corrupt[:, None, None]
    score = np.where(
        defined[:, None, None], shifted / np.where(defined, gap, 1.0)[:, None, None], np.nan
    )
    return ActivationPatching(
        direction=direction,
        score=score.astype(np.float32),
        prob_patched=result.prob,
        prob_clean=p_clean.astype(np.float32),
        prob_corrupt=p_corrupt.astype(np.float32),
        defined=defined,
        labels=y,
        labels_are_predictions=from_predictions,
        min_gap=min_gap,
    )
