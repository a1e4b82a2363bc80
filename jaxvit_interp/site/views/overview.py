"""View A, image overview: every image at its 2-D position, coloured by class, found by label or id.

Clicking an image selects it in the shared ``images`` source; that selection is "the chosen
image" every other view reads. Clicking empty space, or the "all images" button, clears it and the
views return to values over all images. Images whose attention is stored carry a dark outline.
"""

from __future__ import annotations

import numpy as np
from bokeh.core.properties import value
from bokeh.models import Button, HoverTool, Legend, LegendItem, TapTool, TextInput

from jaxvit_interp.site.sources import class_palette
from jaxvit_interp.site.views.common import Context, panel, plot, text_box

WIDTH = 420
# Classes the legend lists at most: past that, the most common ones (search finds any class).
LEGEND_CLASSES = 12
LEGEND_NAME_CHARS = 24


def _legend(p, info) -> None:
    """Each class's colour, or the most common classes' when there are many (ImageNet's 1,000
    would cover the plot); the legend draws from its own never-drawn points (NaN positions), so
    selecting images does not restyle it, and its names are canvas text, never HTML."""
    from bokeh.models import ColumnDataSource

    names = info["class_names"]
    palette = class_palette(len(names))
    shown = list(range(len(names)))
    title = None
    if len(names) > 20:
        counts = np.asarray(info["class_counts"])
        shown = [int(c) for c in np.argsort(-counts, kind="stable")[:LEGEND_CLASSES] if counts[c]]
        title = f"most common of {len(names)} classes (search finds any)"

    def short(name: str) -> str:
        return name if len(name) <= LEGEND_NAME_CHARS else name[: LEGEND_NAME_CHARS - 1] + "…"

    keys = ColumnDataSource(
        data={
            "x": [float("nan")] * len(shown),
            "y": [float("nan")] * len(shown),
            "color": [palette[c] for c in shown],
        }
    )
    key = p.scatter("x", "y", source=keys, size=8, fill_color="color", line_color=None)
    legend = Legend(
        items=[LegendItem(label=value(short(names[c])), renderers=[key], index=row)
               for row, c in enumerate(shown)],
        title=title,
        title_text_font_size="10px",
        title_text_font_style="normal",
        label_text_font_size="10px",
        glyph_height=12,
        glyph_width=12,
        spacing=0,
        padding=4,
        margin=0,
        border_line_color=None,
    )  # fmt: skip
    p.add_layout(legend, "below" if title else "right")


def build(ctx: Context):
    images = ctx.sources["images"]
    info = ctx.info
    p = plot(
        "images in 2-D, coloured by class (faint = low probability)",
        WIDTH,
        430,
        tools="pan,wheel_zoom,reset",
        name="overview_plot",
    )
    p.xaxis.visible = p.yaxis.visible = False
    p.grid.visible = False
    r = p.scatter(
        "x",
        "y",
        source=images,
        size=8,
        fill_color="color",
        fill_alpha="alpha",
        line_color="#2b2f36",
        line_width="outline",
        name="overview_points",
    )
    r.selection_glyph = r.glyph.clone(
        size=14, fill_color="color", fill_alpha=1.0, line_color="#d62728", line_width=3
    )
    r.nonselection_glyph = r.glyph.clone(
        size=7,
        fill_color="color",
        fill_alpha=0.3,
        line_color="#2b2f36",
        line_alpha=0.3,
        line_width="outline",
    )
    p.add_tools(TapTool(renderers=[r], mode="replace"))
    prob_name = "predicted class" if info["labels_are_predictions"] else "label"
    classes = [
        ("label", "@label"),
        ("predicted", "@predicted"),
        (f"p({prob_name})", "@prob{0.000}"),
    ]
    tooltips = [
        ("id", "@id"),
        *(classes if info["has_classifier"] else []),
        ("also stored", "@stored"),
    ]
    p.add_tools(HoverTool(renderers=[r], tooltips=tooltips))
    if info["has_classifier"]:  # a backbone has no classes to colour by
        _legend(p, info)

    search = ctx.add(
        "search",
        TextInput(
            title="Find an image (id or label), then Enter",
            placeholder="e.g. 7 or img-0012",
            width=250,
        ),
    )
    everything = ctx.add(
        "global_button",
        Button(label="All images (global)", width=140, button_type="default", align="end"),
    )
    # Fixed widths: a Div that resizes with its text would move the views beside it.
    status = text_box(ctx, "search_status", "", width=WIDTH)
    chosen = text_box(ctx, "image_info", "", width=WIDTH)
    from bokeh.layouts import row

    return panel("A", "Image Overview", "view_A", [row(search, everything), status, chosen, p])
