"""View F, explanations (the bundle's ``explanations`` part), shown only when it is there.

- F1: the chosen image's explanation maps, one small panel per method, each over the image's
  pixels as a translucent heat overlay (D4's overlay style, each map scaled to its own range),
  when the image is one of the explained ones.
- F2: its deletion and insertion curves (:func:`jaxvit_interp.explain.faithfulness`), one line
  per method and the random patch order dashed; the mean curves over the explained images when
  no explained image is chosen, with a note naming them.
- F3: a table of each method's deletion and insertion area over all explained images (mean and
  standard deviation) and the random order's.
- F4: every head, its importance (B1's value under the chosen metric, kind and scope) against
  how faithful its attention map is (the part's ``head_area_mean``), one panel per mode, with
  the random order's mean area as a reference line. The points are drawn from the shared
  ``heads`` source, so the chosen head is outlined here as in every view and clicking a point
  chooses its head.

The means and standard deviations over the explained images are reductions of the part's
stored curves and areas, made here at build time; everything else is looked up by the page
(``js/update.js``: ``drawExplanations``).
"""

from __future__ import annotations

import html

import numpy as np
from bokeh.models import (
    ColumnDataSource,
    Div,
    HoverTool,
    LegendItem,
    LinearColorMapper,
    Range1d,
    Row,
    Span,
    TapTool,
)
from bokeh.palettes import Category10

from jaxvit_interp.site.sources import short_name
from jaxvit_interp.site.views.common import (
    FONT,
    Context,
    head_points,
    outside_legend,
    padded,
    panel,
    patch_cells,
    plot,
    text_box,
    wrap,
)
from jaxvit_interp.site.views.pattern import HEAT_PALETTE

# A map panel's frame, in pixels a side at most (the grid's longer side).
MAP_PX = 120
RANDOM_COLOR = "#555555"
HEAD_COLOR = "#8c564b"
# What a small area means in each mode (Petsiuk et al. 2018).
FAITHFUL = {"deletion": "lower: more faithful", "insertion": "higher: more faithful"}


def has_explanations(ctx: Context) -> bool:
    """Whether the bundle holds the explanations stage's part."""
    return ctx.info.get("explanations") is not None


def method_colors(count: int) -> list[str]:
    """A colour for each of ``count`` methods (their lines in F2)."""
    palette = Category10[10]
    return [palette[m % len(palette)] for m in range(count)]


def curve_columns(methods, modes, curves: np.ndarray, random: np.ndarray) -> dict[str, list]:
    """F2's columns: ``{mode}/{method}`` of ``curves [method, mode, steps+1]``, ``{mode}/random``
    of ``random [mode, steps+1]``, and ``x``, the share of the patches deleted or inserted."""
    steps = curves.shape[-1] - 1
    columns = {"x": (np.arange(steps + 1) / steps).tolist()}
    for d, mode in enumerate(modes):
        for m, method in enumerate(methods):
            columns[f"{mode}/{method}"] = curves[m, d].tolist()
        columns[f"{mode}/random"] = random[d].tolist()
    return columns


def area_rows(methods, modes, area: np.ndarray, random_area: np.ndarray) -> dict[str, list]:
    """F3's rows: each method's and the random order's ``{mode}_mean`` and ``{mode}_std`` (NumPy's,
    over the images) of ``area [image, method, mode]`` and ``random_area [image, mode]``."""
    area = np.asarray(area, np.float64)
    random_area = np.asarray(random_area, np.float64)
    rows: dict[str, list] = {"method": [*methods, "random order"]}
    for d, mode in enumerate(modes):
        values = np.concatenate([area[:, :, d], random_area[:, d : d + 1]], axis=1)
        rows[f"{mode}_mean"] = values.mean(axis=0).tolist()
        rows[f"{mode}_std"] = values.std(axis=0).tolist()
    return rows


