"""A results bundle's parts from per-image results: the per-image arrays plus every reduction over
images that the site shows, each computed by the analysis package that owns it.

:func:`~jaxvit_interp.pipeline.analyze.analyze` builds its bundle with these, and so does the
synthetic bundle of the site's tests, so a view never shows a number that some other code
computed another way.
"""

from __future__ import annotations

import numpy as np

from jaxvit_interp.quantities import (
    CLS_STRENGTH_FIELDS,
    DIRECT,
    KIND_METRICS,
    STRENGTH_FIELDS,
    STRENGTH_SUMMARY_FIELDS,
    SUMMARY_SUFFIXES,
    ablation_array,
    model_metrics,
)
from jaxvit_interp.rollout.measure import rollout_part
from jaxvit_interp.strength.aggregate import special_part

__all__ = [
    "further_importance",
    "importance_part",
    "partial_part",
    "pattern_part",
    "rollout_part",
    "special_part",
    "strength_part",
]


def importance_part(
    metrics: dict[str, np.ndarray],
    *,
    probs: np.ndarray,
    predictions: np.ndarray,
    targets: np.ndarray,
    labels_are_predictions: bool,
    num_classes: int,
    names: tuple[str, ...] | None = None,
) -> dict[str, np.ndarray]:
    """Per-image metrics ``[image, layer, head]`` plus their means over all images and, for a
    classifier, per class with each class's specificity and most specific heads
    (:meth:`~jaxvit_interp.importance.HeadImportance.to_part`).

    The metrics are ``names``, by default those the model has
    (:func:`~jaxvit_interp.quantities.model_metrics`): a backbone without a classifier has
    ``layer`` and ``repr`` only, and no classes to group by.
    """
    from jaxvit_interp.importance import HeadImportance

    classes = dict(probs=probs, predictions=predictions, labels=targets) if num_classes else {}
    result = HeadImportance.from_part(
        metrics,
        **classes,
        labels_are_predictions=labels_are_predictions,
        metrics=names or model_metrics(num_classes),
    )
    return result.to_part()


def further_importance(
    merged: dict[str, np.ndarray], *, kinds: tuple[str, ...], num_classes: int, **unpruned
) -> dict[str, np.ndarray]:
    """The importance part's arrays beside the run's first ablation kind's: each further kind's
    metrics (:data:`~jaxvit_interp.quantities.KIND_METRICS` the model has) and each head's direct
    logit attribution where ``merged`` has it, under their own names
    (:func:`~jaxvit_interp.quantities.ablation_array`, :data:`~jaxvit_interp.quantities.DIRECT`),
    each with the reductions over images of :func:`importance_part` (``unpruned``: its
    ``probs``, ``predictions``, ``targets`` and ``labels_are_predictions``).

    The direct attribution's reductions are ``prob_drop``'s, a metric whose larger values mark
    the more important head as a larger direct share of the label logit does: its means over
    all images and per class, each class's specificity and most specific heads."""
    out: dict[str, np.ndarray] = {}
    metrics = tuple(m for m in model_metrics(num_classes) if m in KIND_METRICS)
    named = [{m: ablation_array(m, kind) for m in metrics} for kind in kinds]
    if DIRECT in merged:
        named.append({"prob_drop": DIRECT})
    for names in named:
        part = importance_part(
            {m: merged[name] for m, name in names.items()},
            num_classes=num_classes,
            names=tuple(names),
            **unpruned,
        )
        for m, name in names.items():
            for suffix in SUMMARY_SUFFIXES:
                if m + suffix in part:
                    out[name + suffix] = part[m + suffix]
    return out


def strength_part(local: dict[str, np.ndarray], *, has_cls_token: bool) -> dict[str, np.ndarray]:
    """Per-image hop strength ``[image, layer, head, ...]`` plus its summary over the images
    (:func:`~jaxvit_interp.strength.summarize`); CLS masses only for a model with a CLS token."""
    from jaxvit_interp.strength import HopStrength, summarize

    fields = {f: np.asarray(local[f], np.float32) for f in STRENGTH_FIELDS if f in local}
    if not has_cls_token:  # the kernel gives NaN for them: a bundle leaves them out instead
        nan = np.full_like(fields["head_entropy"], np.nan)
        fields.update({f: nan for f in CLS_STRENGTH_FIELDS})
    summary = summarize(HopStrength(**fields))
    part = {
        **fields,
        **{name: np.asarray(getattr(summary, name)) for name in STRENGTH_SUMMARY_FIELDS},
    }
    if not has_cls_token:
        for name in CLS_STRENGTH_FIELDS:
            part.pop(name)
            part.pop(f"{name}_mean")
    return part


def pattern_part(
    kind: str,
    *,
    positions: np.ndarray,
    clusters: np.ndarray,
    representatives: np.ndarray,
    centres: np.ndarray,
) -> dict[str, np.ndarray]:
    """One pattern kind's arrays: each pattern's 2-D position and cluster, each cluster's
    representative and decoded centre, and each head's summary over the images
    (:func:`~jaxvit_interp.patterns.embed.embedding_summary`), all prefixed with ``kind``."""
    from jaxvit_interp.patterns.embed import embedding_summary

    arrays = {
        "positions": np.asarray(positions, np.float32),
        "clusters": np.asarray(clusters, np.int32),
        "representatives": np.asarray(representatives, np.float32),
        "centres": np.asarray(centres, np.float32),
        **embedding_summary(positions, clusters, len(representatives)),
    }
    return {f"{kind}_{name}": value for name, value in arrays.items()}


def partial_part(
    image_index: np.ndarray, prob: np.ndarray, top_classes: np.ndarray, top_probs: np.ndarray
) -> dict[str, np.ndarray]:
    """Partial pruning of a subset of images, plus ``p'_y`` per head and mode averaged over it."""
    from jaxvit_interp.importance.aggregate import partial_prob_mean

    return {
        "image_index": np.asarray(image_index, np.int32),
        "prob": np.asarray(prob, np.float32),
        "top5_classes": np.asarray(top_classes, np.int32),
        "top5_probs": np.asarray(top_probs, np.float32),
        "prob_mean": partial_prob_mean(prob),
    }
