"""Synthetic results bundles: every array of the bundle schema, random but coherent.

They exercise the site without running an analysis (its tests and size benchmark use them). The
per-image arrays obey the invariants a real analysis gives, so the views look like real ones:
probabilities sum to 1 over classes, attention rows are softmax distributions (of random logits at
a random temperature per head, so peaked and flat heads mix, stored as the analysis stores them:
:func:`~jaxvit_interp.attention_codes.encode_attention`: the special tokens' columns as float16 and codes of
roots of the patch weights, or the linear codes of a version-3 analysis), head entropy is the
entropy of the normalised strength vector, ``prob`` is ``p_y - prob_drop``, and partial pruning's
``none`` mode keeps the unpruned probability. The reductions over images are computed from them by
the same functions an analysis uses (:mod:`jaxvit_interp.pipeline.parts`).

The model families the site meets are a keyword away: a distillation token (DeiT), register
tokens (DINOv2), a backbone without a classifier (``num_classes=0``: no labels, probabilities,
partial pruning nor classes, the metrics ``layer`` and ``repr``) and an unsure classifier (a low
``confidence``, as a linear probe on a CLIP tower); ``set_images`` adds the head-set stage's part
and ``explain_images`` the explanations stage's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from jaxvit_interp.attention_codes import LINEAR, POWER, encode_attention
from jaxvit_interp.bundle import (
    BUNDLE_VERSION,
    ResultsBundle,
    load_bundle,
    mapped_path,
    save_bundle,
)
from jaxvit_interp.importance.pruning import PruningCurve
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import CLS_MODES, PRUNING_MODES
from jaxvit_interp.pipeline.head_sets import curve_arrays, head_sets_meta, top_heads
from jaxvit_interp.pipeline.parts import (
    importance_part,
    partial_part,
    pattern_part,
    rollout_part,
    special_part,
    strength_part,
)
from jaxvit_interp.quantities import METRIC_NAMES, model_metrics
from jaxvit_interp.strength.special import special_token_names


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _rollout(rng, blob: np.ndarray, L: int, N: int, has_cls: bool) -> dict[str, np.ndarray]:
    """The rollout part: each layer moves a random share of the read row (a distribution over
    the tokens, starting as the analysis's does) towards a random distribution leaning on the
    image's blob; the map and the contributions are read from the rows as the analysis reads
    them (:mod:`jaxvit_interp.rollout.kernels`)."""
    from jaxvit_interp.rollout import layer_contributions

    n_img, P = len(blob), blob[0].size
    first = N - P
    row = np.zeros((n_img, N))
    if has_cls:
        row[:, 0] = 1.0
    else:
        row[:, first:] = 1.0 / P
    lean = np.concatenate([np.zeros((n_img, first)), 3.0 * blob.reshape(n_img, P)], axis=1)
    rows = []
    for _ in range(L):
        target = _softmax(lean + rng.normal(0, 1, (n_img, N)))
        share = rng.uniform(0.1, 0.5, (n_img, 1))  # at most 1/2 moves, as in a model
        row = (1 - share) * row + share * target
        rows.append(row)
    rows = np.stack(rows, axis=1).astype(np.float32)  # [image, layer, N]
    contributions = np.asarray(layer_contributions(rows, first, has_cls))
    return rollout_part(rows[:, -1, first:].reshape(blob.shape), contributions)


def _head_sets(rng, config: ViTConfig, prob_drop, p_y, correct, images: int):
    """The head-set stage's part and meta (:mod:`jaxvit_interp.pipeline.head_sets`): random
    interactions of the top heads, and accuracy and mean ``p(label)`` falling as heads go, in
    importance order and in 3 random orders, summarised as the stage summarises its curves."""
    L, H = config.num_layers, config.num_heads
    heads = top_heads(prob_drop, min(16, L * H))
    J = len(heads)
    part = {"image_index": np.sort(rng.permutation(len(p_y))[:images]).astype(np.int32)}
    if J >= 2:
        part["interaction_heads"] = heads.astype(np.int32)
        for m, scale in (("prob_drop", 0.02), ("kl", 0.05)):
            pairs = rng.normal(0, scale, (J, J))
            part[f"interaction_{m}"] = ((pairs + pairs.T) / 2).astype(np.float32)
            part[f"single_{m}"] = rng.exponential(scale, J).astype(np.float32)
    ranked = top_heads(prob_drop, L * H)[::-1]  # least important first
    shuffled = [np.stack(np.divmod(rng.permutation(L * H), H), -1) for _ in range(3)]
    runs = {"importance": ranked[None], "random": np.stack(shuffled)}
    start_acc, start_prob = float(np.mean(correct)), float(np.mean(p_y))
    rows = []
    for order, order_heads in runs.items():
        steps = order_heads.shape[1]
        # Each removal keeps a random share of what is left (more of it in importance order).
        keep = rng.uniform(0.9 if order == "importance" else 0.8, 1.0, (len(order_heads), steps))
        fall = np.concatenate([np.ones((len(order_heads), 1)), np.cumprod(keep, 1)], 1)
        rows.append(PruningCurve(order, order_heads, start_acc * fall, start_prob * fall))
    part.update(curve_arrays(rows))
    meta = head_sets_meta(
        config, images=images, interaction_heads=16, random_orders=3, greedy_max_heads=0
    )
    return part, meta


def _explanations(rng, config: ViTConfig, labels, p_y, blob, images: int, steps: int = 10):
    """The explanations stage's part and meta (:mod:`jaxvit_interp.pipeline.explain_stage`):
    each method's map a noisy copy of the image's blob (signed for the gradient and occlusion
    methods), p(label) falling as patches go (faster for a map than for the random order) and
    rising as they come back, and the areas of those curves as the stage computes them."""
    from jaxvit_interp.explain.faithfulness import MODES, curve_area
    from jaxvit_interp.pipeline.explain_stage import stage_methods

    L, H = config.num_layers, config.num_heads
    methods = list(stage_methods(config))
    index = np.sort(rng.permutation(len(p_y))[:images])
    E, M = len(index), len(methods)
    noise = rng.normal(0, 0.3, (E, M, *blob.shape[1:]))
    maps = blob[index][:, None] + noise

    def curves(*shape, fast):
        # Deletion: each step keeps a random share of what is left of p(label); insertion
        # climbs from 0 by what deletion took away.
        keep = rng.uniform(0.55 if fast else 0.8, 1.0, (*shape, steps))
        fall = np.concatenate([np.ones((*shape, 1)), np.cumprod(keep, -1)], -1)
        start = p_y[index].reshape(E, *([1] * (len(shape) - 1)), 1)
        return np.stack([start * fall, start * (1 - fall)], axis=-2)

    method_curves = curves(E, M, fast=True)  # [E, method, mode, steps + 1]
    random_curves = curves(E, fast=False)  # [E, mode, steps + 1]
    head_curves = curves(E, L, H, fast=False)
    head_area = curve_area(head_curves)
    part = {
        "image_index": index.astype(np.int32),
        "labels": np.asarray(labels)[index].astype(np.int32),
        "maps": maps.astype(np.float16),
        "curves": method_curves.astype(np.float32),
        "area": curve_area(method_curves),
        "random_curves": random_curves.astype(np.float32),
        "random_area": curve_area(random_curves),
        "head_area": head_area,
        "head_area_mean": head_area.mean(axis=0, dtype=np.float64).astype(np.float32),
    }
    meta = {
        "images": E, "methods": methods, "modes": list(MODES), "baseline": "zero",
        "steps": steps, "random_seed": 0, "labels_are_predictions": False,
    }  # fmt: skip
    return part, meta


def synthetic_bundle(
    rng: np.random.Generator,
    *,
    num_images: int = 40,
    num_classes: int = 10,
    num_layers: int = 3,
    num_heads: int = 2,
    grid: tuple[int, int] = (4, 4),
    patch_size: int = 1,
    channels: int = 1,
    has_cls: bool = True,
    distillation_token: bool = False,
    num_registers: int = 0,
    confidence: float = 3.0,
    partial_images: int = 8,
    attention_images: int = 6,
    set_images: int = 0,
    explain_images: int = 0,
    clusters: int = 4,
    class_names: list[str] | None = None,
    image_ids: list[str] | None = None,
    directory: str | Path | None = None,
    attention_code: str = POWER,
) -> ResultsBundle:
    """A valid :class:`ResultsBundle` for a ViT with ``patch_size`` patches on a ``grid``.

    Args:
      rng: the randomness (tests pass a freshly seeded generator).
      num_images: ``I``; partial pruning and attention cover the first ``partial_images`` and
        ``attention_images`` of a random permutation, as an analysis's chosen subsets would.
      num_classes: ``C``; 0 makes a backbone without a classifier.
      patch_size, channels: the input pixels (``grid * patch_size`` a side).
      has_cls, distillation_token, num_registers: the special tokens before the patches.
      confidence: how far the label's logit stands above the others (unit-scale noise): 3 gives
        a confident classifier, 0 an unsure one.
      set_images: with more than 0, the ``head_sets`` part of that many images (classifiers
        only): interactions of the top 16 heads, curves in importance and random orders.
      explain_images: with more than 0, the ``explanations`` part of that many images
        (classifiers only): each method's map, its deletion and insertion curves and areas.
      class_names / image_ids: override the generated names (e.g. to test escaping).
      directory: write the bundle there and return it loaded, its large arrays memory-mapped;
        their contents are generated a few images at a time, as an analysis writes them, so
        thousands of ViT-B/16-sized images fit in memory.
      attention_code: how the attention is stored
        (:data:`~jaxvit_interp.attention_codes.ATTENTION_CODES`); ``"linear"`` makes the
        attention part of a version-3 analysis.
    """
    gh, gw = grid
    n_img, C, L, H = num_images, num_classes, num_layers, num_heads
    config = ViTConfig(
        image_size=(gh * patch_size, gw * patch_size),
        patch_size=(patch_size, patch_size),
        channels=channels,
        hidden_size=8 * H,
        num_layers=L,
        num_heads=H,
        mlp_dim=16 * H,
        num_classes=C,
        classifier="token" if has_cls else "gap",
        distillation_token=distillation_token,
        num_register_tokens=num_registers,
    )
    N, K = config.num_tokens, max(grid)
    specials = special_token_names(config)
    modes = [m for m in PRUNING_MODES if has_cls or m not in CLS_MODES]
    M = len(modes)
    class_names = list(class_names) if class_names is not None else [str(c) for c in range(C)]
    image_ids = list(image_ids) if image_ids is not None else [f"img-{i:04d}" for i in range(n_img)]
    assert len(class_names) == C and len(image_ids) == n_img

    # A backbone's images fall into groups too (the overview's clusters), which it cannot name.
    groups = C or 5
    labels = rng.integers(0, groups, n_img).astype(np.int32)
    logits = rng.normal(0, 1.5, (n_img, groups)) + confidence * (
        np.arange(groups)[None] == labels[:, None]
    )
    probs = _softmax(logits).astype(np.float32)
    predictions = probs.argmax(-1).astype(np.int32)
    p_y = probs[np.arange(n_img), labels]
    # Thumbnails: a bright blob per image on a dark background, grayscale uint8.
    yy, xx = np.mgrid[0:gh, 0:gw]
    centres = rng.uniform(0, 1, (n_img, 2)) * [gh - 1, gw - 1]
    blob = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 3.0)
    thumbnails = np.clip(blob * 255 + rng.normal(0, 20, blob.shape), 0, 255).astype(np.uint8)
    # Class clusters in the overview, spread by probability.
    angle = 2 * np.pi * labels / groups
    overview = np.stack([np.cos(angle), np.sin(angle)], -1) * (2 + p_y[:, None])
    overview = (overview + rng.normal(0, 0.3, (n_img, 2))).astype(np.float32)

    # Pruning a head may also raise p(label): some drops are negative (prob stays in [0, 1]).
    drop = rng.exponential(0.05, (n_img, L, H)) - rng.exponential(0.03, (n_img, L, H))
    prob_drop = np.clip(drop, p_y[:, None, None] - 1, p_y[:, None, None])
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
    if specials:  # CLS, when there is one, comes first: its masses are the CLS masses above
        X = len(specials)
        to = rng.uniform(0, 0.5, (n_img, L, H, X))
        given = rng.uniform(0.5, 1, (n_img, L, H, X))
        if has_cls:
            to[..., 0], given[..., 0] = local["patch_to_cls"], local["cls_to_patch"]
        strength_arrays.update(
            special_part(
                {
                    "special_to": to,
                    "special_from": given,
                    "special_between": rng.uniform(0, 0.2, (n_img, L, H, X, X)),
                }
            )
        )

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
    partial = None
    if C:  # partial pruning measures p(label): a backbone has none
        partial_prob = rng.uniform(0, 1, (S, L, H, M)) * p_y[partial_index, None, None, None]
        partial_prob[..., modes.index("none")] = p_y[partial_index, None, None]
        top5_classes = np.argsort(rng.uniform(0, 1, (S, L, H, M, C)), -1)[..., :5].astype(np.int32)
        top5_probs = -np.sort(-rng.dirichlet(np.ones(C), (S, L, H, M))[..., :5], -1)
        partial = partial_part(partial_index, partial_prob, top5_classes, top5_probs)

    attention_index = np.sort(order[:attention_images]).astype(np.int32)
    A = len(attention_index)
    # One temperature per head (and image), as hop_strength's benchmark draws them: peaked and
    # flat heads mixed, like a trained model's.
    temperature = rng.uniform(0.1, 8.0, (A, L, H, 1, 1)).astype(np.float32)
    slice_images = max(1, 2**22 // max(1, L * H * N * N))

    def attention_slices():
        for at in range(0, A, slice_images):
            t = temperature[at : at + slice_images]
            logits = rng.normal(0, 1, (len(t), L, H, N, N)).astype(np.float32) * t
            yield encode_attention(_softmax(logits), config.num_prefix_tokens, attention_code)

    # What an analysis stores with this code: a version-3 one (linear codes) had no exponents,
    # special columns nor relative errors.
    linear = attention_code == LINEAR
    layouts = {
        "codes": ((A, L, H, N, N), np.uint8),
        "steps": ((A, L, H, N), np.float32),
        **(
            {}
            if linear
            else {
                "exponents": ((A, L, H, N), np.uint8),
                "special": ((A, L, H, N, config.num_prefix_tokens), np.float16),
            }
        ),
    }
    per_matrix = ("error",) if linear else ("error", "relative_error")
    errors = {name: np.zeros((A, L, H), np.float32) for name in per_matrix}

    tint = np.array([1.0, 0.8, 0.6][:channels], np.float32)

    def pixel_slices():
        size = (gh * patch_size, gw * patch_size)
        for at in range(0, n_img, 64):
            small = thumbnails[at : at + 64].astype(np.float32)
            big = np.repeat(np.repeat(small, patch_size, 1), patch_size, 2)
            noise = rng.normal(0, 12, (len(small), *size, channels))
            yield np.clip(big[..., None] * tint + noise, 0, 255).astype(np.uint8)

    meta = {
        "config": config.to_dict(),
        "checkpoint": {"path": "synthetic", "sha256": None},
        "image_ids": image_ids,
        "class_names": class_names,
        "labels_are_predictions": False,
        "pruning_modes": modes,
        "metrics": list(model_metrics(C)),
        "special_tokens": list(specials),
        "attention_code": attention_code,
        "settings": {"synthetic": {"bundle_version": BUNDLE_VERSION}},
    }
    classes = {"labels": labels, "predictions": predictions, "probs": probs} if C else {}
    parts = {
        "images": {
            **classes,
            "thumbnails": (thumbnails[..., None] * tint).astype(np.uint8),
            "overview": overview,
        },
        "importance": importance,
        **({"partial": partial} if partial is not None else {}),
        "strength": strength_arrays,
        "patterns": patterns,
        "attention": {"image_index": attention_index},
    }
    if C and set_images > 0:
        parts["head_sets"], meta["head_sets"] = _head_sets(
            rng, config, importance["prob_drop"], p_y, predictions == labels, min(set_images, n_img)
        )
    if C and explain_images > 0:
        parts["explanations"], meta["explanations"] = _explanations(
            rng, config, labels, p_y, blob, min(explain_images, n_img)
        )
    stored = parts["attention"]
    if directory is None:
        encoded = list(attention_slices())
        for name, (shape, dtype) in layouts.items():
            stored[name] = (
                np.concatenate([e[name] for e in encoded]) if encoded else np.zeros(shape, dtype)
            )
        for name in per_matrix:
            errors[name] = np.concatenate([e[name] for e in encoded]) if encoded else errors[name]
        parts["images"]["pixels"] = np.concatenate(list(pixel_slices()))
    else:
        from jaxvit_interp.storage import atomic_npy

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            files = {
                name: stack.enter_context(
                    atomic_npy(mapped_path(directory, "attention", name), shape, dtype)
                )
                for name, (shape, dtype) in layouts.items()
            }
            at = 0
            for encoded in attention_slices():
                count = len(encoded["codes"])
                for name in (*files, *per_matrix):
                    target = files[name] if name in files else errors[name]
                    target[at : at + count] = encoded[name]
                at += count
        size = (n_img, gh * patch_size, gw * patch_size, channels)
        with atomic_npy(mapped_path(directory, "images", "pixels"), size, np.uint8) as px:
            at = 0
            for piece in pixel_slices():
                px[at : at + len(piece)] = piece
                at += len(piece)
        for part, names in (("attention", tuple(layouts)), ("images", ("pixels",))):
            for name in names:
                parts[part][name] = np.load(mapped_path(directory, part, name), mmap_mode="r")
    for name in per_matrix:
        stored[name] = errors[name]
        stored[f"{name}_max"] = errors[name].max(0) if A else np.zeros((L, H), np.float32)
    parts["rollout"] = _rollout(rng, blob, L, N, has_cls)
    bundle = ResultsBundle(meta=meta, parts=parts)
    bundle.validate()
    if directory is not None:
        save_bundle(bundle, directory)
        return load_bundle(directory)
    return bundle