def _maps(ctx: Context, methods: list[str]):
    """F1: one panel per method, the chosen image's pixels under its map's heat."""
    gh, gw = ctx.info["grid"]
    scale = MAP_PX / max(gh, gw)
    photo = ctx.add(
        "explain_photo", ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []})
    )
    zeros = [0.0] * (gh * gw)
    cells = ctx.add(
        "explain_cells",
        ColumnDataSource(
            data=patch_cells(
                gh, gw, **{f"{what}_{m}": zeros for m in range(len(methods))
                           for what in ("heat", "alpha")}
            )
        ),
    )  # fmt: skip
    panels = []
    for m, method in enumerate(methods):
        p = plot(
            short_name(method),
            None,
            None,
            name=f"explain_map_{m}",
            frame_width=int(gw * scale),
            frame_height=int(gh * scale),
            x_range=Range1d(0, gw),
            y_range=Range1d(0, gh),
        )
        p.min_border_left = p.min_border_right = 6
        p.xaxis.visible = p.yaxis.visible = False
        p.grid.visible = False
        p.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=photo, origin="top_left")
        mapper = ctx.add(
            f"explain_mapper_{m}", LinearColorMapper(palette=HEAT_PALETTE, low=0, high=1)
        )
        r = p.rect(
            "x", "y", 1, 1, source=cells, fill_color={"field": f"heat_{m}", "transform": mapper},
            fill_alpha=f"alpha_{m}", line_color="#ffffff", line_alpha=0.35,
        )  # fmt: skip
        p.add_tools(
            HoverTool(
                renderers=[r],
                tooltips=[("patch (row, col)", "(@row, @col)"), ("map", f"@heat_{m}{{0.0000}}")],
            )
        )
        panels.append(p)
    return wrap(*panels)


def _curves(ctx: Context, methods: list[str], modes: list[str]):
    """F2: a plot per mode, a line per method and the random order dashed."""
    part = ctx.data.bundle["explanations"]
    mean = curve_columns(
        methods,
        modes,
        np.asarray(part["curves"], np.float64).mean(axis=0),
        np.asarray(part["random_curves"], np.float64).mean(axis=0),
    )
    # The page copies the means, or the chosen explained image's curves, into explain_curves.
    ctx.add("explain_mean_curves", ColumnDataSource(data=mean))
    shown = ctx.add("explain_curves", ColumnDataSource(data=dict(mean)))
    colors = method_colors(len(methods))
    plots = []
    for mode in modes:
        p = plot(
            mode,
            None,
            None,
            name=f"explain_curves_{mode}",
            frame_width=260,
            frame_height=200,
            x_range=Range1d(0, 1),
        )
        ctx.add(f"explain_curves_title_{mode}", p.title)
        p.xaxis.axis_label = (
            f"share of the patches {'deleted' if mode == 'deletion' else 'inserted'}"
        )
        p.yaxis.axis_label = "p(label)"
        lines = [
            p.line("x", f"{mode}/{method}", source=shown, color=color, line_width=2)
            for method, color in zip(methods, colors, strict=True)
        ]
        lines.append(
            p.line("x", f"{mode}/random", source=shown, color=RANDOM_COLOR, line_width=2,
                   line_dash="6 4")
        )  # fmt: skip
        p.add_tools(HoverTool(renderers=lines, tooltips=[("share", "@x{0.00}")], mode="vline"))
        plots.append(p)
    # One legend, beside the last plot: both plots draw the same lines.
    outside_legend(
        plots[-1],
        [
            LegendItem(label=short_name(name), renderers=[line])
            for name, line in zip([*methods, "random order"], lines, strict=True)
        ],
        place="right",
    )
    return plots


