"""View D, attention pattern: what each head has learned to look at.

- D1: heads in the pattern embedding: a point per head (its mean over images, or its position
  for the chosen image) over the density of all (image, head) points, with the chosen head's
  per-image points; the toggle switches between CLS patterns and patch patterns.
- D2: the chosen image with its patch grid: click a patch to make it the query, and the heat
  overlay shows where that query looks in the chosen head (or the CLS token as query).
- D4 (beside D2): the chosen image's attention rollout map (Abnar & Zuidema 2020: all layers at
  once, read from the CLS row, or the mean of the patch rows without CLS) over the same pixels in
  the same overlay style, and each layer's contribution to it; hidden when the bundle has no
  rollout part.
- D3: the chosen head's attention matrix for the chosen image (rows query, columns key), with
  the query's row marked; D5: the histogram of its values.
- Cluster representatives: each pattern cluster's representative, the chosen head's outlined.

Attention matrices exist only for the images in the bundle's attention subset (outlined in A).
"""

from __future__ import annotations

from bokeh.layouts import column
from bokeh.models import (
    BoxAnnotation,
    Button,
    ColorBar,
    Column,
    ColumnDataSource,
    CustomJSHover,
    HoverTool,
    LinearColorMapper,
    RadioButtonGroup,
    Range1d,
    TapTool,
)
from bokeh.palettes import Greys256, Oranges9, interp_palette

from jaxvit_interp.site.views.common import (
    Context,
    integer_ticks,
    panel,
    patch_cells,
    plot,
    text_box,
    wrap,
)

HEAT_PALETTE = list(interp_palette(Oranges9[::-1], 256))
KIND_LABELS = {"cls": "CLS patterns", "patch": "patch patterns"}


def _embedding(ctx: Context):
    info = ctx.info
    heads = ctx.sources["heads"]
    kinds = info["kinds"]
    extent = info["extents"][kinds[0]] if kinds else [0, 1, 0, 1]
    p = plot(
        "heads in the pattern embedding",
        420,
        420,
        tools="pan,wheel_zoom,reset",
        name="embedding_plot",
        x_range=Range1d(extent[0], extent[1]),
        y_range=Range1d(extent[2], extent[3]),
    )
    ctx.add("embedding_title", p.title)
    ctx.add("embedding_x_range", p.x_range)
    ctx.add("embedding_y_range", p.y_range)
    p.grid.visible = False
    p.xaxis.visible = p.yaxis.visible = False
    density = ctx.add(
        "density_view", ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []})
    )
    density_mapper = LinearColorMapper(
        palette=list(Greys256[60:]), low=0, high=1, low_color=(0, 0, 0, 0)
    )
    density_mapper.palette = density_mapper.palette[::-1]  # dense = dark
    p.image(
        image="image",
        x="x",
        y="y",
        dw="dw",
        dh="dh",
        source=density,
        color_mapper=density_mapper,
        global_alpha=0.55,
    )
    per_image = ctx.add(
        "head_images",
        ColumnDataSource(data={"x": [], "y": [], "color": [], "id": [], "label": [], "size": []}),
    )
    pts = p.scatter(
        "x",
        "y",
        source=per_image,
        size="size",
        fill_color="color",
        fill_alpha=0.6,
        line_color="#555555",
        line_alpha=0.6,
        marker="circle",
    )
    p.add_tools(HoverTool(renderers=[pts], tooltips=[("image", "@id"), ("label", "@label")]))
    r = p.scatter(
        "pos_x",
        "pos_y",
        source=heads,
        size=11,
        fill_color="layer_color",
        line_color="white",
        line_width=1,
        name="embedding_heads",
        marker="circle",
    )
    r.selection_glyph = r.glyph.clone(
        size=18, fill_color="layer_color", line_color="#d62728", line_width=3, marker="circle"
    )
    r.nonselection_glyph = r.glyph.clone(
        size=10, fill_color="layer_color", fill_alpha=0.85, line_color="white", marker="circle"
    )
    p.add_tools(TapTool(renderers=[r], mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=[r],
            tooltips=[("head", "@name"), ("position", "(@pos_x{0.00}, @pos_y{0.00})")],
        )
    )
    toggle = ctx.add(
        "kind_toggle",
        RadioButtonGroup(
            labels=[KIND_LABELS[k] for k in kinds] or ["no pattern results"],
            active=kinds.index(ctx.options["default_kind"])
            if ctx.options.get("default_kind") in kinds
            else 0,
            width=260,
        ),
    )
    note = text_box(
        ctx,
        "embedding_note",
        (
            "Large dots: heads (coloured by layer); small dots: the chosen head on each image; "
            "grey: density of all (image, head) points."
        )
        if kinds
        else "This results bundle has no pattern results.",
        width=400,
    )
    return column(toggle, p, note)


