"""View B, head importance: the L x H grid under a chosen metric, partial pruning and top-5.

- B1: one cell per head (layer rows, head columns) coloured by the metric chosen in the menu,
  for the chosen image or averaged over all images; dark always marks an important head (for
  ``prob`` that is a low probability after pruning). Clicking a cell chooses the head.
- B2: the label's probability after each partial-pruning mode of the chosen head; clicking a
  bar chooses the mode whose top-5 predictions B3 lists.
- B3: the top-5 predictions after that pruning.
- B4: Shapley values of the heads beside their single-ablation drops, when the bundle has the
  Shapley stage's part (:mod:`.shapley`).
- B5: activation patching's mean score per head in both directions, when the bundle has the
  patching stage's part (:mod:`.patching`).
"""

from __future__ import annotations

from bokeh.layouts import column
from bokeh.models import (
    BasicTickFormatter,
    ColorBar,
    ColumnDataSource,
    FactorRange,
    HoverTool,
    LinearColorMapper,
    Range1d,
    Select,
    TapTool,
)
from bokeh.palettes import Viridis256

from jaxvit_interp.site.sources import importance_menu, menu_title
from jaxvit_interp.site.views import patching, shapley
from jaxvit_interp.site.views.common import (
    Context,
    integer_ticks,
    panel,
    plot,
    text_box,
    wrap,
)

# Pixels of a cell of the head grid that shows its value: up to 7 characters ("-1.2e-3") of
# 9 px text, with a margin; grids too large for numbers get narrow cells.
VALUE_CELL_PX = 36
PLAIN_CELL_PX = 14
# The grid's least width: its title names the metric and what it averages over.
GRID_MIN_PX = 280


def _keep_style(renderer) -> None:
    """Labels drawn from a selectable source stay as they are whatever is selected."""
    renderer.selection_glyph = renderer.glyph.clone()
    renderer.nonselection_glyph = renderer.glyph.clone()


