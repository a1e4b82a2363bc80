"""Synthetic results bundles: every array of the bundle schema, random but coherent.

They exercise the site without running an analysis (its tests and size benchmark use them). The
per-image arrays obey the invariants a real analysis gives, so the views look like real ones:
probabilities sum to 1 over classes, attention rows are softmax distributions, head entropy is the
entropy of the normalised strength vector, ``prob`` is ``p_y - prob_drop``, and partial pruning's
``none`` mode keeps the unpruned probability. The reductions over images are computed from them by
the same functions an analysis uses (:mod:`jaxvit_interp.pipeline.parts`).
"""

from __future__ import annotations

import numpy as np

from jaxvit_interp.bundle import BUNDLE_VERSION, ResultsBundle
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import CLS_MODES, PRUNING_MODES
from jaxvit_interp.pipeline.parts import importance_part, partial_part, pattern_part, strength_part
from jaxvit_interp.quantities import METRIC_NAMES


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def synthetic_bundle(
    rng: np.random.Generator,
    *,
    num_images: int = 40,
    num_classes: int = 10,
    num_layers: int = 3,
    num_heads: int = 2,
    grid: tuple[int, int] = (4, 4),
    has_cls: bool = True,
    partial_images: int = 8,
    attention_images: int = 6,
    clusters: int = 4,
    class_names: list[str] | None = None,
    image_ids: list[str] | None = None,
) -> ResultsBundle:
    """A valid :class:`ResultsBundle` for a ViT with 1x1 patches on a ``grid`` image.

    Args:
      rng: the randomness (tests pass a freshly seeded generator).
      num_images: ``I``; partial pruning and attention cover the first ``partial_images`` and
        ``attention_images`` of a random permutation, as an analysis's chosen subsets would.
      class_names / image_ids: override the generated names (e.g. to test escaping).
    """
    gh, gw = grid
    n_img, C, L, H = num_images, num_classes, num_layers, num_heads
    config = ViTConfig(
        image_size=grid,
        patch_size=(1, 1),
        channels=1,
        hidden_size=8 * H,
        num_layers=L,
        num_heads=H,
        mlp_dim=16 * H,
        num_classes=C,
        classifier="token" if has_cls else "gap",
    )
    N, K = config.num_tokens, max(grid)
    modes = [m for m in PRUNING_MODES if has_cls or m not in CLS_MODES]
    M = len(modes)
    class_names = list(class_names) if class_names is not None else [str(c) for c in range(C)]
    image_ids = list(image_ids) if image_ids is not None else [f"img-{i:04d}" for i in range(n_img)]
    assert len(class_names) == C and len(image_ids) == n_img

    labels = rng.integers(0, C, n_img).astype(np.int32)
    logits = rng.normal(0, 1.5, (n_img, C)) + 3.0 * (np.arange(C)[None] == labels[:, None])
    probs = _softmax(logits).astype(np.float32)
    predictions = probs.argmax(-1).astype(np.int32)
    p_y = probs[np.arange(n_img), labels]
    # Thumbnails: a bright blob per image on a dark background, grayscale uint8.
    yy, xx = np.mgrid[0:gh, 0:gw]
    centres = rng.uniform(0, 1, (n_img, 2)) * [gh - 1, gw - 1]
    blob = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 3.0)
    thumbnails = np.clip(blob * 255 + rng.normal(0, 20, blob.shape), 0, 255).astype(np.uint8)
    # Class clusters in the overview, spread by probability.
    angle = 2 * np.pi * labels / C
    overview = np.stack([np.cos(angle), np.sin(angle)], -1) * (2 + p_y[:, None])
    overview = (overview + rng.normal(0, 0.3, (n_img, 2))).astype(np.float32)

    prob_drop = np.clip(rng.exponential(0.05, (n_img, L, H)), 0, p_y[:, None, None])
    flip = (prob_drop > 0.6 * p_y[:, None, None]).astype(np.float32)
    importance = {
        "prob": (p_y[:, None, None] - prob_drop),
        "prob_drop": prob_drop,
        "kl": rng.exponential(0.1, (n_img, L, H)),
        "layer": rng.uniform(0, 1, (n_img, L, H)),
        "repr": rng.uniform(0, 0.5, (n_img, L, H)),
        "flip": flip,
        "taylor": rng.exponential(1.0, (n_img, L, H)),
    }
    importance = importance_part(
        {m: importance[m].astype(np.float32) for m in METRIC_NAMES},
        probs=probs,
        predictions=predictions,
        targets=labels,
        labels_are_predictions=False,
        num_classes=C,
    )

    # Strength decays with hop at a per-head rate; the entropy is that of the normalised vector.
    rate = rng.uniform(0.05, 3.0, (1, L, H, 1)) * rng.uniform(0.8, 1.2, (n_img, L, H, 1))
    strength = np.exp(-rate * np.arange(K)) * rng.uniform(0.9, 1.1, (n_img, L, H, K))
    strength = strength / strength.sum(-1, keepdims=True) / N
    ring = np.array([min(8 * k, gh * gw) if k else 1 for k in range(K)], np.float64)
    mass = strength * ring
    p = strength / strength.sum(-1, keepdims=True)
    head_entropy = -(p * np.log(p)).sum(-1)
    local = {
        "strength": strength,
        "mass": mass,
        "head_entropy": head_entropy,
        "distance": rng.uniform(0, 1, (n_img, L, H)) * gh,
    }
    if has_cls:
        local["patch_to_cls"] = rng.uniform(0, 0.5, (n_img, L, H))
        local["cls_to_patch"] = rng.uniform(0.5, 1, (n_img, L, H))
    strength_arrays = strength_part(local, has_cls_token=has_cls)

    def pattern_kind(shape):
        head_centre = rng.normal(0, 3, (1, L, H, 2))
        positions = (head_centre + rng.normal(0, 0.5, (n_img, L, H, 2))).astype(np.float32)
        assign = rng.integers(0, clusters, (n_img, L, H)).astype(np.int32)
        reps = rng.uniform(0, 1, (clusters, *shape)).astype(np.float32)
        return positions, assign, reps, (reps + rng.normal(0, 0.05, reps.shape)).astype(np.float32)

    patterns = {}
    kinds = [("patch", (2 * gh - 1, 2 * gw - 1))] + ([("cls", grid)] if has_cls else [])
    for kind, shape in kinds:
        pos, assign, reps, centres_ = pattern_kind(shape)
        patterns.update(
            pattern_part(
                kind, positions=pos, clusters=assign, representatives=reps, centres=centres_
            )
        )

    order = rng.permutation(n_img)
    partial_index = np.sort(order[:partial_images]).astype(np.int32)
    S = len(partial_index)
    partial_prob = rng.uniform(0, 1, (S, L, H, M)) * p_y[partial_index, None, None, None]
    partial_prob[..., modes.index("none")] = p_y[partial_index, None, None]
    top5_classes = np.argsort(rng.uniform(0, 1, (S, L, H, M, C)), -1)[..., :5].astype(np.int32)
    top5_probs = -np.sort(-rng.dirichlet(np.ones(C), (S, L, H, M))[..., :5], -1)
    partial = partial_part(partial_index, partial_prob, top5_classes, top5_probs)

    attention_index = np.sort(order[:attention_images]).astype(np.int32)
    A = len(attention_index)
    attention = _softmax(rng.normal(0, 2, (A, L, H, N, N))).astype(np.float32)

    meta = {
        "config": config.to_dict(),
        "checkpoint": {"path": "synthetic", "sha256": None},
        "image_ids": image_ids,
        "class_names": class_names,
        "labels_are_predictions": False,
        "pruning_modes": modes,
        "settings": {"synthetic": {"bundle_version": BUNDLE_VERSION}},
    }
    parts = {
        "images": {
            "labels": labels,
            "predictions": predictions,
            "probs": probs,
            "thumbnails": thumbnails[..., None],
            "overview": overview,
        },
        "importance": importance,
        "partial": partial,
        "strength": strength_arrays,
        "patterns": patterns,
        "attention": {"image_index": attention_index, "attention": attention},
    }
    bundle = ResultsBundle(meta=meta, parts=parts)
    bundle.validate()
    return bundle
