"""Input checks that run before any model work, so a bad call fails at once with a clear message."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import check_positive
from jaxvit_interp.importance.ablation_kinds import Ablation
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import CLS_MODES, PRUNING_MODES
from jaxvit_interp.quantities import LOGIT_METRICS, METRIC_NAMES
from jaxvit_interp.storage import page_releaser

__all__ = [
    "METRICS",
    "check_classifier",
    "check_heads",
    "check_images",
    "check_labels",
    "check_metrics",
    "check_modes",
    "check_positive",
    "check_reference",
    "check_unpruned",
]

# The per-head metrics, in the order results list them: see jaxvit_interp.quantities.
METRICS: tuple[str, ...] = METRIC_NAMES
# Images whose pixels check_images tests for NaN at once (ViT-B/16: 38 MB).
_CHECK_BLOCK = 64


def check_unpruned(config: ViTConfig, what: str) -> None:
    """Refuse a model whose heads were removed physically (``config.heads_per_layer`` set).

    Every per-head analysis (importance, partial pruning, sets of heads, strength, patterns,
    rollout) masks, edits or reads the heads of the full model: on a pruned one it would fail
    deep inside with a shape error, or silently count the removed heads as heads that attend
    nowhere. ``what`` names the analysis in the message.
    """
    if config.heads_per_layer is None:
        return
    raise InputError(
        f"{what}: per-head analyses need the full model, and this one has heads removed "
        f"(heads_per_layer={list(config.heads_per_layer)}, of {config.num_heads} heads); analyse "
        "the unpruned checkpoint instead (prune.json beside the pruned model lists the heads "
        "removed)"
    )


def check_classifier(config: ViTConfig, metrics: Iterable[str], labels, what: str) -> None:
    """Refuse what needs logits or classes on a backbone (``num_classes == 0``), naming it."""
    if config.num_classes:
        return
    probe = "or attach a linear probe first (jaxvit_interp.model.with_probe)"
    needs = [m for m in METRICS if m in set(metrics) & LOGIT_METRICS]
    if needs:
        allowed = " and ".join(repr(m) for m in METRICS if m not in LOGIT_METRICS)
        raise InputError(
            f"{what}: metric(s) {', '.join(repr(m) for m in needs)} need the model's logits, and "
            f"this model is a backbone without a classifier (num_classes=0); ask for {allowed} "
            f"only, {probe}"
        )
    if labels is not None:
        raise InputError(
            f"{what}: labels name classes, and this model is a backbone without a classifier "
            f"(num_classes=0); pass labels=None, {probe}"
        )


def check_images(config: ViTConfig, images, name: str = "images") -> jax.Array | np.ndarray:
    """``images`` ``[batch, height, width, channels]`` as float32, or a ValueError saying why,
    naming the argument ``name`` (``"images"``, ``"reference"``).

    A float32 NumPy array (a memory-mapped one too) is returned as it is, not copied, and is
    checked a block of images at a time.
    """
    release = None
    if not isinstance(images, jax.Array):
        release = page_releaser(images)
        images = np.asarray(images)
        if images.dtype == object:
            raise InputError(f"{name} must be a numeric array [batch, height, width, channels]")
        images = images.astype(np.float32, copy=False)
    else:
        images = images.astype(jnp.float32)
    expected = (*config.image_size, config.channels)
    if images.ndim != 4:
        raise InputError(
            f"{name} have shape {tuple(images.shape)}; expected 4 axes "
            f"[batch, {expected[0]}, {expected[1]}, {expected[2]}]"
        )
    if images.shape[0] == 0:
        raise InputError(f"the image set is empty: {name} have 0 entries along the batch axis")
    if images.shape[1:] != expected:
        what = "channel count" if images.shape[1:3] == expected[:2] else "size"
        raise InputError(
            f"{name} have the wrong {what}: shape {tuple(images.shape)}, but this model takes "
            f"[batch, {expected[0]}, {expected[1]}, {expected[2]}] "
            f"(image_size={config.image_size}, channels={config.channels})"
        )
    if isinstance(images, jax.Array):
        finite = np.asarray(jnp.isfinite(images).all(axis=(1, 2, 3)))
    else:
        # In blocks: the whole set's mask would be a quarter of its size again, and the pages of
        # a mapped file are let go of after each block.
        finite = np.empty(len(images), bool)
        for at in range(0, len(images), _CHECK_BLOCK):
            finite[at : at + _CHECK_BLOCK] = np.isfinite(images[at : at + _CHECK_BLOCK]).all(
                axis=(1, 2, 3)
            )
            if release is not None:
                release()
    if not finite.all():
        bad = np.flatnonzero(~finite)
        whose = "" if name == "images" else f" of {name}"
        raise InputError(
            f"{bad.size} image(s){whose} contain NaN or infinite pixels, e.g. image index "
            f"{', '.join(str(i) for i in bad[:5])}"
        )
    return images


def check_reference(config: ViTConfig, ablation: Ablation, reference, images):
    """The images an ablation's replacement comes from, checked: ``reference`` as
    :func:`check_images` gives it, the analysed ``images`` for a mean without one, None for
    zero; an :class:`InputError` for a reference the kind cannot take.

    ``zero`` reads no other image, so a reference is refused rather than ignored.  ``resample``
    pairs image ``i`` with ``reference[i]``, so it needs exactly one reference image per
    analysed image: a longer reference is refused too (a pairing that is off by some images
    would go unnoticed), with how to take its first images.  ``mean`` takes any number.
    """
    if ablation.replacement is None:
        if reference is not None:
            raise InputError(
                f"reference images were given with ablation={ablation.kind!r}, which replaces "
                "an ablated head's output by 0 and reads no reference; ask for "
                "ablation='mean' or 'resample', or leave reference out"
            )
        return None
    if reference is None:
        if ablation.replacement == "per_image":
            raise InputError(
                f"ablation={ablation.kind!r} replaces image i's head output with the same "
                f"head's output on reference[i]; pass reference=, one image per analysed image "
                f"({len(images)})"
            )
        return images  # the mean over the analysed images themselves
    reference = check_images(config, reference, "reference")
    if ablation.replacement == "per_image" and len(reference) != len(images):
        few = len(reference) < len(images)
        raise InputError(
            f"reference has {len(reference)} images and there are {len(images)} to analyse: "
            f"ablation={ablation.kind!r} pairs image i with reference[i], so it needs exactly "
            f"{len(images)}"
            + ("" if few else f" (to use the first {len(images)}, pass reference[:{len(images)}])")
        )
    return reference


def check_labels(config: ViTConfig, labels, num_images: int) -> np.ndarray | None:
    """Integer labels ``[num_images]`` in ``[0, num_classes)``, or None when none are given."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_images:
        raise InputError(
            f"labels have shape {labels.shape}; expected one label per image, shape ({num_images},)"
        )
    if labels.dtype.kind not in "iu":
        if (
            labels.dtype.kind == "f"
            and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))
        ):
            labels = labels.astype(np.int64)
        else:
            raise InputError(f"labels must be integer class ids, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= config.num_classes))
    if bad.size:
        raise InputError(
            f"{bad.size} label(s) outside the class range [0, {config.num_classes}), e.g. "
            + ", ".join(f"labels[{i}]={labels[i]}" for i in bad[:5])
        )
    return labels.astype(np.int32)


def check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """The requested metric names, deduplicated, in :data:`METRICS` order."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; expected some of {', '.join(METRICS)}")
    if not metrics:
        raise InputError(f"no metrics requested; expected some of {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in metrics)


def check_heads(config: ViTConfig, heads: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """``[(layer, head), ...]`` (every head when None), each checked against the model's size."""
    if heads is None:
        return [(layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)]
    out = []
    for item in heads:
        try:
            layer, head = (int(v) for v in item)
        except (TypeError, ValueError):
            raise InputError(f"heads must be (layer, head) pairs, got {item!r}") from None
        if not (0 <= layer < config.num_layers and 0 <= head < config.num_heads):
            raise InputError(
                f"head (layer={layer}, head={head}) is outside the model's "
                f"{config.num_layers} layers x {config.num_heads} heads"
            )
        out.append((layer, head))
    if not out:
        raise InputError(
            "heads is empty; pass None for every head or a list of (layer, head) pairs"
        )
    if len(set(out)) != len(out):
        raise InputError(f"heads contains duplicates: {out}")
    return out


def check_modes(config: ViTConfig, modes: Sequence[str] | None) -> tuple[str, ...]:
    """Partial-pruning modes (all that apply to this model when None), in PRUNING_MODES order."""
    available = tuple(m for m in PRUNING_MODES if config.has_cls_token or m not in CLS_MODES)
    if modes is None:
        return available
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    for m in modes:
        if m not in PRUNING_MODES:
            raise InputError(
                f"unknown pruning mode {m!r}; expected one of {', '.join(PRUNING_MODES)}"
            )
        if m not in available:
            raise InputError(f"pruning mode {m!r} needs a CLS token, and this model has none")
    if not modes:
        raise InputError("modes is empty")
    return tuple(m for m in PRUNING_MODES if m in modes)
