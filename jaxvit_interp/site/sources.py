"""Results bundle -> the tables the page draws from: the bundle's arrays, looked up, never recomputed.

Every number the page shows was computed by the analysis package that owns it and stored in the
bundle (:mod:`jaxvit_interp.quantities` declares each array and its dimensions). Here the arrays
are only laid out for BokehJS:

- each array becomes one flat column named ``part/name`` (row-major, as NumPy lays it out), in the
  table of its dimensions (``images`` for ``[I]``, ``heads`` for ``[L, H]``, ``t:C,L,H`` for
  ``[C, L, H]``, ...), because a BokehJS source needs equal-length columns and one source per
  array would cost a model each;
- what only the chosen image needs (its per-head values, partial pruning, attention, rollout map
  and pixels)
  is not in a table but in that image's record (:mod:`jaxvit_interp.site.records`), which the page
  reads when the image is chosen; ``info["tables"]`` says ``"record"`` for those arrays, and a few
  arrays no view shows stay out of the page (``records.NOT_SHOWN``);
- the page receives the registry (metrics, every array's dimensions) and the sizes of the
  dimensions as JSON in ``info``, and finds any value with one function (``js/update.js``:
  ``value(part, name, coords)``), so no layout is written twice;
- the ``images`` and ``heads`` tables are also the two entities the views select, with a few
  display columns (names, colours, positions in the head grid);
- thumbnails are re-encoded as packed RGBA (``image_rgba``), each cluster representative and
  density map as a display image, and the per-image pattern positions of a sample of at most
  :data:`EMBEDDING_POINTS` images (chosen with a fixed seed) form D1's ``embedding`` table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxvit_interp.attention_codes import RELATIVE_FLOOR
from jaxvit_interp.bundle import BundleError, ResultsBundle, special_tokens
from jaxvit_interp.quantities import (
    ABLATION_KINDS,
    DIRECT,
    KIND_METRICS,
    METRICS,
    PATTERN_KINDS,
    SCHEMA,
    ablation_array,
    metric,
    registry_json,
)
from jaxvit_interp.site.records import NOT_SHOWN, record_arrays, record_layout

# Parts without which there is no site; the others leave a note in their view when absent.
REQUIRED_PARTS = ("images", "importance", "strength")
VALUE_BINS = 40
# The overview's one colour for the images of a backbone without classes.
NO_CLASS_COLOR = "#4c72b0"
# Most images D1 draws as points for the chosen head (the density image covers every one).
EMBEDDING_POINTS = (
    600  # D5's histogram of one attention matrix (a display of one image, not a reduction)
)
# Arrays re-encoded into their own display tables rather than looked up as they are.
ENCODED = {
    *(("patterns", f"{k}_{n}") for k in PATTERN_KINDS for n in ("representatives", "centres")),
    *(("patterns", f"{k}_{n}") for k in PATTERN_KINDS for n in ("density", "extent")),
}
# Which direction marks an important head, the title of each metric, as the menu shows them,
# and the metric the class x head map shows when it is chosen; the same for each metric under a
# further ablation kind than the run's first, and for the direct logit attribution (whose
# larger values mark the more important head).
METRIC_INFO: dict[str, dict[str, Any]] = {
    **{
        m.name: {
            "title": m.title,
            "important_high": m.important_high,
            "class_map": m.class_map or m.name,
        }
        for m in METRICS
    },
    **{
        ablation_array(name, kind): {
            "title": f"{metric(name).title} ({kind} ablation)",
            "important_high": metric(name).important_high,
            "class_map": ablation_array(metric(name).class_map or name, kind),
        }
        for kind in ABLATION_KINDS
        for name in KIND_METRICS
    },
    DIRECT: {
        "title": "direct logit attribution (the head's direct share of logit_y)",
        "important_high": True,
        "class_map": DIRECT,
    },
}


def run_ablations(bundle: ResultsBundle) -> list[str]:
    """The ablation kinds of the run that made ``bundle``, its first kind first (a bundle from
    before the setting: zero)."""
    return list(bundle.meta.get("settings", {}).get("ablations") or ("zero",))


def importance_menu(info: dict[str, Any], metrics: list[str]) -> list[str]:
    """B's menu entries for the chosen ``metrics``: each metric (of the run's first ablation
    kind), beside it the same metric under each further kind the bundle holds, and the direct
    logit attribution where the bundle holds it; each entry names the importance array the page
    shows (``{entry}`` per image, ``{entry}_mean`` over all images)."""
    entries = []
    for m in metrics:
        entries.append(m)
        entries += [
            ablation_array(m, kind)
            for kind in info["ablations"][1:]
            if ablation_array(m, kind) in info["importance_arrays"]
        ]
    if DIRECT in info["importance_arrays"]:
        entries.append(DIRECT)
    return entries


def menu_title(info: dict[str, Any], entry: str) -> str:
    """An entry's title in B's menu: the metric's, and the run's kind where it computed more
    than one or another than zero (``prob_drop: probability drop (p_y - p'_y) (mean
    ablation)``)."""
    title = METRIC_INFO[entry]["title"]
    first = info["ablations"][0]
    if entry in info["metrics"] and info["ablations"] != ["zero"]:
        title = f"{title} ({first} ablation)"
    return f"{entry}: {title}"


# Cluster representatives a row of D's strip holds (more go on further rows), and the room left
# under each for its two-line caption, as a share of its height.
REPRESENTATIVES_PER_ROW = 6
CAPTION_ROOM = 0.8


# A class name or an image id on a canvas (a plot title, axis or legend), where text is one line
# and what does not fit is cut, is shortened to this many characters; text boxes show it whole.
NAME_CHARS = 20
ID_CHARS = 16


def short_name(name: str) -> str:
    """A class name for a canvas: its first :data:`NAME_CHARS` characters (the page's
    ``shortName``)."""
    name = str(name)
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def head_label(layer: int, head: int) -> str:
    """How the page names a head, everywhere: ``L4 H10`` (never ``4.10``, which reads as a
    decimal)."""
    return f"L{layer} H{head}"


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


def table_name(dims: tuple[str | int, ...]) -> str:
    """The page table that holds arrays of dimensions ``dims``."""
    if tuple(dims) == ("I",):
        return "images"
    if tuple(dims) == ("L", "H"):
        return "heads"
    return "t:" + ",".join(str(d) for d in dims)


@dataclasses.dataclass
class SiteData:
    """The prepared tables and the facts the page's code needs.

    Attributes:
      info: JSON-serialisable facts: sizes, names, modes, which parts exist, the registry
        (``info["registry"]``), the size of every dimension (``info["sizes"]``), where each
        bundle array lives (``info["tables"]``: ``"part/name"`` -> table name or ``"record"``)
        and how records lay out their arrays (``info["records"]``).
      tables: table name -> column name -> array or list.
      bundle: the bundle the records are written from.
      record_keys: ``(part, name)`` of the arrays records carry.
      partial_row / attention_row: each image's row in the partial-pruning and attention
        subsets, or -1.
    """

    info: dict[str, Any]
    tables: dict[str, dict[str, Any]]
    bundle: ResultsBundle | None = None
    record_keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    partial_row: np.ndarray | None = None
    attention_row: np.ndarray | None = None

    def record(self, image: int) -> str:
        """The script of image ``image``'s record (:mod:`jaxvit_interp.site.records`)."""
        from jaxvit_interp.site.records import record_script

        return record_script(
            self.bundle,
            image,
            partial_row=int(self.partial_row[image]),
            attention_row=int(self.attention_row[image]),
            keys=self.record_keys,
        )

    def column(self, part: str, name: str) -> np.ndarray:
        """The flat column of bundle array ``part/name``."""
        key = f"{part}/{name}"
        return np.asarray(self.tables[self.info["tables"][key]][key])


