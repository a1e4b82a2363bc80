"""``ablate``: prune whole sets of heads at once, possibly in several layers, on every image.

Below a set's lowest pruned layer nothing changes, and sets whose masks agree below a layer share
the stream entering it, so the sets run as a tree of streams: each branches off the unpruned
pass or another set's stream at the first layer where they differ, and runs from there with its
own head mask (see :mod:`jaxvit_interp.importance.set_engine`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation import unpruned_outputs
from jaxvit_interp.importance.ablation_kinds import Ablation, as_ablation
from jaxvit_interp.importance.metrics import ablation_metrics, backbone_metrics
from jaxvit_interp.importance.set_engine import run_sets
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.quantities import PRUNING_METRICS
from jaxvit_interp.summary import Summarized, listed, number, sizes

Array = jax.Array

# What a set ablation measures: the single-head metrics that make sense for a set (``taylor`` is
# a gradient at the unpruned model, not an ablation).
SET_METRICS: tuple[str, ...] = PRUNING_METRICS


@dataclasses.dataclass(frozen=True, repr=False)
class SetAblation(Summarized):
    """The effect of pruning each of several head sets, per image.

    Metric arrays are ``[image, set]`` (float32; ``flip`` bool) or None when not requested; the
    definitions are those of :class:`~jaxvit_interp.importance.HeadImportance` with "the head"
    read as "every head of the set".  ``layer`` is the change of the set's lowest pruned layer's
    attention output, ``||O_l - O'_l|| / ||O_l||``.

    Attributes:
      head_masks: ``[set, layer, head]`` float32, 0 on each set's pruned heads.
      predictions_pruned: ``[image, set]`` the pruned model's top-1 class (-1 for a backbone).
      probs, predictions, labels, labels_are_predictions: the unpruned model's, as in
        :class:`~jaxvit_interp.importance.HeadImportance`.
      metrics: names of the metrics computed.
    """

    head_masks: np.ndarray
    prob: np.ndarray | None
    prob_drop: np.ndarray | None
    kl: np.ndarray | None
    layer: np.ndarray | None
    repr: np.ndarray | None
    flip: np.ndarray | None
    predictions_pruned: np.ndarray
    probs: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    labels_are_predictions: bool
    metrics: tuple[str, ...]

    def __getitem__(self, metric: str) -> np.ndarray:
        """``result["kl"]``: one metric's ``[image, set]`` array."""
        value = getattr(self, metric, None) if metric in SET_METRICS else None
        if value is None:
            raise KeyError(f"metric {metric!r} is not in this result; it has {self.metrics}")
        return value

    @property
    def accuracy(self) -> np.ndarray:
        """``[set]`` top-1 accuracy against ``labels`` after pruning each set."""
        return (self.predictions_pruned == self.labels[:, None]).mean(axis=0)

    def _summary(self):
        images, sets = self.predictions_pruned.shape
        rows = [("metrics", listed(self.metrics))]
        if self.probs.shape[1]:  # a classifier
            unpruned = number((self.predictions == self.labels).mean())
            pruned = self.accuracy
            rows.append(
                (
                    "accuracy",
                    f"{unpruned} unpruned; {number(pruned.min())} to {number(pruned.max())} "
                    f"with a set pruned (median {number(np.median(pruned))})",
                )
            )
        shown = "prob_drop" if "prob_drop" in self.metrics else self.metrics[0]
        mean = np.nanmean(np.asarray(self[shown], np.float64), axis=0)
        worst = int(np.nanargmax(mean)) if np.isfinite(mean).any() else 0
        rows.append(
            (
                f"mean {shown}",
                f"{number(mean[worst])} at most (set {worst}), {number(np.nanmean(mean))} on average",
            )
        )
        return sizes(images=images, sets=sets), rows


def _set_reduce(logits, z, targets, logits_pruned, z_pruned) -> dict[str, Array]:
    """Per set and image: the output-side metrics plus the pruned top-1 class."""
    classifier = logits.shape[-1] > 0

    def one(lg, zz, y, lp, zp):
        out = (ablation_metrics if classifier else backbone_metrics)(lg, zz, y, lp, zp)
        out["top1"] = jnp.argmax(lp).astype(jnp.int32) if classifier else jnp.int32(-1)
        return out

    per_slot = jax.vmap(one, in_axes=(None, None, None, 0, 0))
    per_layer = jax.vmap(per_slot, in_axes=(None, None, None, 0, 0))
    return jax.vmap(per_layer)(logits, z, targets, logits_pruned, z_pruned)