def _image(ctx: Context):
    info = ctx.info
    gh, gw = info["grid"]
    # A readable patch: 26 px for grids up to 13, 15 px at 24 a side (384 px images), within
    # 280-360 px a side (so that D fits a 1,920 px window's width).
    side = max(gh, gw)
    scale = max(280, min(360, 26 * side)) / side
    p = plot(
        "chosen image: click a patch to make it the query",
        int(gw * scale) + 50,
        int(gh * scale) + 40,
        name="image_plot",
        x_range=Range1d(0, gw),
        y_range=Range1d(0, gh),
    )
    ctx.add("image_title", p.title)
    p.xaxis.visible = p.yaxis.visible = False
    p.grid.visible = False
    thumb = ctx.add(
        "thumb", ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []})
    )
    p.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=thumb, origin="top_left")
    patches = ctx.add(
        "patches",
        ColumnDataSource(
            data=patch_cells(
                gh, gw, heat=[0.0] * (gh * gw), alpha=[0.0] * (gh * gw), head=[""] * (gh * gw)
            )
        ),
    )
    heat = ctx.add("heat_mapper", LinearColorMapper(palette=HEAT_PALETTE, low=0, high=1))
    fill = {"field": "heat", "transform": heat}
    r = p.rect(
        "x",
        "y",
        1,
        1,
        source=patches,
        fill_color=fill,
        fill_alpha="alpha",
        line_color="#ffffff",
        line_alpha=0.35,
        name="patch_cells",
    )
    # Selection is shown by the query marker instead, so the heat stays undimmed.
    r.selection_glyph = r.glyph.clone(
        fill_color=fill, fill_alpha="alpha", line_color="#ffffff", line_alpha=0.35
    )
    r.nonselection_glyph = r.glyph.clone(
        fill_color=fill, fill_alpha="alpha", line_color="#ffffff", line_alpha=0.35
    )
    p.add_tools(TapTool(renderers=[r], mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=[r],
            tooltips=[
                ("head", "@head"),
                ("patch (row, col)", "(@row, @col)"),
                ("attention from query", "@heat{0.0000}"),
            ],
        )
    )
    marker = ctx.add("query_marker", ColumnDataSource(data={"x": [], "y": []}))
    p.rect("x", "y", 1, 1, source=marker, fill_alpha=0, line_color="#1f77b4", line_width=3)
    children = []
    if info["has_cls"]:
        children.append(ctx.add("cls_query_button", Button(label="CLS token as query", width=160)))
    note = text_box(ctx, "attention_note", "", width=int(gw * scale) + 50)
    return column(*children, p, note)


