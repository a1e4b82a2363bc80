"""From per-image importance to global, per-class and ranked views (paper: local vs global impact).

Scores are ``[..., layer, head]`` numpy arrays.  For every metric a larger value means a more
important head except ``prob`` (the probability left after pruning), where smaller does:
:data:`HIGHER_IS_MORE_IMPORTANT` records that, and the ranking functions honour it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.importance.ablation import HeadImportance
from jaxvit_interp.quantities import CLASS_TOP_HEADS, METRICS
from jaxvit_interp.summary import Summarized, listed, number, sizes, top_heads

HIGHER_IS_MORE_IMPORTANT: dict[str, bool] = {m.name: m.important_high for m in METRICS}


@dataclasses.dataclass(frozen=True, repr=False)
class GlobalImportance(Summarized):
    """Importance over a whole image set.

    Attributes:
      mean: ``{metric: [layer, head]}`` mean over images (``flip``: the flip fraction).
      flip_fraction: ``[layer, head]`` fraction of images whose top-1 class flips when the head is
        pruned (the images for which the head is critical), or None without ``flip``.
      num_images: images averaged over.
    """

    mean: dict[str, np.ndarray]
    flip_fraction: np.ndarray | None
    num_images: int

    def _summary(self):
        layers, heads = next(iter(self.mean.values())).shape
        ranking = "prob_drop" if "prob_drop" in self.mean else next(iter(self.mean))
        highest = HIGHER_IS_MORE_IMPORTANT[ranking]
        top = top_heads(self.mean[ranking][None], highest)
        rows = [("metrics", listed(self.mean)), ("top heads", f"by {ranking}: {top}")]
        return f"means over {self.num_images:,} images, {sizes(layers=layers, heads=heads)}", rows


@dataclasses.dataclass(frozen=True, repr=False)
class ClassImportance(Summarized):
    """Mean importance per class ``y``.

    Attributes:
      classes: ``[k]`` the classes that have at least one image, increasing.
      mean: ``{metric: [k, layer, head]}`` mean over that class's images.
      counts: ``[k]`` images per class.
    """

    classes: np.ndarray
    mean: dict[str, np.ndarray]
    counts: np.ndarray

    def _summary(self):
        _, layers, heads = next(iter(self.mean.values())).shape
        rows = [
            ("metrics", listed(self.mean)),
            ("images", f"{self.counts.min():,} to {self.counts.max():,} a class"),
        ]
        return f"means over {sizes(classes=len(self.classes), layers=layers, heads=heads)}", rows


def mean_over_images(values: np.ndarray, axis=0) -> np.ndarray:
    """Mean over images, leaving out NaN (a value that could not be computed for an image);
    NaN only where no image has a value."""
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = ~np.isnan(values)
        return np.where(finite, values, 0.0).sum(axis=axis) / finite.sum(axis=axis)


def flip_fraction(flip: np.ndarray) -> np.ndarray:
    """``[image, layer, head]`` bool -> ``[layer, head]`` fraction of images that flip."""
    return mean_over_images(flip)


def global_importance(
    result: HeadImportance, *, normalize_layers: bool = False
) -> GlobalImportance:
    """Mean of every computed metric over images (NaN left out), optionally normalised per layer."""
    mean = {m: mean_over_images(result[m]) for m in result.metrics}
    if normalize_layers:
        mean = {m: normalize_per_layer(v) for m, v in mean.items()}
    flips = flip_fraction(result.flip) if result.flip is not None else None
    return GlobalImportance(mean=mean, flip_fraction=flips, num_images=result.num_images)


def per_class_importance(
    result: HeadImportance, *, normalize_layers: bool = False
) -> ClassImportance:
    """Mean of every computed metric over the images of each class ``y`` (``result.labels``),
    NaN left out."""
    classes, inverse, counts = np.unique(result.labels, return_inverse=True, return_counts=True)
    mean = {}
    for m in result.metrics:
        values = np.asarray(result[m], np.float64)
        v = np.stack([mean_over_images(values[inverse == c]) for c in range(classes.size)])
        mean[m] = normalize_per_layer(v) if normalize_layers else v
    return ClassImportance(classes=classes, mean=mean, counts=counts)


@dataclasses.dataclass(frozen=True, repr=False)
class ClassHeads(Summarized):
    """Heads that matter for one class more than on average.

    Attributes:
      metric: the importance metric.
      classes: ``[k]`` classes with at least one image.
      specificity: ``[k, layer, head]`` the class's mean importance minus the mean over all
        images, signed so that positive means "more important for this class" (``prob``, where
        smaller is more important, is negated).
      top: ``[k, count, 2]`` int ``(layer, head)`` of each class's most specific heads, most
        specific first (fewer than ``count`` positive ones are padded with the next best).
    """

    metric: str
    classes: np.ndarray
    specificity: np.ndarray
    top: np.ndarray

    def _summary(self):
        classes, layers, heads = self.specificity.shape
        # The class whose most specific head stands out most.
        best = np.nanmax(self.specificity.reshape(classes, -1), axis=1)
        k = int(np.nanargmax(best)) if np.isfinite(best).any() else 0
        layer, head = self.top[k, 0]
        rows = [
            ("most specific", f"class {self.classes[k]}: ({layer}, {head}) {number(best[k])}"),
            ("top", f"{self.top.shape[1]} heads a class"),
        ]
        return f"{sizes(classes=classes, layers=layers, heads=heads)} by {self.metric}", rows


def _specific_heads(
    class_mean: np.ndarray, overall: np.ndarray, metric: str, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(specificity [k, layer, head], top [k, count, 2])`` of :class:`ClassHeads` from the
    classes' means ``[k, layer, head]`` and the mean over all images ``[layer, head]``."""
    sign = 1.0 if HIGHER_IS_MORE_IMPORTANT[metric] else -1.0
    specificity = sign * (class_mean - overall[None])
    count = min(int(count), specificity[0].size)
    flat = np.nan_to_num(specificity.reshape(len(specificity), -1), nan=-np.inf)
    best = np.argsort(-flat, axis=1, kind="stable")[:, :count]
    top = np.stack(np.unravel_index(best, specificity.shape[1:]), axis=-1).astype(np.int32)
    return specificity, top