def _area_table(ctx: Context, methods: list[str], modes: list[str]) -> Div:
    """F3: mean and standard deviation of each method's areas over the explained images."""
    part = ctx.data.bundle["explanations"]
    rows = area_rows(methods, modes, part["area"], part["random_area"])
    ctx.add("explain_areas", ColumnDataSource(data=rows))
    cell = "padding:1px 8px;text-align:right"
    head = "".join(
        f'<th style="{cell}">{html.escape(mode)} ({FAITHFUL.get(mode, "")})</th>' for mode in modes
    )
    body = "".join(
        "<tr>"
        + f'<td style="padding:1px 8px">{html.escape(name)}</td>'
        + "".join(
            f'<td style="{cell}">{rows[f"{mode}_mean"][r]:.4f} ± {rows[f"{mode}_std"][r]:.4f}</td>'
            for mode in modes
        )
        + "</tr>"
        for r, name in enumerate(rows["method"])
    )
    count = len(part["area"])
    return ctx.add(
        "explain_area_table",
        Div(
            text=(
                f'<div style="font:12px {FONT};color:#333">Area under each curve over the '
                f"{count} explained images: mean ± standard deviation"
                f'<table style="border-collapse:collapse;margin-top:4px">'
                f'<tr><th style="padding:1px 8px;text-align:left">method</th>{head}</tr>'
                f"{body}</table></div>"
            )
        ),
    )


def _head_scatter(ctx: Context, modes: list[str]):
    """F4: each head's importance (B1's value) against its attention map's mean area."""
    part = ctx.data.bundle["explanations"]
    heads = ctx.sources["heads"]
    head_area = np.asarray(part["head_area_mean"], np.float32)
    random_mean = np.asarray(part["random_area"], np.float64).mean(axis=0)
    plots = []
    for d, mode in enumerate(modes):
        field = f"explain_head_area_{mode}"
        heads.data[field] = head_area[..., d].reshape(-1)
        p = plot(
            f"heads: importance vs their attention map's {mode} area",
            None,
            None,
            name=f"explain_heads_{mode}",
            frame_width=300,
            frame_height=220,
            y_range=Range1d(*padded([*head_area[..., d].reshape(-1), random_mean[d]], zero=False)),
        )
        # The page names B1's metric and scope on the x axis.
        ctx.add(f"explain_heads_x_axis_{mode}", p.xaxis[0])
        p.yaxis.axis_label = f"mean {mode} area ({FAITHFUL.get(mode, '')})"
        p.add_layout(
            Span(
                location=float(random_mean[d]), dimension="width", line_color=RANDOM_COLOR,
                line_dash="6 4",
            )
        )  # fmt: skip
        shown = head_points(
            p, heads, field, 0.0, HEAD_COLOR, "circle", f"explain_heads_{mode}_points", x="value"
        )
        p.add_tools(TapTool(renderers=[shown], mode="replace"))
        p.add_tools(
            HoverTool(
                renderers=[shown],
                tooltips=[
                    ("head", "@name"),
                    ("importance", "@value_text"),
                    (f"{mode} area", f"@{{{field}}}{{0.0000}}"),
                ],
            )
        )
        plots.append(p)
    return plots


def build(ctx: Context):
    """View F, or None for a bundle without the ``explanations`` part."""
    if not has_explanations(ctx):
        return None
    facts = ctx.info["explanations"]
    methods, modes = facts["methods"], facts["modes"]
    note = text_box(ctx, "explain_note", "", width=900)
    return panel(
        "F",
        "Explanations: what the label rests on",
        "view_F",
        [
            note,
            _maps(ctx, methods),
            # Rows that never wrap: a wrapping row re-laid out when a title changes cut the
            # first curve plot's axis at 1,280 px. Both rows fit that width.
            Row(*_curves(ctx, methods, modes)),
            _area_table(ctx, methods, modes),
            Row(*_head_scatter(ctx, modes)),
            text_box(ctx, "explain_heads_note", _heads_note(facts), width=900),
        ],
    )


def _heads_note(facts) -> str:
    """How the maps and curves were made, and how to read the head panels."""
    return (
        f"Curves: p(label) as the patches each map ranks first are replaced by the "
        f"{facts.get('baseline', 'zero')} baseline (deletion) or put back into the baseline "
        f"image (insertion), in {facts.get('steps', '?')} steps; dashed: a seeded random patch "
        "order. Head panels: every head, x its importance as B1 shows it (metric, kind and "
        "scope), y the area of its own attention map's curves averaged over the explained "
        "images; the dashed line is the random order's mean area. Click a point to choose its "
        "head."
    )
