"""View E, heads together and per class.

- E1: the pairwise interactions of the most important heads (``head_sets`` part):
  ``d(i and j) - d(i) - d(j)`` averaged over the stage's images, for ``prob_drop`` (or ``kl``
  when that is the chosen metric); blue = redundant (removing both hurts less than the sum), red
  = cooperative. Clicking a cell chooses its pair: the row's head becomes the chosen head and B1
  outlines both.
- E2, E3: the pruning curves, accuracy and mean ``p(label)`` as heads are removed one after
  another in importance order (least important first), greedily and in random orders (thin
  lines); the caption gives how many heads can go before accuracy falls 1 and 5 points.
- E4: the class x head map: per class, each head's mean importance over the class's images minus
  its mean over all images (the bundle's ``{metric}_class_specificity``, from
  :func:`~jaxvit_interp.importance.aggregate.class_specificity`, signed so that red = more
  important for the class), the class's most specific heads (``{metric}_class_top``) dotted;
  under the chosen metric, or the one it maps to (``Metric.class_map``: ``prob_drop`` for
  ``prob``, whose class means show how sure the model is of each class, the same on every head).
  Clicking a cell chooses the class and the head: B1 then shows the class's mean and A outlines
  its images. With many classes the map shows the :data:`CLASS_MAP_ROWS` most frequent.

A bundle without the ``head_sets`` part (from before it, or analysed with ``set_images = 0``)
shows E4 only; a backbone without a classifier has neither, and no view E.
"""

from __future__ import annotations

import numpy as np
from bokeh.layouts import column
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    HoverTool,
    LegendItem,
    LinearColorMapper,
    Range1d,
    TapTool,
)
from bokeh.palettes import RdBu11

from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.importance.pruning import CURVE_ORDERS
from jaxvit_interp.quantities import CLASS_TOP_HEADS
from jaxvit_interp.site.sources import METRIC_INFO, head_label, importance_menu, short_name
from jaxvit_interp.site.views.common import (
    Context,
    outside_legend,
    panel,
    plot,
    text_box,
    wrap,
)

# Most classes the class x head map shows (the most frequent ones among many).
CLASS_MAP_ROWS = 40
# Pixels a row of the class map takes (its class name is 10 px text), and the least width of its
# cells (its title names the metric and the chosen class).
CLASS_MAP_ROW_PX = 14
CLASS_MAP_MIN_PX = 440
# Pixels a side of a cell of the interaction matrix (its heads are named on both axes).
INTERACTION_CELL_PX = 22
# Low to high: blue (negative: redundant, or less important for the class) to red (positive).
DIVERGING = list(RdBu11)
ORDER_COLORS = {"importance": "#1f77b4", "greedy": "#2ca02c", "random": "#999999"}


def class_rows(class_counts: np.ndarray) -> np.ndarray:
    """The classes the map shows, in class order: every class with images, or the
    :data:`CLASS_MAP_ROWS` with the most images."""
    counts = np.asarray(class_counts)
    present = np.flatnonzero(counts > 0)
    if len(present) > CLASS_MAP_ROWS:
        present = np.sort(np.argsort(-counts, kind="stable")[:CLASS_MAP_ROWS])
    return present


def class_map_metrics(metrics: list[str]) -> list[str]:
    """The metrics the class map shows for the menu's ``metrics`` (each one's ``class_map``)."""
    return list(dict.fromkeys(METRIC_INFO[m]["class_map"] for m in metrics))