def class_specific_heads(result: HeadImportance, metric: str = "prob_drop", count: int = 5):
    """Per class, the heads whose importance for that class's images exceeds their mean most.

    Returns :class:`ClassHeads`.  ``result.labels`` groups the images (the predictions when the
    importance was measured without labels).
    """
    if metric not in result.metrics:
        raise InputError(f"metric {metric!r} was not computed; this result has {result.metrics}")
    by_class = per_class_importance(result)
    overall = mean_over_images(result[metric])
    specificity, top = _specific_heads(by_class.mean[metric], overall, metric, count)
    return ClassHeads(metric, by_class.classes, specificity, top)


def class_specificity(
    result: HeadImportance, num_classes: int, *, count: int = CLASS_TOP_HEADS
) -> dict[str, np.ndarray]:
    """:func:`class_specific_heads` of every computed metric, as the results bundle stores it.

    Returns ``{metric}_class_specificity`` float32 ``[class, layer, head]`` (the class's mean
    minus the mean over all images, signed so that positive is more important for the class;
    NaN for a class without images) and ``{metric}_class_top`` int32 ``[class, count, 2]`` (the
    class's ``count`` most specific ``(layer, head)`` pairs, most specific first, fewer for a
    model with fewer heads; -1 for a class without images).
    """
    return _class_specificity(result, per_class_importance(result), num_classes, count)


def _class_specificity(
    result: HeadImportance, by_class: ClassImportance, num_classes: int, count: int
) -> dict[str, np.ndarray]:
    out = {}
    for m in result.metrics:
        overall = mean_over_images(result[m])
        specificity, top = _specific_heads(by_class.mean[m], overall, m, count)
        out[f"{m}_class_specificity"] = _every_class(specificity, by_class, num_classes, np.nan)
        out[f"{m}_class_top"] = _every_class(top.astype(np.int32), by_class, num_classes, -1)
    return out


