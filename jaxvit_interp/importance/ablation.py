"""``head_importance``: every per-head metric of :data:`jaxvit_interp.quantities.METRICS`, for
every image and every head."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation_kinds import Ablation, as_ablation
from jaxvit_interp.importance.engine import run_engine
from jaxvit_interp.importance.metrics import ablation_metrics, backbone_metrics
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.quantities import ABLATION_METRICS
from jaxvit_interp.quantities import metric as metric_info
from jaxvit_interp.summary import Summarized, listed, number, sizes, top_heads

Array = jax.Array


@dataclasses.dataclass(frozen=True, repr=False)
class HeadImportance(Summarized):
    """Per-image, per-head importance of one model on one image set.

    Metric arrays are ``[image, layer, head]`` (float32; ``flip`` bool) or None when not
    requested.  ``y`` below is ``labels`` (see ``labels_are_predictions``).

    Attributes:
      prob: ``p'_y`` after pruning the head.
      prob_drop: ``p_y - p'_y``.
      kl: ``KL(p || p')`` in nats.
      layer: ``||O_l - O'_l|| / ||O_l||`` (Frobenius, all tokens) of the head's own attention
        block.  Pruning changes that output only through the head's own term of the output
        projection, so this is the norm of the head's contribution relative to the block's
        output; the effect on later blocks shows in ``repr`` and the output metrics.
      repr: ``1 - cos(z, z')`` of the pre-logits vector.
      flip: True where pruning changes the top-1 class.
      taylor: ``|dCE(p, y)/dm_lh|`` at head mask 1.
      probs: ``[image, class]`` unpruned softmax output ``p`` (``[image, 0]`` for a backbone).
      predictions: ``[image]`` unpruned top-1 class (-1 for a backbone, which has no classes).
      labels: ``[image]`` the class ``y`` every metric refers to (-1 for a backbone).
      labels_are_predictions: True when no labels were given and ``labels == predictions``.
      metrics: names of the metrics computed.
    """

    prob: np.ndarray | None
    prob_drop: np.ndarray | None
    kl: np.ndarray | None
    layer: np.ndarray | None
    repr: np.ndarray | None
    flip: np.ndarray | None
    taylor: np.ndarray | None
    probs: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    labels_are_predictions: bool
    metrics: tuple[str, ...]

    def __getitem__(self, metric: str) -> np.ndarray:
        """``result["kl"]``: one metric's ``[image, layer, head]`` array."""
        if metric not in validate.METRICS:
            raise KeyError(
                f"unknown metric {metric!r}; expected one of {', '.join(validate.METRICS)}"
            )
        value = getattr(self, metric)
        if value is None:
            raise KeyError(
                f"metric {metric!r} was not computed; this result has {', '.join(self.metrics)}"
            )
        return value

    @classmethod
    def from_part(
        cls,
        part: Mapping[str, np.ndarray],
        *,
        probs: np.ndarray | None = None,
        predictions: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        labels_are_predictions: bool,
        metrics: Iterable[str] | None = None,
    ) -> HeadImportance:
        """The result that a results bundle's ``importance`` part (or a run's merged chunks)
        holds; the inverse of :meth:`to_part`.

        Args:
          part: metric name -> ``[image, layer, head]`` (``flip`` as 0/1 or bool); other
            arrays (the means over images) are left alone.
          probs, predictions, labels: the bundle's ``images`` arrays ``[image, class]``,
            ``[image]``, ``[image]``; None for a backbone without a classifier, which has no
            classes (``[image, 0]``, -1, -1 as :func:`head_importance` gives it).
          labels_are_predictions: as the bundle's meta says.
          metrics: the metrics to take; default: every one ``part`` holds.
        """
        metrics = tuple(m for m in validate.METRICS if m in part) if metrics is None else metrics
        metrics = validate.check_metrics(metrics)
        missing = [m for m in metrics if m not in part]
        if missing:
            raise InputError(
                f"the importance arrays lack metric(s) {missing}; they hold {sorted(part)}"
            )
        fields = {m: np.asarray(part[m]) if m in metrics else None for m in validate.METRICS}
        if fields["flip"] is not None:
            fields["flip"] = fields["flip"].astype(bool)
        if probs is None:  # a backbone: no classes
            images = len(fields[metrics[0]])
            probs = np.zeros((images, 0), np.float32)
            predictions = labels = np.full(images, -1, np.int32)
        return cls(
            **fields,
            probs=np.asarray(probs),
            predictions=np.asarray(predictions),
            labels=np.asarray(labels),
            labels_are_predictions=bool(labels_are_predictions),
            metrics=metrics,
        )

    def to_part(self) -> dict[str, np.ndarray]:
        """The results bundle's ``importance`` part: each computed metric per image
        ``[image, layer, head]`` (float32; ``flip`` 0 or 1) and its reductions over the images
        (:func:`~jaxvit_interp.importance.aggregate.importance_summary`: the means and, for a
        classifier, each class's mean, specificity and most specific heads)."""
        from jaxvit_interp.importance.aggregate import importance_summary

        per_image = {m: np.asarray(self[m], np.float32) for m in self.metrics}
        return {**per_image, **importance_summary(self, self.probs.shape[1])}

    @property
    def num_images(self) -> int:
        return self.probs.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(images, layers, heads)``."""
        return self[self.metrics[0]].shape

    def _summary(self):
        images, layers, heads = self.shape
        rows = [("metrics", listed(self.metrics))]
        if self.probs.shape[1]:  # a classifier: its labels, and how often it is right
            accuracy = number((self.predictions == self.labels).mean())
            rows.append(
                (
                    "labels",
                    "its own predictions"
                    if self.labels_are_predictions
                    else f"given; unpruned accuracy {accuracy}",
                )
            )
        ranking = "prob_drop" if "prob_drop" in self.metrics else self.metrics[0]
        highest = metric_info(ranking).important_high
        rows.append(("top heads", f"by mean {ranking}: {top_heads(self[ranking], highest)}"))
        return sizes(images=images, layers=layers, heads=heads), rows


def _importance_reduce(logits, z, targets, logits_pruned, z_pruned) -> dict[str, Array]:
    """Output-side metrics of every ablation: ``[batch, spawn_layer, slot]`` each."""
    one = ablation_metrics if logits.shape[-1] else backbone_metrics
    per_slot = jax.vmap(one, in_axes=(None, None, None, 0, 0))
    per_layer = jax.vmap(per_slot, in_axes=(None, None, None, 0, 0))
    return jax.vmap(per_layer)(logits, z, targets, logits_pruned, z_pruned)


def unpruned_outputs(config: ViTConfig, out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs [image, class], predictions [image], targets [image])`` of the unpruned pass in
    an engine output (``logits`` and ``targets``); a backbone has no classes, so its
    predictions and targets are -1."""
    probs = np.asarray(jax.nn.softmax(jnp.asarray(out.logits), axis=-1))
    if not config.num_classes:
        return probs, np.full(len(probs), -1, np.int32), np.full(len(probs), -1, np.int32)
    return probs, out.logits.argmax(axis=-1).astype(np.int32), out.targets


def head_importance(
    config: ViTConfig,
    params: Any,
    images,
    labels=None,
    *,
    metrics: Iterable[str] = validate.METRICS,
    ablation: str | Ablation = "zero",
    reference=None,
    execution: Execution | None = None,
) -> HeadImportance:
    """Prune every head of every layer, one at a time, on every image, and measure the effect.

    Pruning head ``h`` of layer ``l`` replaces its output before the output projection, its
    mixed values ``m_h`` ``[token, head_dim]``: by 0 (``head_mask[l, h] = 0``:
    ``ablation="zero"``, the paper's), by their mean per token position over ``reference``
    images (``"mean"``), or on image ``i`` by the same head's output on ``reference[i]``
    (``"resample"``); each replacement comes from clean forward passes of the reference images.
    Every metric is that of one plain forward pass with that replacement, to float32 rounding.
    The single-head ablations run batched on the device, reusing the unpruned layers below each
    pruned head (see :mod:`jaxvit_interp.importance.engine`).

    Args:
      config, params: the model.
      images: ``[image, height, width, channels]`` preprocessed pixels.
      labels: ``[image]`` int class ids, or None to measure against the unpruned prediction.
      metrics: any of ``prob prob_drop kl layer repr flip taylor``; a backbone without a
        classifier (``num_classes == 0``) has ``layer`` and ``repr`` (the change of its pooled
        output), unless a linear probe gives it classes
        (:func:`~jaxvit_interp.model.probe.with_probe`).
      ablation: what takes a pruned head's place: ``"zero"`` (the default), ``"mean"`` or
        ``"resample"`` (:data:`~jaxvit_interp.importance.ablation_kinds.ABLATION_KINDS`), or an
        :class:`~jaxvit_interp.importance.ablation_kinds.Ablation`.  ``taylor`` is a gradient at
        the unpruned model and the same for every kind.
      reference: ``[image, height, width, channels]`` preprocessed images the replacement comes
        from: for ``"mean"`` any number (None: the analysed images themselves); for
        ``"resample"`` exactly one per analysed image, paired by position (required; a larger
        set is refused, pass its first images). Refused with ``"zero"``, which reads none.
      execution: how the work runs (:class:`~jaxvit_interp.execution.Execution`: images per
        batch, the per-device memory budget the batches are planned for, the mesh whose devices
        share the images, and progress, reported as each batch's ablations finish); None: the
        defaults.

    Returns:
      :class:`HeadImportance` with arrays ``[image, layer, head]``.

    Raises:
      ValueError: before any model work, for labels outside the class range, images (or
        reference images) of the wrong size or channel count, NaN or infinite pixels, an empty
        image set, a reference the ablation cannot take, bad options, or metrics that need
        logits (or labels) on a backbone without a classifier.
    """
    validate.check_unpruned(config, "head_importance")
    metrics = validate.check_metrics(metrics)
    validate.check_classifier(config, metrics, labels, "head_importance")
    ablation = as_ablation(ablation)
    execution = as_execution(execution)
    images = validate.check_images(config, images)
    labels = validate.check_labels(config, labels, images.shape[0])
    reference = validate.check_reference(config, ablation, reference, images)

    wanted = set(metrics)
    need_streams = bool(wanted & ABLATION_METRICS)
    L, H = config.num_layers, config.num_heads
    spawn = need_streams or "layer" in wanted
    out = run_engine(
        config,
        params,
        images,
        labels,
        spawn_layers=tuple(range(L)) if spawn else (),
        slot_heads=np.tile(np.arange(H, dtype=np.int32), (L, 1)),
        reduce=_importance_reduce if need_streams else None,
        with_taylor="taylor" in wanted,
        need_streams=need_streams,
        ablation=ablation,
        reference=reference,
        execution=execution,
        desc="head importance",
    )
    probs, predictions, targets = unpruned_outputs(config, out)
    fields = {m: (out.per_slot[m] if m in out.per_slot else None) for m in validate.METRICS}
    fields["taylor"] = out.taylor
    fields = {m: (fields[m] if m in wanted else None) for m in validate.METRICS}
    return HeadImportance(
        **fields,
        probs=probs,
        predictions=predictions,
        labels=targets,
        labels_are_predictions=labels is None,
        metrics=metrics,
    )