def class_map_tables(bundle: ResultsBundle, metrics: list[str]) -> dict[str, dict]:
    """The class map's cells and dots, looked up in the bundle's importance part (each class's
    mean, specificity and most specific heads, computed by
    :func:`~jaxvit_interp.importance.aggregate.importance_summary`): ``cells`` one row per
    (shown class, head) with ``mean_{metric}`` for each of ``metrics`` (the class mean B1 shows)
    and ``spec_{metric}`` (the signed difference) for each metric the map shows for them
    (:func:`class_map_metrics`); ``top`` per metric shown the cells of each class's most
    specific heads."""
    part = bundle["importance"]
    L, H = bundle.dims()["L"], bundle.dims()["H"]
    LH = L * H
    shown = class_rows(part["class_counts"])
    names = [str(n) for n in bundle.meta["class_names"]]
    cells = {
        "x": np.tile(np.arange(LH), len(shown)).astype(np.float32),
        "y": np.repeat(np.arange(len(shown)), LH).astype(np.float32),
        "class_index": np.repeat(shown, LH).astype(np.int32),
        "class_name": [names[c] for c in shown for _ in range(LH)],
        "head": np.tile(np.arange(LH), len(shown)).astype(np.int32),
        "head_name": [head_label(k // H, k % H) for _ in shown for k in range(LH)],
        "count": np.repeat(np.asarray(part["class_counts"])[shown], LH).astype(np.int32),
        "value": np.zeros(len(shown) * LH, np.float32),
    }
    top: dict[str, list] = {}
    for m in metrics:
        cells[f"mean_{m}"] = np.asarray(part[f"{m}_class_mean"])[shown].reshape(-1)
    for m in class_map_metrics(metrics):
        cells[f"spec_{m}"] = np.asarray(part[f"{m}_class_specificity"])[shown].reshape(-1)
        heads = np.asarray(part[f"{m}_class_top"])[shown]  # [shown class, most specific, 2]
        top[f"{m}_x"] = (heads[..., 0] * H + heads[..., 1]).reshape(-1).astype(float).tolist()
        top[f"{m}_y"] = np.repeat(np.arange(len(shown)), heads.shape[1]).astype(float).tolist()
    return {"cells": cells, "top": top, "shown": shown}


def _class_map(ctx: Context, bundle: ResultsBundle):
    info = ctx.info
    L, H = info["num_layers"], info["num_heads"]
    LH = L * H
    metrics = importance_menu(info, ctx.options.get("metrics") or list(info["metrics"]))
    tables = class_map_tables(bundle, metrics)
    shown = tables["shown"]
    cells = ctx.add("class_cells", ColumnDataSource(data=tables["cells"]))
    ctx.add("class_top_all", ColumnDataSource(data=tables["top"]))
    dots = ctx.add("class_top", ColumnDataSource(data={"x": [], "y": []}))
    mapper = ctx.add("class_mapper", LinearColorMapper(palette=DIVERGING, low=-1, high=1))
    cell = max(4, min(14, 720 // max(LH, 1)))
    rows = len(shown)
    p = plot(
        "",
        None,
        None,
        name="class_map_plot",
        frame_width=max(CLASS_MAP_MIN_PX, cell * LH),
        frame_height=CLASS_MAP_ROW_PX * max(rows, 4),
        x_range=Range1d(-0.5, LH - 0.5),
        y_range=Range1d(rows - 0.5, -0.5),
    )
    ctx.add("class_map_title", p.title)
    p.xaxis.axis_label = "head (layer-major)"
    p.xaxis.ticker = [k * H for k in range(L)]
    p.xaxis.major_label_overrides = {k * H: f"L{k}" for k in range(L)}
    p.yaxis.ticker = list(range(rows))
    # Canvas text: class names are never HTML.
    p.yaxis.major_label_overrides = {
        r: short_name(info["class_names"][c]) for r, c in enumerate(shown)
    }
    p.grid.visible = False
    r = p.rect(
        "x", "y", 1, 1, source=cells, name="class_map_cells",
        fill_color={"field": "value", "transform": mapper}, line_color=None,
    )  # fmt: skip
    r.selection_glyph = r.glyph.clone(line_color="#222222", line_width=2)
    r.nonselection_glyph = r.glyph.clone()
    p.scatter("x", "y", source=dots, size=4, fill_color="#222222", line_color=None)
    p.add_tools(TapTool(renderers=[r], mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=[r],
            tooltips=[
                ("class", "@class_name (@count images)"),
                ("head", "@head_name"),
                ("class mean - mean over images", "@value{0.0000}"),
            ],
        )
    )
    bar = ColorBar(color_mapper=mapper, width=10, major_label_text_font_size="9px")
    p.add_layout(bar, "right")
    many = len(info["class_names"]) > len(shown)
    note = (
        f"Rows: the {len(shown)} most frequent of {len(info['class_names'])} classes. "
        if many
        else ""
    ) + (
        "Red: the head matters more for the class than over all images; dots: each class's "
        f"{CLASS_TOP_HEADS} most specific heads. Under prob the map shows prob_drop: a class's "
        "mean p'_y is mostly how sure the model is of the class, the same on every head. Click a "
        "cell to choose its class and head (B shows the class's mean; A outlines its images); "
        "click outside to leave the class."
    )
    return column(p, text_box(ctx, "class_map_note", note, width=CLASS_MAP_MIN_PX + 150))


def _interactions(ctx: Context, part, head_names: list[str], H: int):
    heads = np.asarray(part["interaction_heads"])
    k = len(heads)
    flat = heads[:, 0] * H + heads[:, 1]
    i, j = np.divmod(np.arange(k * k), k)
    data = {
        "x": j.astype(np.float32),
        "y": i.astype(np.float32),
        "head_i": flat[i].astype(np.int32),
        "head_j": flat[j].astype(np.int32),
        "name_i": [head_names[a] for a in flat[i]],
        "name_j": [head_names[b] for b in flat[j]],
        "prob_drop": np.asarray(part["interaction_prob_drop"], np.float32).reshape(-1),
        "kl": np.asarray(part["interaction_kl"], np.float32).reshape(-1),
        "value": np.asarray(part["interaction_prob_drop"], np.float32).reshape(-1),
    }
    cells = ctx.add("interaction_cells", ColumnDataSource(data=data))
    mapper = ctx.add("interaction_mapper", LinearColorMapper(palette=DIVERGING, low=-1, high=1))
    side = INTERACTION_CELL_PX * max(k, 8)
    p = plot(
        "",
        None,
        None,
        name="interaction_plot",
        frame_width=side,
        frame_height=side,
        x_range=Range1d(-0.5, k - 0.5),
        y_range=Range1d(k - 0.5, -0.5),
    )
    ctx.add("interaction_title", p.title)
    names = {n: head_label(a, b) for n, (a, b) in enumerate(heads.tolist())}
    for axis in (p.xaxis, p.yaxis):
        axis.ticker = list(range(k))
        axis.major_label_overrides = names
    p.xaxis.major_label_orientation = 0.8
    p.xaxis.axis_label = "head j"
    p.yaxis.axis_label = "head i (most important first)"
    p.grid.visible = False
    r = p.rect(
        "x", "y", 0.95, 0.95, source=cells, name="interaction_rects",
        fill_color={"field": "value", "transform": mapper}, line_color=None,
    )  # fmt: skip
    r.selection_glyph = r.glyph.clone(line_color="#d62728", line_width=3)
    r.nonselection_glyph = r.glyph.clone()
    p.add_tools(TapTool(renderers=[r], mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=[r],
            tooltips=[
                ("pair", "@name_i + @name_j"),
                ("interaction (prob_drop)", "@prob_drop{0.0000}"),
                ("interaction (kl)", "@kl{0.0000}"),
            ],
        )
    )
    p.add_layout(ColorBar(color_mapper=mapper, width=10, major_label_text_font_size="9px"), "right")
    return p


def pruning_curve_figures(ctx: Context, part, meta: dict):
    """View E's pruning curves (accuracy and mean p(label) as heads are removed) and their
    caption of removable heads; also shown on their own in a notebook (:mod:`jaxvit_interp.notebook`)."""
    orders = np.asarray(part["curve_order"])
    acc = np.asarray(part["curve_accuracy"], np.float64)
    prob = np.asarray(part["curve_mean_prob"], np.float64)
    steps = np.arange(acc.shape[1], dtype=np.float64)
    names = [CURVE_ORDERS[o] for o in orders]
    data = {
        "xs": [steps] * len(names),
        "accuracy": list(acc),
        "mean_prob": list(prob),
        "order": names,
        "color": [ORDER_COLORS[n] for n in names],
        "width": [1.0 if n == "random" else 2.5 for n in names],
        "alpha": [0.7 if n == "random" else 1.0 for n in names],
        "area": [float(a) for a in part["curve_area"]],
    }
    source = ctx.add("curves", ColumnDataSource(data=data))
    figures = []
    for field, values, label, name in (
        ("accuracy", acc, "accuracy", "curves_accuracy_plot"),
        ("mean_prob", prob, "mean p(label)", "curves_prob_plot"),
    ):
        # From 0 to the curves' top: a model that is never sure keeps its curves readable.
        top = float(np.nanmax(values, initial=0.0))
        p = plot(
            f"{label} as heads are removed",
            330,
            300,
            name=name,
            x_range=Range1d(0, steps[-1]),
            y_range=Range1d(0, 1.05 * top if top > 0 else 1.0),
        )
        p.xaxis.axis_label = "heads removed"
        p.yaxis.axis_label = label
        r = p.multi_line(
            "xs", field, source=source, line_color="color", line_width="width",
            line_alpha="alpha",
        )  # fmt: skip
        items = [
            LegendItem(label=order, renderers=[r], index=names.index(order))
            for order in dict.fromkeys(names)
        ]
        outside_legend(p, items, orientation="horizontal", spacing=12)
        p.add_tools(
            HoverTool(renderers=[r], tooltips=[("order", "@order"), ("mean accuracy", "@area")])
        )
        figures.append(p)
    points = [float(q) for q in part["removable_points"]]
    removable = np.asarray(part["curve_removable"])

    def counts(name: str) -> str:
        rows = removable[orders == CURVE_ORDERS.index(name)]
        per_point = [", ".join(str(int(v)) for v in rows[:, q]) for q in range(len(points))]
        return " / ".join(per_point)

    present = [o for o in CURVE_ORDERS if (orders == CURVE_ORDERS.index(o)).any()]
    caption = (
        f"Heads that can go before accuracy falls {points[0]:g} / {points[-1]:g} points below "
        f"the unpruned model's ({meta.get('images', '?')} images): "
        + "; ".join(f"{o} order{'s' if o == 'random' else ''} {counts(o)}" for o in present)
        + f". {str(meta.get('greedy_note', '')).capitalize()}."
    )
    return figures, caption


def build(ctx: Context, bundle: ResultsBundle):
    info = ctx.info
    H = info["num_heads"]
    head_names = list(ctx.sources["heads"].data["name"])
    children = []
    part = bundle.parts.get("head_sets")
    if part is not None:
        meta = bundle.meta.get("head_sets") or {}
        plots = []
        if "interaction_heads" in part:
            plots.append(_interactions(ctx, part, head_names, H))
        figures, caption = pruning_curve_figures(ctx, part, meta)
        plots.extend(figures)
        inter_note = (
            f"Interactions of the {len(part.get('interaction_heads', []))} heads with the "
            f"highest mean {meta.get('ranking_metric', 'prob_drop')}, averaged over "
            f"{meta.get('images', '?')} images: d(i and j) - d(i) - d(j). Blue: redundant "
            "(removing both hurts less than the sum), red: cooperative. Click a cell to choose "
            "the pair (the row's head becomes the chosen head; B outlines both)."
            if "interaction_heads" in part
            else ""
        )
        children += [
            wrap(*plots),
            text_box(ctx, "interaction_note", inter_note, width=900),
            text_box(ctx, "curves_caption", caption, width=900),
        ]
    if info["has_classifier"]:  # a backbone without a classifier has no classes
        children.append(_class_map(ctx, bundle))
    if not children:
        return None
    return panel("E", "Heads Together and per Class", "view_E", children)
