"""The state the page opens in, computed here so the page draws once and runs no code to open.

The opening state is the global view (no image chosen) of the most important head under the
default metric. It mirrors what the page's ``update`` callback computes for that state (texts
from the same templates, numbers formatted the same way); a browser test checks that the page,
sent back to the global view, shows exactly this.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
from bokeh.palettes import Viridis256

from jaxvit_interp.site.callbacks import KIND_NAMES, TEXTS
from jaxvit_interp.site.sources import METRIC_INFO, SiteData


def fill(name: str, **values: Any) -> str:
    """Fill template ``name`` of :data:`TEXTS` (``{key}`` placeholders, as the page does)."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), TEXTS[name])


def _js_exponent(text: str) -> str:
    # JavaScript writes exponents without padding: 1.2e-3, where Python writes 1.2e-03.
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", text)


def sig(v: float) -> str:
    """Three significant figures, as the page's ``sig`` (``toPrecision(3)``, else
    ``toExponential(1)`` below 0.01 and from 1000)."""
    if not math.isfinite(v):
        return "n/a"
    if v != 0 and (abs(v) >= 1000 or abs(v) < 0.01):
        return _js_exponent(f"{v:.1e}")
    return _js_exponent(f"{v:#.3g}".rstrip("."))


def fixed(v: float, digits: int) -> str:
    """As the page's ``fmt`` (``toFixed``)."""
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def initial_state(
    data: SiteData, *, metric: str, kind: str | None, head: int, mode: int
) -> dict[str, Any]:
    """Display data of the opening state.

    Returns:
      ``{"sources": {name: columns}, "props": {name: {attribute: value}}, "state": columns}``:
      new columns for the named display (or shared) sources, property values of named models,
      and the ``state`` source's row.
    """
    info, tables = data.info, data.tables
    L, H, K = info["num_layers"], info["num_heads"], info["num_hops"]
    LH = L * H
    heads = tables["heads"]
    names = heads["name"]
    head_name = names[head]
    scope = TEXTS["scope_global"]
    sources: dict[str, dict[str, Any]] = {}
    props: dict[str, dict[str, Any]] = {}

    # heads and B1
    value = np.asarray(heads[f"global_{metric}"], np.float64)
    finite = value[np.isfinite(value)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if not hi > lo:
        pad = 0.5 * (abs(lo) or 1.0)
        lo, hi = lo - pad, hi + pad
    important_high = METRIC_INFO[metric]["important_high"]
    t = (value - lo) / (hi - lo)
    dark = t > 0.55 if important_high else t < 0.45
    kind_cols = {
        "pos_x": heads[f"global_{kind}_x"] if kind else np.zeros(LH, np.float32),
        "pos_y": heads[f"global_{kind}_y"] if kind else np.zeros(LH, np.float32),
    }
    sources["heads"] = {
        "value": heads[f"global_{metric}"],
        "entropy": heads["global_head_entropy"],
        **kind_cols,
        "text_color": ["#ffffff" if d else "#000000" for d in dark],
        "value_text": [sig(float(v)) for v in value],
        "metric": [metric] * LH,
    }
    props["value_mapper"] = {
        "low": lo,
        "high": hi,
        "palette": list(Viridis256)[::-1] if important_high else list(Viridis256),
    }
    props["value_colorbar"] = {"title": metric}
    props["importance_title"] = {"text": fill("importance_title", metric=metric, scope=scope)}
    props["image_info"] = {"text": fill("image_info_global", n=info["num_images"])}

    # B2, B3
    modes = info["pruning_modes"]
    if info["has_partial"]:
        p = np.asarray(tables["partial"]["prob"], np.float64).reshape(-1, LH, len(modes))[:, head]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            probs = np.nanmean(p, axis=0) if len(p) else np.full(len(modes), np.nan)
        note = fill("partial_global", n=info["num_partial"])
        labels = [fixed(float(v), 3) for v in probs]
    else:
        probs = np.full(len(modes), np.nan)
        note = TEXTS["partial_none"]
        labels = [""] * len(modes)
    sources["partial_bars"] = {
        "mode": list(modes),
        "prob": np.nan_to_num(probs, nan=0.0),
        "label": labels,
        "head": [head_name] * len(modes),
    }
    props["partial_note"] = {"text": note}
    props["partial_title"] = {"text": fill("partial_title", head=head_name)}
    sources["top5_view"] = {"rank": [], "prob": [], "text": [], "y": [], "head": []}
    props["top5_title"] = {"text": TEXTS["top5_global"]}

    # C
    hop_rows = slice(head * K, (head + 1) * K)
    sources["hop_bars"] = {
        "hop": list(range(K)),
        "strength": tables["head_hops"]["strength"][hop_rows],
        "mass": tables["head_hops"]["mass"][hop_rows],
        "head": [head_name] * K,
    }
    props["hop_title"] = {"text": fill("hop_title", head=head_name)}
    props["entropy_title"] = {"text": fill("entropy_title", scope=scope)}
    bins = info["entropy_bins"]
    width = info["max_entropy"] * 1.0001 / bins
    entropy = np.asarray(tables["image_heads"]["head_entropy"], np.float64).reshape(-1, LH)[:, head]
    entropy = entropy[np.isfinite(entropy)]
    count = np.bincount(np.clip(np.floor(entropy / width), 0, bins - 1).astype(int), minlength=bins)
    sources["entropy_hist"] = {
        "left": np.arange(bins) * width,
        "right": (np.arange(bins) + 1) * width,
        "count": count,
        "head": [head_name] * bins,
    }
    props["entropy_hist_title"] = {"text": fill("entropy_hist_title", head=head_name)}
    props["entropy_span"] = {"visible": False}

    # D1
    if kind:
        density = tables["density"]
        r = density["kind"].index(kind)
        sources["density_view"] = {c: [density[c][r]] for c in ("image", "x", "y", "dw", "dh")}
        e = info["extents"][kind]
        props["embedding_x_range"] = {"start": e[0], "end": e[1]}
        props["embedding_y_range"] = {"start": e[2], "end": e[3]}
        ih = tables["image_heads"]
        images = tables["images"]
        sources["head_images"] = {
            "x": np.asarray(ih[f"{kind}_x"]).reshape(-1, LH)[:, head],
            "y": np.asarray(ih[f"{kind}_y"]).reshape(-1, LH)[:, head],
            "size": [5] * info["num_images"],
            "color": images["color"],
            "id": images["id"],
            "label": images["label"],
        }
        props["embedding_title"] = {
            "text": fill("embedding_title", kind=KIND_NAMES[kind], scope=scope, head=head_name)
        }
        reps = tables["representatives"]
        rows = [j for j, k in enumerate(reps["kind"]) if k == kind]
        col = {c: [reps[c][j] for j in rows] for c in reps}
        cluster = int(heads[f"global_{kind}_cluster"][head])
        sources["reps_view"] = {
            "image": col["image"],
            "x": col["x"],
            "y": col["y"],
            "dw": col["dw"],
            "dh": col["dh"],
            "cluster": col["cluster"],
            "members": col["count"],
            "count": [f"#{c}: {n}" for c, n in zip(col["cluster"], col["count"], strict=True)],
            "label_x": [x + w / 2 for x, w in zip(col["x"], col["dw"], strict=True)],
        }
        at = col["cluster"].index(cluster) if cluster in col["cluster"] else -1
        sources["reps_highlight"] = (
            {"x": [], "y": [], "w": [], "h": []}
            if at < 0
            else {
                "x": [col["x"][at] + col["dw"][at] / 2],
                "y": [col["dh"][at] / 2],
                "w": [col["dw"][at] + 0.7],
                "h": [col["dh"][at] + 0.7],
            }
        )
        props["reps_title"] = {"text": fill("reps_title", head=head_name, cluster=cluster)}
        if rows:
            h0 = max(col["dh"])
            props["reps_x_range"] = {"start": -0.6, "end": col["x"][-1] + col["dw"][-1] + 0.6}
            props["reps_y_range"] = {"start": -max(1.2, 0.35 * h0), "end": h0 + 0.6}

    # D2, D3, D5 (no image chosen yet)
    gh, gw = info["grid"]
    first = 1 if info["has_cls"] else 0
    query = info["default_query"]
    empty = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
    sources["thumb"] = dict(empty)
    sources["matrix_view"] = {**empty, "head": []}
    sources["value_hist"] = {"left": [], "right": [], "count": [], "head": []}
    if query >= first:
        row, column = divmod(query - first, gw)
        sources["query_marker"] = {"x": [column + 0.5], "y": [gh - row - 0.5]}
    else:
        sources["query_marker"] = {"x": [], "y": []}
    sources["patches"] = {
        "heat": [0.0] * (gh * gw),
        "alpha": [0.0] * (gh * gw),
        "head": [head_name] * (gh * gw),
    }
    props["image_title"] = {"text": TEXTS["image_title_global"]}
    props["matrix_title"] = {"text": TEXTS["matrix_title_none"]}
    props["query_band"] = {"visible": False}
    props["attention_note"] = {
        "text": fill("attention_global", n=info["num_attention"])
        if info["num_attention"]
        else TEXTS["attention_none"]
    }

    state = {
        "image": [-1],
        "head": [head],
        "mode": [mode],
        "query": [query],
        "metric": [metric],
        "kind": [kind or ""],
    }
    return {"sources": sources, "props": props, "state": state}