def prepare_site_data(
    bundle: ResultsBundle,
    *,
    max_attention_images: int | None = None,
    thumbnail_size: int | None = 64,
) -> SiteData:
    """Lay a validated bundle out as the site's tables; raises :class:`BundleError` if unusable."""
    bundle.validate()
    for part in REQUIRED_PARTS:
        if part not in bundle.parts:
            raise BundleError(
                f"the site needs the {part!r} part, and this results bundle has only "
                f"{sorted(bundle.parts)}"
            )
    explained = explanation_facts(bundle)  # checked before any work
    sizes = bundle.dims()
    n_img, L, H, N = sizes["I"], sizes["L"], sizes["H"], sizes["N"]
    LH = L * H
    meta = bundle.meta
    config = meta["config"]
    has_cls, first_patch = special_tokens(config)  # the patches start after the special tokens
    class_names = [str(c) for c in meta["class_names"]]
    modes = [str(m) for m in meta["pruning_modes"]]
    tables: dict[str, dict[str, Any]] = {"images": {}, "heads": {}}
    where: dict[str, str] = {}

    # --- every bundle array, looked up where its dimensions say ----------------------------
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
    in_records = set(record_arrays(bundle))
    for part, arrays in bundle.parts.items():
        for name, array in arrays.items():
            dims = SCHEMA[part][name]
            if (part, name) in in_records:
                where[f"{part}/{name}"] = "record"
                sizes.update(
                    {d: s for d, s in zip(dims, array.shape, strict=True) if isinstance(d, str)}
                )
                continue
            if (part, name) in ENCODED | NOT_SHOWN:
                continue
            table = table_name(dims)
            values = np.asarray(array)
            if values.dtype.kind in "bf":  # the page computes in float32 anyway
                values = values.astype(np.float32)
            tables.setdefault(table, {})[f"{part}/{name}"] = values.reshape(-1)
            where[f"{part}/{name}"] = table
            sizes.update(
                {d: s for d, s in zip(dims, values.shape, strict=True) if isinstance(d, str)}
            )

    # --- the images entity ------------------------------------------------------------------
    images = bundle["images"]
    classifier = bool(len(class_names))
    if classifier:
        labels = images["labels"].astype(np.int64)
        predictions = images["predictions"].astype(np.int64)
        for name, values in (("labels", labels), ("predictions", predictions)):
            bad = (values < 0) | (values >= len(class_names))
            if bad.any():
                raise BundleError(
                    f"images/{name} has class {int(values[bad][0])} at image "
                    f"{int(np.argmax(bad))}, outside 0..{len(class_names) - 1}"
                )
        probs = images["probs"].astype(np.float32)
        p_y = probs[np.arange(n_img), labels]
        pred_prob = probs[np.arange(n_img), predictions]
        palette = class_palette(len(class_names))
        label_text = [class_names[c] for c in labels]
        predicted_text = [class_names[c] for c in predictions]
        colors = [palette[c] for c in labels]
        # Confident images solid, doubtful ones faint: the probability shows at a glance.
        alpha = (0.25 + 0.75 * np.clip(p_y, 0, 1)).astype(np.float32)
    else:  # a backbone without a classifier: no classes, labels nor probabilities
        p_y = pred_prob = np.full(n_img, np.nan, np.float32)
        label_text = predicted_text = [""] * n_img
        colors = [NO_CLASS_COLOR] * n_img
        alpha = np.full(n_img, 0.8, np.float32)
    attention_row = np.full(n_img, -1, np.int32)
    attention_row[attention_index] = np.arange(len(attention_index), dtype=np.int32)
    partial_row = np.full(n_img, -1, np.int32)
    partial_row[partial_index] = np.arange(len(partial_index), dtype=np.int32)
    overview = images["overview"].astype(np.float32)
    some = 0 < len(attention_index) < n_img
    base_outline = np.where((attention_row >= 0) & some, 1.5, 0.0).astype(np.float32)
    thumbs = pack_thumbnails(images["thumbnails"], thumbnail_size)
    tables["thumbnails"] = {"rgba": thumbs.reshape(-1)}
    tables["images"].update(
        {
            "index": np.arange(n_img, dtype=np.int32),
            "id": [str(i) for i in meta["image_ids"]],
            "label": label_text,
            "predicted": predicted_text,
            "prob": p_y,
            "pred_prob": pred_prob,
            "x": overview[:, 0],
            "y": overview[:, 1],
            "color": colors,
            "alpha": alpha,
            "attention_row": attention_row,
            "partial_row": partial_row,
            # When only some images have stored attention, they get an outline, so readers can
            # find them (search outlines its matches, then restores this).
            "base_outline": base_outline,
            "outline": base_outline,
            "stored": [
                ", ".join(n for n, row in (("attention", a), ("partial pruning", s)) if row >= 0)
                or "-"
                for a, s in zip(attention_row, partial_row, strict=True)
            ],
        }
    )

    # --- the heads entity: identity and the columns the page rewrites ------------------------
    layer = np.repeat(np.arange(L, dtype=np.int32), H)
    head = np.tile(np.arange(H, dtype=np.int32), L)
    lpal = layer_palette(L)
    tables["heads"].update(
        {
            "index": np.arange(LH, dtype=np.int32),
            "layer": layer,
            "head": head,
            "name": [head_label(a, b) for a, b in zip(layer, head, strict=True)],
            "layer_color": [lpal[a] for a in layer],
            # Heads of a layer side by side around x = layer in the entropy plot.
            "entropy_x": (layer + (head - (H - 1) / 2) * (0.6 / max(H, 1))).astype(np.float32),
            # Display columns, rewritten by the page's code when it first runs.
            "value": np.zeros(LH, np.float32),
            "entropy": np.zeros(LH, np.float32),
            "pos_x": np.zeros(LH, np.float32),
            "pos_y": np.zeros(LH, np.float32),
            "value_text": [""] * LH,
            "text_color": ["#000000"] * LH,
            "metric": [""] * LH,
        }
    )

    # --- re-encoded arrays: pattern images, D1's sample of images -----------------------------
    patterns = bundle.parts.get("patterns", {})
    kinds = [k for k in PATTERN_KINDS if f"{k}_positions" in patterns]
    sample = embedding_sample(n_img)
    tables["embedding"] = {
        kind: np.asarray(patterns[f"{kind}_positions"][sample], np.float32).reshape(-1)
        for kind in kinds
    }
    density: dict[str, list] = {"kind": [], "image": [], "x": [], "y": [], "dw": [], "dh": []}
    reps: dict[str, list] = {
        "kind": [], "cluster": [], "image": [], "x": [], "y": [], "dw": [], "dh": [], "count": [],
        "label_x": [], "label_y": [],
    }  # fmt: skip
    extents, strips = {}, {}
    for kind in kinds:
        x0, x1, y0, y1 = (float(v) for v in patterns[f"{kind}_extent"])
        extents[kind] = [x0, x1, y0, y1]
        density["kind"].append(kind)
        density["image"].append(patterns[f"{kind}_density"].astype(np.float32))
        density["x"].append(x0)
        density["y"].append(y0)
        density["dw"].append(x1 - x0)
        density["dh"].append(y1 - y0)
        sizes_k = patterns[f"{kind}_cluster_sizes"]
        for c, rep in enumerate(patterns[f"{kind}_representatives"].astype(np.float64)):
            lo, hi = np.nanmin(rep), np.nanmax(rep)
            # Each representative scaled to [0, 1]: the shape of the pattern matters, not its scale.
            img = (rep - lo) / (hi - lo) if hi > lo else np.zeros_like(rep)
            h, w = rep.shape
            reps["kind"].append(kind)
            reps["cluster"].append(c)
            reps["image"].append(img.astype(np.float32))
            # Rows of a few, each with room under it for the captions (cluster and size).
            row, col = divmod(c, REPRESENTATIVES_PER_ROW)
            x0, y0 = col * (w + 1.0), -row * (1.0 + CAPTION_ROOM) * h
            reps["x"].append(x0)
            reps["y"].append(y0)
            reps["dw"].append(float(w))
            reps["dh"].append(float(h))
            reps["count"].append(int(sizes_k[c]))
            reps["label_x"].append(x0 + w / 2)
            reps["label_y"].append(y0 - 0.05 * h)
        # The strip's extent: every representative with its caption, and a margin.
        mine = [j for j, k in enumerate(reps["kind"]) if k == kind]
        tallest = max(reps["dh"][j] for j in mine)
        strips[kind] = [
            -0.6,
            max(reps["x"][j] + reps["dw"][j] for j in mine) + 0.6,
            min(reps["y"][j] for j in mine) - CAPTION_ROOM * tallest,
            tallest + 0.6,
        ]
    tables["density"] = density
    tables["representatives"] = reps

    gh = config["image_size"][0] // config["patch_size"][0]
    gw = config["image_size"][1] // config["patch_size"][1]
    K = sizes["K"]
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
        "value_bins": VALUE_BINS,
        "has_cls": has_cls,
        "class_names": class_names,
        # Images per label: the overview's legend lists the most common classes of many.
        "class_counts": (
            bundle["importance"]["class_counts"].astype(int).tolist() if classifier else []
        ),
        # Which metrics the model has (a backbone: layer and repr), and its special tokens.
        "has_classifier": classifier,
        "metrics": list(bundle.metrics),
        # The run's ablation kinds (its first made the metrics above), and the importance
        # arrays the bundle holds: B's menu lists each kind's metrics and the direct
        # attribution where they are there (importance_menu).
        "ablations": run_ablations(bundle),
        "importance_arrays": sorted(
            n for n in bundle["importance"] if n in METRIC_INFO or n == DIRECT
        ),
        # (a bundle from before their names has at most CLS)
        "special_tokens": [str(t) for t in meta.get("special_tokens") or (["cls"] * has_cls)],
        "has_special": "special_to" in bundle.parts.get("strength", {}),
        "pruning_modes": modes,
        "metric_info": METRIC_INFO,
        "kinds": kinds,
        "extents": extents,
        # Each kind's strip of cluster representatives [x0, x1, y0, y1], captions included.
        "strips": strips,
        "has_partial": "partial" in bundle.parts,
        # D's rollout map and per-layer contributions; hidden for bundles without the part.
        "has_rollout": "rollout" in bundle.parts,
        # B4's note: how the Shapley stage ran, v(all) and the permutations it sampled (None
        # for a bundle without the part).
        "shapley": shapley_facts(bundle),
        # B5's note: the patching stage's pairs, how many are scored and the least gap.
        "patching": patching_facts(bundle),
        # View F: the explanations stage's images, methods, modes and how it ran (None for a
        # bundle without the part).
        "explanations": explained,
        # Top-k kept after partial pruning: 5, or the class count when smaller.
        "top_k": (
            int(bundle["partial"]["top5_classes"].shape[-1])
            if "partial" in bundle.parts
            else min(5, len(class_names))
        ),
        "num_partial": int(len(partial_index)),
        "num_attention": int(len(attention_index)),
        # How the records' attention is coded (attention_codes.py); the page decodes by it, and
        # names the weights its relative error is measured over (RELATIVE_FLOOR / N and up).
        "attention_code": bundle.attention_code,
        "relative_floor": RELATIVE_FLOOR,
        # D1's sample of images, whose positions the embedding table holds.
        "embedding_images": sample.tolist(),
        "records": {"arrays": record_layout(bundle), "inline": True, "folder": ""},
        "max_entropy": math.log(K) if K > 1 else 1.0,
        "labels_are_predictions": bool(meta.get("labels_are_predictions", False)),
        "name_chars": NAME_CHARS,
        "id_chars": ID_CHARS,
        "checkpoint": meta.get("checkpoint", {}),
        "registry": registry_json(),
        "sizes": {str(d): int(s) for d, s in sizes.items()},
        "tables": where,
    }
    return SiteData(
        info=info,
        tables=tables,
        bundle=bundle,
        record_keys=sorted(in_records),
        partial_row=partial_row,
        attention_row=attention_row,
    )