def _rollout(ctx: Context) -> Column | None:
    """D4: the rollout map over the chosen image (the pixels D2 shows) and the per-layer bars."""
    info = ctx.info
    if not info.get("has_rollout"):
        return None
    gh, gw = info["grid"]
    side = max(gh, gw)
    scale = max(240, min(280, 20 * side)) / side
    width = int(gw * scale) + 30
    p = plot(
        "attention rollout",
        width,
        int(gh * scale) + 40,
        name="rollout_plot",
        x_range=Range1d(0, gw),
        y_range=Range1d(0, gh),
    )
    ctx.add("rollout_title", p.title)
    p.xaxis.visible = p.yaxis.visible = False
    p.grid.visible = False
    # The same pixels as D2: one source, drawn in both plots.
    p.image_rgba(
        image="image", x="x", y="y", dw="dw", dh="dh", source=ctx.models["thumb"], origin="top_left"
    )
    cells = ctx.add(
        "rollout_cells",
        ColumnDataSource(data=patch_cells(gh, gw, heat=[0.0] * (gh * gw), alpha=[0.0] * (gh * gw))),
    )
    mapper = ctx.add("rollout_mapper", LinearColorMapper(palette=HEAT_PALETTE, low=0, high=1))
    r = p.rect(
        "x",
        "y",
        1,
        1,
        source=cells,
        fill_color={"field": "heat", "transform": mapper},
        fill_alpha="alpha",
        line_color="#ffffff",
        line_alpha=0.35,
    )
    p.add_tools(
        HoverTool(
            renderers=[r],
            tooltips=[("patch (row, col)", "(@row, @col)"), ("rollout", "@heat{0.0000}")],
        )
    )
    bars = ctx.add(
        "rollout_bars", ColumnDataSource(data={"layer": [], "contribution": [], "label": []})
    )
    b = plot(
        "layer contributions",
        width,
        170,
        name="rollout_bars_plot",
        x_range=Range1d(-0.6, info["num_layers"] - 0.4),
        y_range=Range1d(0, 1),
    )
    ctx.add("rollout_bars_title", b.title)
    ctx.add("rollout_bars_y_range", b.y_range)
    b.xaxis.axis_label = "layer"
    b.yaxis.axis_label = "share moved"
    b.xaxis.ticker = integer_ticks(info["num_layers"], (width - 60) / info["num_layers"])
    q = b.vbar(
        x="layer", top="contribution", width=0.7, source=bars, fill_color="#fdae6b",
        line_color="#e6550d",
    )  # fmt: skip
    b.add_tools(
        HoverTool(renderers=[q], tooltips=[("layer", "@layer"), ("contribution", "@label")])
    )
    read = "the CLS row" if info["has_cls"] else "the mean of the patch rows"
    note = text_box(
        ctx,
        "rollout_note",
        "Attention rollout (Abnar & Zuidema 2020): the identity and the head-mean attention "
        f"mixed half and half, multiplied through every layer; the map is {read} over the "
        "patches after the last layer. Bars: the share of that row each layer's attention "
        "moves (total variation; at most 1/2, the identity's half moves nothing).",
        width=width,
    )
    return column(p, b, note)


def _matrix(ctx: Context):
    info = ctx.info
    N = info["num_tokens"]
    p = plot(
        "attention matrix (rows: query, columns: key)",
        420,
        420,
        name="matrix_plot",
        x_range=Range1d(0, N),
        y_range=Range1d(N, 0),
    )
    ctx.add("matrix_title", p.title)
    p.xaxis.axis_label = "key token" + (" (0 = CLS)" if info["has_cls"] else "")
    p.yaxis.axis_label = "query token"
    p.grid.visible = False
    matrix = ctx.add(
        "matrix_view",
        ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": [], "head": []}),
    )
    mapper = ctx.add("matrix_mapper", LinearColorMapper(palette=HEAT_PALETTE, low=0, high=1))
    img = p.image(
        image="image", x="x", y="y", dw="dw", dh="dh", source=matrix, color_mapper=mapper
    )  # with the flipped y range, row 0 (query 0) is on top
    # Token t covers [t, t + 1): round the pointer down, not to the nearest token.
    token = CustomJSHover(code="return String(Math.floor(value))")
    p.add_tools(
        HoverTool(
            renderers=[img],
            tooltips=[
                ("head", "@head"),
                ("query", "$y{custom}"),
                ("key", "$x{custom}"),
                ("attention", "@image{0.00000}"),
            ],
            formatters={"$x": token, "$y": token},
        )
    )
    band = ctx.add(
        "query_band",
        BoxAnnotation(
            top=0, bottom=1, fill_alpha=0.0, line_color="#1f77b4", line_width=2, visible=False
        ),
    )
    p.add_layout(band)
    bar = ColorBar(
        color_mapper=mapper, width=10, label_standoff=4, major_label_text_font_size="9px"
    )
    p.add_layout(bar, "right")
    return p