def head_masks(config: ViTConfig, head_sets) -> np.ndarray:
    """``[set, layer, head]`` float32 head masks (0 prunes) of ``head_sets``.

    ``head_sets``: a ``[set, layer, head]`` array of head masks (0 or False prunes), or a sequence
    of sets, each a sequence of ``(layer, head)`` pairs.  Every set prunes at least one head.
    """
    L, H = config.num_layers, config.num_heads
    if isinstance(head_sets, np.ndarray | jax.Array) and np.ndim(head_sets) == 3:
        masks = np.asarray(head_sets)
        if masks.shape[1:] != (L, H):
            raise InputError(
                f"head_sets masks have shape {masks.shape}; this model needs [set, {L}, {H}]"
            )
        if not np.isin(masks, (0, 1)).all():
            raise InputError("head_sets masks must hold only 0 (pruned) and 1 (kept)")
        masks = masks.astype(np.float32)
    else:
        sets = list(head_sets)
        masks = np.ones((len(sets), L, H), np.float32)
        for i, heads in enumerate(sets):
            try:
                pairs = validate.check_heads(config, list(heads))
            except InputError as e:
                raise InputError(f"head set {i}: {e}") from None
            for layer, head in pairs:
                masks[i, layer, head] = 0.0
    if not len(masks):
        raise InputError("head_sets is empty; pass at least one set of (layer, head) pairs")
    empty = np.flatnonzero(masks.min(axis=(1, 2)) == 1)
    if empty.size:
        raise InputError(f"head set {int(empty[0])} prunes no head")
    return masks


def ablate(
    config: ViTConfig,
    params: Any,
    images,
    head_sets,
    labels=None,
    *,
    metrics: Iterable[str] = SET_METRICS,
    ablation: str | Ablation = "zero",
    reference=None,
    execution: Execution | None = None,
) -> SetAblation:
    """Prune each set of heads (all of its heads at once) on every image and measure the effect.

    Exact: each set's result is that of one plain forward pass with the set's head mask (every
    pruned head's output replaced as ``ablation`` says, in every layer from clean passes of the
    reference images), to float32 rounding.

    Args:
      config, params: the model.
      images: ``[image, height, width, channels]`` preprocessed pixels.
      head_sets: a sequence of sets of ``(layer, head)`` pairs, or ``[set, layer, head]`` head
        masks (0 prunes).
      labels: ``[image]`` int class ids, or None to measure against the unpruned prediction.
      metrics: any of ``prob prob_drop kl layer repr flip`` (a backbone: ``layer repr``).
      ablation, reference, execution: as in
        :func:`~jaxvit_interp.importance.head_importance`.

    Returns:
      :class:`SetAblation` with arrays ``[image, set]``.
    """
    validate.check_unpruned(config, "ablate")
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in SET_METRICS]
    if unknown:
        raise InputError(
            f"unknown set-ablation metric(s) {unknown}; expected some of {', '.join(SET_METRICS)}"
        )
    metrics = validate.check_metrics(metrics)
    validate.check_classifier(config, metrics, labels, "ablate")
    masks = head_masks(config, head_sets)
    ablation = as_ablation(ablation)
    execution = as_execution(execution)
    images = validate.check_images(config, images)
    labels = validate.check_labels(config, labels, images.shape[0])
    reference = validate.check_reference(config, ablation, reference, images)

    out = run_sets(
        config,
        params,
        images,
        labels,
        masks,
        _set_reduce,
        with_layer="layer" in metrics,
        ablation=ablation,
        reference=reference,
        execution=execution,
    )
    per_set = out.per_set
    probs, predictions, targets = unpruned_outputs(config, out)
    fields = {m: (per_set.get(m) if m in metrics else None) for m in SET_METRICS}
    return SetAblation(
        head_masks=masks,
        **fields,
        predictions_pruned=per_set["top1"],
        probs=probs,
        predictions=predictions,
        labels=targets,
        labels_are_predictions=labels is None,
        metrics=metrics,
    )
