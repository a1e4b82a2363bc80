"""View C, attention strength: near or far, per head.

- C1: head entropy across layers, one dot a head coloured by layer (low = local, high = spread;
  the maximum is ln(#hops)); for the chosen image or averaged over all images.
- C2: the chosen head's strength per Chebyshev hop (mean attention a patch pays one neighbour
  at that distance).
- C3: the chosen head's entropy over all images, with the chosen image marked.
- C4 (models with special tokens): the chosen head's attention to each special token (CLS,
  distillation, registers: mean over query patches) and from it (what the token pays all
  patches together); a register that soaks up attention has a tall "to" bar and a short "from".
"""

from __future__ import annotations

from bokeh.models import (
    ColumnDataSource,
    FactorRange,
    HoverTool,
    LegendItem,
    Range1d,
    Span,
    TapTool,
)
from bokeh.transform import dodge

from jaxvit_interp.site.views.common import (
    Context,
    integer_ticks,
    outside_legend,
    panel,
    plot,
    wrap,
)

HEIGHT = 250
# Pixels of the frame's width in C1 to C3 (about: axes take the rest of each plot).
FRAME_PX = {"entropy": 320, "hop": 240, "hist": 240}


def build(ctx: Context):
    info = ctx.info
    heads = ctx.sources["heads"]
    L, K = info["num_layers"], info["num_hops"]
    top = info["max_entropy"] * 1.08

    p = plot(
        "head entropy across layers",
        FRAME_PX["entropy"] + 60,
        HEIGHT,
        name="entropy_plot",
        x_range=Range1d(-0.6, L - 0.4),
        y_range=Range1d(-0.03 * top, top),
    )
    ctx.add("entropy_title", p.title)
    p.xaxis.axis_label = "layer"
    p.yaxis.axis_label = "entropy (nats)"
    p.xaxis.ticker = integer_ticks(L, FRAME_PX["entropy"] / L)
    r = p.scatter(
        "entropy_x",
        "entropy",
        source=heads,
        size=8,
        fill_color="layer_color",
        line_color="layer_color",
        name="entropy_points",
    )
    r.selection_glyph = r.glyph.clone(
        size=15, fill_color="layer_color", line_color="#d62728", line_width=3
    )
    r.nonselection_glyph = r.glyph.clone(
        size=7, fill_color="layer_color", fill_alpha=0.55, line_color="layer_color", line_alpha=0.55
    )
    p.add_tools(TapTool(renderers=[r], mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=[r],
            tooltips=[
                ("head", "@name"),
                ("entropy", "@entropy{0.000}"),
                ("entropy (mean over images)", "@{strength/head_entropy_mean}{0.000}"),
            ],
        )
    )

    hop_bars = ctx.add(
        "hop_bars",
        ColumnDataSource(
            data={"hop": list(range(K)), "strength": [0.0] * K, "mass": [0.0] * K, "head": [""] * K}
        ),
    )
    q = plot(
        "attention strength across neighbours",
        FRAME_PX["hop"] + 60,
        HEIGHT,
        name="hop_plot",
        x_range=Range1d(-0.6, K - 0.4),
    )
    ctx.add("hop_title", q.title)
    q.xaxis.axis_label = "n-hop neighbours"
    q.yaxis.axis_label = "strength"
    q.xaxis.ticker = integer_ticks(K, FRAME_PX["hop"] / K)
    q.y_range.start = 0
    vb = q.vbar(
        x="hop",
        top="strength",
        width=0.8,
        source=hop_bars,
        fill_color="#9ecae1",
        line_color="#6b9ac4",
    )
    q.add_tools(
        HoverTool(
            renderers=[vb],
            tooltips=[
                ("head", "@head"),
                ("hop", "@hop"),
                ("strength", "@strength{0.00000}"),
                ("mass", "@mass{0.0000}"),
            ],
        )
    )

    hist = ctx.add(
        "entropy_hist", ColumnDataSource(data={"left": [], "right": [], "count": [], "head": []})
    )
    h = plot(
        "head entropy distribution (all images)",
        FRAME_PX["hist"] + 60,
        HEIGHT,
        name="entropy_hist_plot",
        x_range=Range1d(0, top),
        # The page fits the height to the counts: an automatic range of a histogram that has
        # no bins yet has no extent, which BokehJS warns about.
        y_range=Range1d(0, 1),
    )
    ctx.add("entropy_hist_title", h.title)
    ctx.add("entropy_hist_y_range", h.y_range)
    h.xaxis.axis_label = "entropy (nats)"
    h.yaxis.axis_label = "images"
    qd = h.quad(
        left="left",
        right="right",
        top="count",
        bottom=0,
        source=hist,
        fill_color="#9ecae1",
        line_color="#6b9ac4",
    )
    h.add_tools(
        HoverTool(
            renderers=[qd],
            tooltips=[
                ("head", "@head"),
                ("entropy", "@left{0.000} - @right{0.000}"),
                ("images", "@count"),
            ],
        )
    )
    span = ctx.add(
        "entropy_span",
        Span(location=0, dimension="height", line_color="#d62728", line_width=2, visible=False),
    )
    h.add_layout(span)
    # C4 exists on every page (the page's code draws it) and shows where there are special tokens.
    return panel("C", "Head Attention Strength", "view_C", [wrap(p, q, h, _special(ctx))])


def _special(ctx: Context):
    """C4: the chosen head's attention to and from each special token."""
    names = ctx.info["special_tokens"] if ctx.info["has_special"] else []
    n = len(names)
    bars = ctx.add(
        "special_bars",
        ColumnDataSource(
            data={"token": names, "to": [0.0] * n, "from": [0.0] * n, "head": [""] * n}
        ),
    )
    s = plot(
        "special tokens",
        max(240, 60 + 50 * n),
        HEIGHT + 40,  # the legend below the axis
        name="special_plot",
        x_range=FactorRange(*(names or ["none"])),
        y_range=Range1d(0, 1),
    )
    s.visible = ctx.info["has_special"]
    ctx.add("special_title", s.title)
    ctx.add("special_y_range", s.y_range)
    s.xaxis.major_label_orientation = 0.6 if n > 3 else 0
    s.yaxis.axis_label = "attention"
    kinds = (
        (-0.19, "to", "#6b9ac4", "to it (mean over patches)"),
        (0.19, "from", "#f4a582", "from it (to all patches)"),
    )
    renderers = [
        s.vbar(x=dodge("token", offset, range=s.x_range), top=field, width=0.36, source=bars,
               fill_color=color, line_color=color)
        for offset, field, color, _ in kinds
    ]  # fmt: skip
    outside_legend(
        s, [LegendItem(label=k[3], renderers=[r]) for k, r in zip(kinds, renderers, strict=True)]
    )
    s.add_tools(
        HoverTool(
            renderers=renderers,
            tooltips=[
                ("head", "@head"),
                ("token", "@token"),
                ("patches -> token (mean)", "@to{0.0000}"),
                ("token -> all patches", "@from{0.0000}"),
            ],
        )
    )
    return s