def _histogram(ctx: Context):
    hist = ctx.add(
        "value_hist", ColumnDataSource(data={"left": [], "right": [], "count": [], "head": []})
    )
    # Fitted to the histogram by the page: the histogram is empty until an image with stored
    # attention is chosen, and an automatic range of nothing has no extent.
    p = plot(
        "values of the attention matrix",
        290,
        190,
        name="value_hist_plot",
        x_range=Range1d(0, 1),
        y_range=Range1d(0, 1),
    )
    ctx.add("value_hist_x_range", p.x_range)
    ctx.add("value_hist_y_range", p.y_range)
    p.xaxis.axis_label = "attention"
    p.xaxis.ticker.desired_num_ticks = 4  # labels of small weights are long (2.5e-4)
    p.yaxis.axis_label = "entries"
    q = p.quad(
        left="left",
        right="right",
        top="count",
        bottom=0,
        source=hist,
        fill_color="#fdae6b",
        line_color="#e6550d",
    )
    p.add_tools(
        HoverTool(
            renderers=[q],
            tooltips=[
                ("head", "@head"),
                ("attention", "@left{0.0000} - @right{0.0000}"),
                ("entries", "@count"),
            ],
        )
    )
    return p


def _representatives(ctx: Context):
    reps = ctx.add(
        "reps_view",
        ColumnDataSource(
            data={
                "image": [],
                "x": [],
                "y": [],
                "dw": [],
                "dh": [],
                "count": [],
                "members": [],
                "cluster": [],
                "label_x": [],
                "label_y": [],
            }
        ),
    )
    highlight = ctx.add(
        "reps_highlight", ColumnDataSource(data={"x": [], "y": [], "w": [], "h": []})
    )
    p = plot(
        "cluster representatives",
        290,
        200,
        name="reps_plot",
        x_range=Range1d(-0.5, 10),
        y_range=Range1d(-2.2, 8),
    )
    ctx.add("reps_title", p.title)
    ctx.add("reps_x_range", p.x_range)
    ctx.add("reps_y_range", p.y_range)
    p.xaxis.visible = p.yaxis.visible = False
    p.grid.visible = False
    mapper = LinearColorMapper(palette=HEAT_PALETTE, low=0, high=1)
    img = p.image(
        image="image",
        x="x",
        y="y",
        dw="dw",
        dh="dh",
        source=reps,
        color_mapper=mapper,
        origin="top_left",
    )
    p.rect("x", "y", "w", "h", source=highlight, fill_alpha=0, line_color="#d62728", line_width=3)
    p.text(
        "label_x",
        "label_y",
        text="count",
        source=reps,
        text_align="center",
        text_baseline="top",
        text_font_size="9px",
        text_color="#555",
    )
    p.add_tools(
        HoverTool(renderers=[img], tooltips=[("cluster", "@cluster"), ("members", "@members")])
    )
    return p


def build(ctx: Context):
    return panel(
        "D",
        "Head Attention Pattern",
        "view_D",
        [
            wrap(
                *(
                    part
                    for part in (_embedding(ctx), _image(ctx), _rollout(ctx), _matrix(ctx))
                    if part is not None
                ),
                column(_histogram(ctx), _representatives(ctx)),
            ),
        ],
    )
