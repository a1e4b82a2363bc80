"""View C, attention strength: near or far, per head.

- C1: head entropy across layers, one dot a head coloured by layer (low = local, high = spread;
  the maximum is ln(#hops)); for the chosen image or averaged over all images.
- C2: the chosen head's strength per Chebyshev hop (mean attention a patch pays one neighbour
  at that distance).
- C3: the chosen head's entropy over all images, with the chosen image marked.
"""

from __future__ import annotations

from bokeh.layouts import row
from bokeh.models import ColumnDataSource, HoverTool, Range1d, Span, TapTool

from jaxvit_interp.site.views.common import Context, panel, plot

HEIGHT = 250


def build(ctx: Context):
    info = ctx.info
    heads = ctx.sources["heads"]
    L, K = info["num_layers"], info["num_hops"]
    top = info["max_entropy"] * 1.08

    p = plot(
        "head entropy across layers",
        360,
        HEIGHT,
        name="entropy_plot",
        x_range=Range1d(-0.6, L - 0.4),
        y_range=Range1d(-0.03 * top, top),
    )
    ctx.add("entropy_title", p.title)
    p.xaxis.axis_label = "layer"
    p.yaxis.axis_label = "entropy (nats)"
    p.xaxis.ticker = list(range(L)) if L <= 24 else list(range(0, L, 2))
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
        300,
        HEIGHT,
        name="hop_plot",
        x_range=Range1d(-0.6, K - 0.4),
    )
    ctx.add("hop_title", q.title)
    q.xaxis.axis_label = "n-hop neighbours"
    q.yaxis.axis_label = "strength"
    q.xaxis.ticker = list(range(K)) if K <= 16 else list(range(0, K, 2))
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
        300,
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
    return panel("C", "Head Attention Strength", "view_C", [row(p, q, h)])