def _every_class(
    values: np.ndarray, by_class: ClassImportance, num_classes: int, fill
) -> np.ndarray:
    """``[k, ...]`` values of the classes with images -> ``[num_classes, ...]`` (float32 for
    float values), ``fill`` for the classes without images."""
    dtype = np.float32 if values.dtype.kind == "f" else values.dtype
    full = np.full((num_classes, *values.shape[1:]), fill, dtype)
    full[by_class.classes] = values
    return full


def normalize_per_layer(scores: np.ndarray, exponent: float = 2.0) -> np.ndarray:
    """Divide each layer's head scores by their Lp norm over heads (as in the bertology scripts).

    scores ``[..., layer, head]``.  A layer whose scores are all zero stays zero.
    """
    scores = np.asarray(scores, np.float64)
    norm = np.power(np.power(np.abs(scores), exponent).sum(axis=-1, keepdims=True), 1.0 / exponent)
    return scores / np.where(norm > 0, norm, 1.0)


def rank_heads(scores: np.ndarray, *, higher_is_more_important: bool = True) -> np.ndarray:
    """Heads from most to least important.

    Args:
      scores: ``[layer, head]``.
      higher_is_more_important: False for metrics like ``prob`` where a smaller value matters more.

    Returns:
      ``[layer * head, 2]`` int ``(layer, head)`` pairs; ties keep layer-major order.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise InputError(f"scores must be [layer, head], got shape {scores.shape}")
    flat = scores.reshape(-1) if higher_is_more_important else -scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    return np.stack(np.unravel_index(order, scores.shape), axis=-1).astype(np.int32)


def head_ranks(scores: np.ndarray, *, higher_is_more_important: bool = True) -> np.ndarray:
    """``[layer, head]`` int rank of each head, 0 = most important (the inverse of
    :func:`rank_heads`)."""
    order = rank_heads(scores, higher_is_more_important=higher_is_more_important)
    ranks = np.empty(np.shape(scores), np.int32)
    ranks[order[:, 0], order[:, 1]] = np.arange(order.shape[0])
    return ranks


def rank_by_metric(
    result: HeadImportance, metric: str, *, normalize_layers: bool = False
) -> np.ndarray:
    """Heads ranked by their global mean of ``metric``, most important first.

    Returns ``[layer * head, 2]`` ``(layer, head)`` pairs.
    """
    result[metric]  # a KeyError naming the metric when it was not computed
    scores = global_importance(result, normalize_layers=normalize_layers).mean[metric]
    return rank_heads(scores, higher_is_more_important=HIGHER_IS_MORE_IMPORTANT[metric])


def importance_summary(result: HeadImportance, num_classes: int) -> dict[str, np.ndarray]:
    """The over-images views of ``result`` as the results bundle stores them.

    Returns ``{metric}_mean`` float32 ``[layer, head]`` (for ``flip``, the fraction of images
    that flip) and, for a classifier (``num_classes > 0``; a backbone has no classes),
    ``{metric}_class_mean`` float32 ``[class, layer, head]`` over the images whose label ``y`` is
    that class (NaN for a class without images), ``class_counts`` ``[class]`` and each class's
    specificity and most specific heads (:func:`class_specificity`).
    """
    means = global_importance(result).mean
    out = {f"{m}_mean": v.astype(np.float32) for m, v in means.items()}
    if not num_classes:
        return out
    by_class = per_class_importance(result)
    for m, v in by_class.mean.items():
        out[f"{m}_class_mean"] = _every_class(v, by_class, num_classes, np.nan)
    out["class_counts"] = _every_class(by_class.counts.astype(np.int64), by_class, num_classes, 0)
    out.update(_class_specificity(result, by_class, num_classes, CLASS_TOP_HEADS))
    return out


def partial_prob_mean(prob: np.ndarray) -> np.ndarray:
    """``p'_y`` after partial pruning, ``[image, layer, head, mode]`` -> mean over images."""
    return mean_over_images(prob).astype(np.float32)
