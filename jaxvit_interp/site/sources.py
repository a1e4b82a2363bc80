"""Results bundle -> the tables the site draws: one table per entity, compact arrays, numpy only.

Each table becomes one Bokeh ``ColumnDataSource`` shared by every view that shows its entity
(:func:`make_sources`); the views' own small display sources are filled from these by the
page's CustomJS. Row conventions (``k = l * H + h`` is a head's row everywhere):

==============  ======================  ==================================================
table           rows                    row index
==============  ======================  ==================================================
images          ``I``                   image ``i``
heads           ``L*H``                 ``k``
image_heads     ``I*L*H``               ``i*L*H + k``
hops            ``I*L*H*K``             ``(i*L*H + k)*K + hop``
head_hops       ``L*H*K``               ``k*K + hop`` (mean over images)
partial         ``S_partial*L*H*M``     ``(s*L*H + k)*M + mode``
top5            ``S_partial*L*H*M*T``   ``((s*L*H + k)*M + mode)*T + rank`` (T = top-k)
thumbnails      ``I*h*w``               ``(i*h + row)*w + col``: packed RGBA pixels
attention       ``S_attention*L*H*N*N`` ``((s*L*H + k)*N + query)*N + key``, uint16
density         pattern kinds           one 2-D histogram image per kind
representatives kinds x clusters        one representative pattern image per cluster
==============  ======================  ==================================================

Pixels and attention entries are single flat columns because BokehJS decodes each array of a
page separately: one array of 3 million entries opens much faster than 768 arrays of 4,225.

Size: attention dominates, so it is stored as uint16 (``round(a * 65535)``, an absolute error
below 7.7e-6, finer than float16 near 1) and only for the bundle's attention subset (optionally
cut to ``max_attention_images``). Thumbnails are packed RGBA uint32 (``image_rgba``) and shrunk
to at most ``thumbnail_size`` pixels a side. Everything else is float32.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

from jaxvit_interp.bundle import IMPORTANCE_METRICS, BundleError, ResultsBundle, special_tokens

# Parts without which there is no site; the others leave a note in their view when absent.
REQUIRED_PARTS = ("images", "importance", "strength")
ATTENTION_SCALE = 65535  # attention in [0, 1] -> uint16
DENSITY_BINS = 48
ENTROPY_BINS = 30  # C3's histogram of a head's entropy over images
VALUE_BINS = 40  # D5's histogram of an attention matrix
PATTERN_KINDS = ("cls", "patch")

# What each metric means and which direction marks an important head (DESIGN.md §1).
METRIC_INFO: dict[str, dict[str, Any]] = {
    "prob": {"title": "probability after pruning (p'_y)", "important_high": False},
    "prob_drop": {"title": "probability drop (p_y - p'_y)", "important_high": True},
    "kl": {"title": "KL(p || p') of the prediction", "important_high": True},
    "layer": {"title": "layer impact ||O - O'|| / ||O||", "important_high": True},
    "repr": {"title": "representation change 1 - cos(z, z')", "important_high": True},
    "flip": {"title": "top-1 flip (global: fraction of images)", "important_high": True},
    "taylor": {"title": "Taylor |dLoss/dm|", "important_high": True},
}


def class_palette(num_classes: int) -> list[str]:
    """Distinct colours for ``num_classes`` classes (Category10/20, then Turbo samples)."""
    from bokeh.palettes import Category10, Category20, Turbo256

    if num_classes <= 10:
        return list(Category10[10][:num_classes])
    if num_classes <= 20:
        return list(Category20[20][:num_classes])
    return [Turbo256[int(round(c * 255 / (num_classes - 1)))] for c in range(num_classes)]


def layer_palette(num_layers: int) -> list[str]:
    """One colour per layer, early layers dark blue through late layers red (Turbo)."""
    from bokeh.palettes import Turbo256

    if num_layers == 1:
        return [Turbo256[40]]
    return [Turbo256[int(round(30 + i * 190 / (num_layers - 1)))] for i in range(num_layers)]


def pack_thumbnails(thumbnails: np.ndarray, max_size: int | None = 64) -> np.ndarray:
    """Thumbnails ``[I, h, w, c]`` (c = 1, 3 or 4) -> packed RGBA ``uint32 [I, h', w']``.

    uint8 pixels are taken as they are; float pixels in [0, 1] are scaled by 255, and any other
    float range is min-max scaled per image (e.g. preprocessed pixels in [-1, 1]). Rows keep
    their order (the views draw with ``origin="top_left"``). Images larger than ``max_size`` on
    a side are shrunk (aspect kept) with a box filter.
    """
    x = np.asarray(thumbnails)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise BundleError(f"images/thumbnails must be [I, h, w, 1|3|4], got shape {x.shape}")
    if x.dtype != np.uint8:
        x = x.astype(np.float64)
        if np.nanmin(x, initial=0) < 0 or np.nanmax(x, initial=0) > 1:
            lo = np.nanmin(x, axis=(1, 2, 3), keepdims=True)
            hi = np.nanmax(x, axis=(1, 2, 3), keepdims=True)
            x = (x - lo) / np.where(hi > lo, hi - lo, 1)
        x = np.clip(np.nan_to_num(x) * 255 + 0.5, 0, 255).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[-1] == 3:
        x = np.concatenate([x, np.full(x.shape[:-1] + (1,), 255, np.uint8)], axis=-1)
    h, w = x.shape[1:3]
    if max_size is not None and max(h, w) > max_size:
        from PIL import Image

        scale = max_size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        x = np.stack([np.asarray(Image.fromarray(im, "RGBA").resize(size, Image.BOX)) for im in x])
    x = np.ascontiguousarray(x)
    # Little-endian RGBA bytes read as one uint32: R in the low byte, as image_rgba expects.
    return x.view("<u4")[..., 0]


def quantize_attention(attention: np.ndarray) -> np.ndarray:
    """Attention in [0, 1] -> uint16 ``round(a * 65535)``; see :data:`ATTENTION_SCALE`."""
    a = np.clip(np.nan_to_num(np.asarray(attention, np.float64)), 0.0, 1.0)
    return np.round(a * ATTENTION_SCALE).astype(np.uint16)


def density_image(
    points: np.ndarray, extent: tuple[float, float, float, float], bins: int = DENSITY_BINS
) -> np.ndarray:
    """2-D histogram of ``points [n, 2]`` over ``extent`` (x0, x1, y0, y1) -> ``[bins, bins]``.

    Row ``r`` counts points with y in the r-th bin from the bottom (Bokeh's default image
    origin);
    counts are log1p-compressed and scaled to a maximum of 1 so sparse regions stay visible.
    """
    x0, x1, y0, y1 = extent
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=bins, range=[[y0, y1], [x0, x1]])
    counts = np.log1p(counts)
    return (counts / max(counts.max(), 1e-12)).astype(np.float32)


def _extent(points: np.ndarray, pad: float = 0.06) -> tuple[float, float, float, float]:
    lo, hi = np.nanmin(points, axis=0), np.nanmax(points, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN on purpose
        return np.nanmean(x, axis=axis)


def _most_common(assignments: np.ndarray) -> np.ndarray:
    """``[I, L, H]`` cluster ids -> ``[L*H]`` the most frequent id of each head (ties: lowest)."""
    flat = assignments.reshape(assignments.shape[0], -1)
    return np.array(
        [np.bincount(col[col >= 0]).argmax() if (col >= 0).any() else -1 for col in flat.T],
        np.int32,
    )


@dataclasses.dataclass
class SiteData:
    """The prepared tables and the facts the page's code needs.

    Attributes:
      info: JSON-serialisable facts (sizes, names, modes, which parts exist).
      tables: entity name -> column name -> array or list (see the module docstring).
    """

    info: dict[str, Any]
    tables: dict[str, dict[str, Any]]


def prepare_site_data(
    bundle: ResultsBundle,
    *,
    max_attention_images: int | None = None,
    thumbnail_size: int | None = 64,
) -> SiteData:
    """Turn a validated bundle into the site's tables; raises :class:`BundleError` if unusable."""
    bundle.validate()
    for part in REQUIRED_PARTS:
        if part not in bundle.parts:
            raise BundleError(
                f"the site needs the {part!r} part, and this results bundle has only "
                f"{sorted(bundle.parts)}"
            )
    dims = bundle.dims()
    n_img, L, H, K, N = dims["I"], dims["L"], dims["H"], dims["K"], dims["N"]
    LH = L * H
    meta = bundle.meta
    config = meta["config"]
    has_cls, first_patch = special_tokens(config)  # the patches start after the special tokens
    class_names = [str(c) for c in meta["class_names"]]
    image_ids = [str(i) for i in meta["image_ids"]]
    modes = [str(m) for m in meta["pruning_modes"]]
    tables: dict[str, dict[str, Any]] = {}

    # --- images ---------------------------------------------------------------------------
    images = bundle["images"]
    labels = images["labels"].astype(np.int64)
    predictions = images["predictions"].astype(np.int64)
    for name, values in (("labels", labels), ("predictions", predictions)):
        bad = (values < 0) | (values >= len(class_names))
        if bad.any():
            raise BundleError(
                f"images/{name} has class {int(values[bad][0])} at image {int(np.argmax(bad))}, "
                f"outside 0..{len(class_names) - 1}"
            )
    probs = images["probs"].astype(np.float32)
    p_y = probs[np.arange(n_img), labels]
    palette = class_palette(len(class_names))
    attention_index = np.zeros(0, np.int64)
    if "attention" in bundle.parts:
        attention_index = bundle["attention"]["image_index"].astype(np.int64)
        if max_attention_images is not None:
            attention_index = attention_index[: max(0, int(max_attention_images))]
    partial_index = (
        bundle["partial"]["image_index"].astype(np.int64)
        if "partial" in bundle.parts
        else np.zeros(0, np.int64)
    )
    for part, index in (("attention", attention_index), ("partial", partial_index)):
        if ((index < 0) | (index >= n_img)).any():
            raise BundleError(f"{part}/image_index refers to images outside 0..{n_img - 1}")
    attention_row = np.full(n_img, -1, np.int32)
    attention_row[attention_index] = np.arange(len(attention_index), dtype=np.int32)
    partial_row = np.full(n_img, -1, np.int32)
    partial_row[partial_index] = np.arange(len(partial_index), dtype=np.int32)
    overview = images["overview"].astype(np.float32)
    thumbs = pack_thumbnails(images["thumbnails"], thumbnail_size)
    tables["thumbnails"] = {"rgba": thumbs.reshape(-1)}
    tables["images"] = {
        "index": np.arange(n_img, dtype=np.int32),
        "id": image_ids,
        "label": [class_names[c] for c in labels],
        "label_index": labels.astype(np.int32),
        "predicted": [class_names[c] for c in predictions],
        "prob": p_y,
        "pred_prob": probs[np.arange(n_img), predictions],
        "x": overview[:, 0],
        "y": overview[:, 1],
        "color": [palette[c] for c in labels],
        # Confident images solid, doubtful ones faint: the probability is visible at a glance.
        "alpha": (0.25 + 0.75 * np.clip(p_y, 0, 1)).astype(np.float32),
        "attention_row": attention_row,
        "partial_row": partial_row,
        # Images whose attention is stored get an outline, so readers can find them.
        "outline": np.where(attention_row >= 0, 1.5, 0.0).astype(np.float32),
        "stored": [
            ", ".join(n for n, row in (("attention", a), ("partial pruning", s)) if row >= 0) or "-"
            for a, s in zip(attention_row, partial_row, strict=True)
        ],
    }

    # --- per (image, head) ----------------------------------------------------------------
    importance = bundle["importance"]
    strength = bundle["strength"]
    image_heads: dict[str, Any] = {
        m: importance[m].astype(np.float32).reshape(n_img * LH) for m in IMPORTANCE_METRICS
    }
    for name in ("head_entropy", "distance", "patch_to_cls", "cls_to_patch"):
        if name in strength:
            image_heads[name] = strength[name].astype(np.float32).reshape(n_img * LH)
    patterns = bundle.parts.get("patterns", {})
    kinds = [k for k in PATTERN_KINDS if f"{k}_positions" in patterns]
    for kind in kinds:
        pos = patterns[f"{kind}_positions"].astype(np.float32).reshape(n_img * LH, 2)
        image_heads[f"{kind}_x"] = pos[:, 0]
        image_heads[f"{kind}_y"] = pos[:, 1]
        image_heads[f"{kind}_cluster"] = patterns[f"{kind}_clusters"].astype(np.int32).reshape(-1)
    tables["image_heads"] = image_heads

    tables["hops"] = {
        "strength": strength["strength"].astype(np.float32).reshape(-1),
        "mass": strength["mass"].astype(np.float32).reshape(-1),
    }
    tables["head_hops"] = {
        "hop": np.tile(np.arange(K, dtype=np.int32), LH),
        "strength": _nanmean(strength["strength"], 0).astype(np.float32).reshape(-1),
        "mass": _nanmean(strength["mass"], 0).astype(np.float32).reshape(-1),
    }

    # --- heads: identity plus global (over-images) values --------------------------------------
    layer = np.repeat(np.arange(L, dtype=np.int32), H)
    head = np.tile(np.arange(H, dtype=np.int32), L)
    lpal = layer_palette(L)
    heads: dict[str, Any] = {
        "index": np.arange(LH, dtype=np.int32),
        "layer": layer,
        "head": head,
        "name": [f"layer {a}, head {b}" for a, b in zip(layer, head, strict=True)],
        "layer_color": [lpal[a] for a in layer],
        # Heads of a layer side by side around x = layer in the entropy plot.
        "entropy_x": (layer + (head - (H - 1) / 2) * (0.6 / max(H, 1))).astype(np.float32),
    }
    for m in IMPORTANCE_METRICS:
        heads[f"global_{m}"] = _nanmean(importance[m], 0).astype(np.float32).reshape(LH)
    heads["flip_fraction"] = heads["global_flip"]
    for name in ("head_entropy", "distance", "patch_to_cls", "cls_to_patch"):
        if name in strength:
            heads[f"global_{name}"] = _nanmean(strength[name], 0).astype(np.float32).reshape(LH)
    for kind in kinds:
        mean = _nanmean(patterns[f"{kind}_positions"], 0).astype(np.float32).reshape(LH, 2)
        heads[f"global_{kind}_x"] = mean[:, 0]
        heads[f"global_{kind}_y"] = mean[:, 1]
        heads[f"global_{kind}_cluster"] = _most_common(patterns[f"{kind}_clusters"])
    # Display columns, first filled with the global view; the page rewrites them.
    default_kind = kinds[0] if kinds else None
    heads["value"] = heads["global_prob"].copy()
    heads["entropy"] = heads["global_head_entropy"].copy()
    heads["pos_x"] = (
        heads[f"global_{default_kind}_x"].copy() if default_kind else np.zeros(LH, np.float32)
    )
    heads["pos_y"] = (
        heads[f"global_{default_kind}_y"].copy() if default_kind else np.zeros(LH, np.float32)
    )
    heads["value_text"] = [f"{v:.3g}" for v in heads["value"]]
    heads["text_color"] = ["#000000"] * LH
    heads["metric"] = ["prob"] * LH
    tables["heads"] = heads

    # --- partial pruning --------------------------------------------------------------------
    if "partial" in bundle.parts:
        partial = bundle["partial"]
        tables["partial"] = {"prob": partial["prob"].astype(np.float32).reshape(-1)}
        classes = partial["top5_classes"].astype(np.int64)
        if ((classes < 0) | (classes >= len(class_names))).any():
            raise BundleError(f"partial/top5_classes has classes outside 0..{len(class_names) - 1}")
        tables["top5"] = {
            "class_index": classes.astype(np.int32).reshape(-1),
            "prob": partial["top5_probs"].astype(np.float32).reshape(-1),
        }

    # --- attention (subset, uint16) -------------------------------------------------------------
    if len(attention_index):
        att = bundle["attention"]["attention"][: len(attention_index)]
        tables["attention"] = {"value": quantize_attention(att).reshape(-1)}

    # --- pattern embedding density and cluster representatives -----------------------------
    density: dict[str, list] = {"kind": [], "image": [], "x": [], "y": [], "dw": [], "dh": []}
    reps: dict[str, list] = {
        "kind": [],
        "cluster": [],
        "image": [],
        "x": [],
        "y": [],
        "dw": [],
        "dh": [],
        "count": [],
    }
    extents = {}
    for kind in kinds:
        points = patterns[f"{kind}_positions"].reshape(-1, 2).astype(np.float64)
        extent = _extent(points[np.isfinite(points).all(1)])
        extents[kind] = extent
        density["kind"].append(kind)
        density["image"].append(density_image(points, extent))
        density["x"].append(extent[0])
        density["y"].append(extent[2])
        density["dw"].append(extent[1] - extent[0])
        density["dh"].append(extent[3] - extent[2])
        representatives = patterns[f"{kind}_representatives"].astype(np.float64)
        counts = np.bincount(
            patterns[f"{kind}_clusters"].reshape(-1).clip(0), minlength=len(representatives)
        )
        for c, rep in enumerate(representatives):
            lo, hi = np.nanmin(rep), np.nanmax(rep)
            # Each representative scaled to [0, 1]: the shape of the pattern matters, not its scale.
            img = (rep - lo) / (hi - lo) if hi > lo else np.zeros_like(rep)
            h, w = rep.shape
            reps["kind"].append(kind)
            reps["cluster"].append(c)
            reps["image"].append(img.astype(np.float32))
            reps["x"].append(c * (w + 1.0))
            reps["y"].append(0.0)
            reps["dw"].append(float(w))
            reps["dh"].append(float(h))
            reps["count"].append(int(counts[c]))
    tables["density"] = density
    tables["representatives"] = reps

    gh = config["image_size"][0] // config["patch_size"][0]
    gw = config["image_size"][1] // config["patch_size"][1]
    info = {
        "num_images": n_img,
        "num_layers": L,
        "num_heads": H,
        "num_hops": K,
        "num_tokens": N,
        "grid": [gh, gw],
        "thumbnail_shape": list(thumbs.shape[1:]),
        # The query when no patch is chosen: CLS, or the centre patch of a model without CLS.
        "default_query": 0 if has_cls else first_patch + (gh // 2) * gw + gw // 2,
        "first_patch": first_patch,
        "entropy_bins": ENTROPY_BINS,
        "value_bins": VALUE_BINS,
        "has_cls": has_cls,
        "class_names": class_names,
        "pruning_modes": modes,
        "metrics": list(IMPORTANCE_METRICS),
        "metric_info": METRIC_INFO,
        "kinds": kinds,
        "extents": {k: list(v) for k, v in extents.items()},
        "has_partial": "partial" in bundle.parts,
        # Top-k kept after partial pruning: 5, or the class count when smaller.
        "top_k": (
            int(bundle["partial"]["top5_classes"].shape[-1])
            if "partial" in bundle.parts
            else min(5, len(class_names))
        ),
        "num_partial": int(len(partial_index)),
        "num_attention": int(len(attention_index)),
        "attention_scale": ATTENTION_SCALE,
        "max_entropy": math.log(K) if K > 1 else 1.0,
        "labels_are_predictions": bool(meta.get("labels_are_predictions", False)),
        "checkpoint": meta.get("checkpoint", {}),
    }
    return SiteData(info=info, tables=tables)


def make_sources(data: SiteData) -> dict[str, Any]:
    """One named ``ColumnDataSource`` per table (name = table name, e.g. ``"heads"``)."""
    from bokeh.models import ColumnDataSource

    return {
        name: ColumnDataSource(data=dict(cols), name=name) for name, cols in data.tables.items()
    }