def build(ctx: Context):
    info = ctx.info
    heads = ctx.sources["heads"]
    L, H = info["num_layers"], info["num_heads"]
    metrics = importance_menu(info, ctx.options.get("metrics") or list(info["metrics"]))
    default = ctx.options.get("default_metric") or metrics[0]
    has_labels = info["has_classifier"]
    select = ctx.add(
        "metric_select",
        Select(
            title="Metric",
            value=default,
            width=260,
            options=[(m, menu_title(info, m)) for m in metrics],
        ),
    )

    # --- B1: the head grid --------------------------------------------------------------------
    mapper = ctx.add("value_mapper", LinearColorMapper(palette=list(Viridis256), low=0, high=1))
    numbers = H <= 16 and L <= 24  # each cell shows its value
    row = max(14 if numbers else 6, min(24, 270 // L))
    grid_width = max(GRID_MIN_PX, (VALUE_CELL_PX if numbers else PLAIN_CELL_PX) * H)
    p = plot(
        "",
        None,
        None,
        name="importance_grid",
        frame_width=grid_width,
        frame_height=row * L,
        x_range=Range1d(-0.5, H - 0.5),
        y_range=Range1d(L - 0.5, -0.5),
    )
    height = row * L + 90  # B2 and B3 beside it, as tall
    ctx.add("importance_title", p.title)
    p.xaxis.axis_label = "head"
    p.yaxis.axis_label = "layer"
    p.xaxis.ticker = integer_ticks(H, grid_width / H)
    p.yaxis.ticker = integer_ticks(L, row, across=True)
    p.grid.visible = False
    r = p.rect(
        "head",
        "layer",
        0.94,
        0.94,
        source=heads,
        name="importance_cells",
        fill_color={"field": "value", "transform": mapper},
        line_color="white",
    )
    r.selection_glyph = r.glyph.clone(
        fill_color={"field": "value", "transform": mapper}, line_color="#d62728", line_width=3
    )
    r.nonselection_glyph = r.glyph.clone(
        fill_color={"field": "value", "transform": mapper}, line_color="white"
    )
    if numbers:
        labels = p.text(
            "head",
            "layer",
            text="value_text",
            source=heads,
            text_align="center",
            text_baseline="middle",
            text_font_size="9px",
            text_color="text_color",
            name="importance_values",
        )
        _keep_style(labels)
    # The pair chosen in E1's interaction matrix, outlined (empty until one is chosen).
    pair = ctx.add("pair_marks", ColumnDataSource(data={"x": [], "y": []}))
    p.rect("x", "y", 1.0, 1.0, source=pair, fill_alpha=0, line_color="#ff7f0e", line_width=3,
           line_dash="dashed")  # fmt: skip
    p.add_tools(TapTool(renderers=[r], mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=[r],
            tooltips=[
                ("head", "@name"),
                ("metric", "@metric"),
                ("value", "@value{0.0000}"),
                *(
                    [("flip fraction (all images)", "@{importance/flip_mean}{0.000}")]
                    if "flip" in info["metrics"]
                    else []
                ),
            ],
        )
    )
    bar = ColorBar(
        color_mapper=mapper, width=10, label_standoff=4, major_label_text_font_size="9px"
    )
    p.add_layout(bar, "right")
    ctx.add("value_colorbar", bar)

    # --- B2: partial pruning ------------------------------------------------------------------
    modes = info["pruning_modes"]
    bars = ctx.add(
        "partial_bars",
        ColumnDataSource(
            data={
                "mode": list(modes),
                "prob": [0.0] * len(modes),
                "label": [""] * len(modes),
                "head": [""] * len(modes),
            }
        ),
    )
    q = plot(
        "probability after partial pruning",
        300,
        max(250, height),
        name="partial_plot",
        x_range=FactorRange(*modes),
        # Fitted to the bars by the page: a model that is never sure has short ones.
        y_range=Range1d(0, 1),
    )
    ctx.add("partial_title", q.title)
    ctx.add("partial_y_range", q.y_range)
    q.xaxis.major_label_orientation = 0.6
    q.yaxis.axis_label = "p(label)"
    vb = q.vbar(
        x="mode",
        top="prob",
        width=0.75,
        source=bars,
        fill_color="#9ecae1",
        line_color="#6b9ac4",
        name="partial_bars_glyph",
    )
    vb.selection_glyph = vb.glyph.clone(fill_color="#3182bd", line_color="#08519c", line_width=2)
    vb.nonselection_glyph = vb.glyph.clone(fill_color="#c6dbef", line_color="#9ecae1")
    _keep_style(
        q.text(
            "mode",
            "prob",
            text="label",
            source=bars,
            text_align="center",
            text_baseline="bottom",
            text_font_size="9px",
            y_offset=-1,
        )
    )
    q.add_tools(TapTool(renderers=[vb], mode="replace"))
    q.add_tools(
        HoverTool(
            renderers=[vb], tooltips=[("head", "@head"), ("mode", "@mode"), ("p(label)", "@label")]
        )
    )
    partial_note = text_box(ctx, "partial_note", width=GRID_MIN_PX + 300 + 280)

    # --- B3: top-5 --------------------------------------------------------------------------
    top5 = ctx.add(
        "top5_view",
        ColumnDataSource(
            data={"rank": [], "prob": [], "text": [], "name": [], "y": [], "head": []}
        ),
    )
    top_k = info["top_k"]
    t = plot(
        "top-5 predictions after pruning",
        280,
        max(250, height),
        name="top5_plot",
        x_range=Range1d(0, 1.0),
        y_range=Range1d(0.4, top_k + 0.6),
    )
    ctx.add("top5_title", t.title)
    ctx.add("top5_x_range", t.x_range)
    # Rank 1 at the top: rank r is drawn at y = top_k + 1 - r.
    t.yaxis.ticker = list(range(1, top_k + 1))
    t.yaxis.major_label_overrides = {top_k + 1 - r: f"#{r}" for r in range(1, top_k + 1)}
    t.xaxis.axis_label = "probability"
    # Labels of small probabilities are long: an unsure model's top five near 2e-3 gave ticks
    # every 5e-4 whose scientific labels (2.000e-3) ran together. Fewer ticks, written as
    # decimals down to 1e-4 ("0.002"), fit the plot.
    t.xaxis.ticker.desired_num_ticks = 3
    t.xaxis.formatter = BasicTickFormatter(power_limit_low=-4)
    t.grid.visible = False
    ranks = t.hbar(
        y="y", right="prob", height=0.7, source=top5, fill_color="#c6dbef", line_color="#9ecae1"
    )
    # The whole class name (the canvas shows its first characters).
    t.add_tools(HoverTool(renderers=[ranks], tooltips=[("class", "@name"), ("p", "@prob{0.0000}")]))
    # Drawn on the canvas as text: class names are never interpreted as HTML.
    t.text(
        x=0,
        y="y",
        text="text",
        source=top5,
        text_baseline="middle",
        x_offset=6,
        text_font_size="10px",
        text_color="#222",
    )
    q.visible = t.visible = partial_note.visible = has_labels
    # B4 and B5, with the bundle's Shapley and patching parts only.
    extra = [view for view in (shapley.build(ctx), patching.build(ctx)) if view is not None]
    return panel(
        "B",
        "Head Importance",
        "view_B",
        [
            select,
            # Partial pruning measures p(label): a backbone without a classifier has none.
            wrap(p, column(q), column(t)),
            partial_note,
            *extra,
        ],
    )