def shapley_facts(bundle: ResultsBundle) -> dict[str, Any] | None:
    """What the bundle says of its Shapley stage (its meta, ``v_all`` and the permutations
    sampled), or None without the ``shapley`` part."""
    part = bundle.parts.get("shapley")
    if part is None:
        return None
    return {
        **(bundle.meta.get("shapley") or {}),
        "images": int(len(part["image_index"])),
        "v_all": float(part["v_all"]),
        "permutations": int(part["permutations"]),
    }


def patching_facts(bundle: ResultsBundle) -> dict[str, Any] | None:
    """What the bundle says of its patching stage (its meta, the pairs and how many are
    scored), or None without the ``patching`` part."""
    part = bundle.parts.get("patching")
    if part is None:
        return None
    return {
        **(bundle.meta.get("patching") or {}),
        "pairs": int(len(part["pairs"])),
        "scored": int(np.count_nonzero(part["defined"])),
    }


def explanation_facts(bundle: ResultsBundle) -> dict[str, Any] | None:
    """What view F needs of the explanations stage: its images (``image_index``) and the labels
    their maps explain, the names of its methods and modes and its meta, or None without the
    ``explanations`` part. Raises :class:`BundleError` where the part and its meta disagree."""
    part = bundle.parts.get("explanations")
    if part is None:
        return None
    meta = dict(bundle.meta.get("explanations") or {})
    index = np.asarray(part["image_index"], np.int64)
    n_img = len(bundle["images"]["labels"])
    if ((index < 0) | (index >= n_img)).any():
        raise BundleError(f"explanations/image_index refers to images outside 0..{n_img - 1}")
    names = {"methods": part["maps"].shape[1], "modes": part["curves"].shape[2]}
    for key, count in names.items():
        listed = meta.get(key)
        if not isinstance(listed, list) or len(listed) != count:
            raise BundleError(
                f"the bundle's meta 'explanations' must list {count} {key} (the explanations "
                f"part has {count}), and it has {listed!r}"
            )
    return {
        **meta,
        "methods": [str(m) for m in meta["methods"]],
        "modes": [str(m) for m in meta["modes"]],
        "image_index": index.tolist(),
        "labels": np.asarray(part["labels"], np.int64).tolist(),
    }


def embedding_sample(num_images: int) -> np.ndarray:
    """The images D1 draws as points for the chosen head: all of them up to
    :data:`EMBEDDING_POINTS`, else that many chosen with a fixed seed (the density shows all)."""
    if num_images <= EMBEDDING_POINTS:
        return np.arange(num_images)
    return np.sort(np.random.default_rng(0).choice(num_images, EMBEDDING_POINTS, replace=False))


def make_sources(data: SiteData) -> dict[str, Any]:
    """One named ``ColumnDataSource`` per table (name = table name, e.g. ``"heads"``)."""
    from bokeh.models import ColumnDataSource

    return {
        name: ColumnDataSource(data=dict(cols), name=name) for name, cols in data.tables.items()
    }
