"""View A, image overview: every image at its 2-D position, coloured by class, found by label or id.

The positions come from each image's per-head importance vector (``prob_drop``, or ``repr`` for a
backbone without a classifier: :func:`~jaxvit_interp.importance.layout.layout_metric`); a
backbone has no classes, so its images share one colour and the search finds ids only.

Clicking an image selects it in the shared ``images`` source; that selection is "the chosen
image" every other view reads. Clicking empty space, or the "all images" button, clears it and the
views return to values over all images. Images whose attention is stored carry a dark outline.
"""

from __future__ import annotations

import numpy as np
from bokeh.core.properties import value
from bokeh.models import Button, HoverTool, LegendItem, TapTool, TextInput

from jaxvit_interp.importance.layout import layout_metric
from jaxvit_interp.site.sources import class_palette, short_name
from jaxvit_interp.site.views.common import Context, outside_legend, panel, plot, text_box

WIDTH = 420
# Classes the legend lists at most: past that, the most common ones (search finds any class).
LEGEND_CLASSES = 12


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

    keys = ColumnDataSource(
        data={
            "x": [float("nan")] * len(shown),
            "y": [float("nan")] * len(shown),
            "color": [palette[c] for c in shown],
        }
    )
    key = p.scatter("x", "y", source=keys, size=8, fill_color="color", line_color=None)
    outside_legend(
        p,
        [LegendItem(label=value(short_name(names[c])), renderers=[key], index=row)
         for row, c in enumerate(shown)],
        "below" if title else "right",
        title=title,
        title_text_font_size="10px",
        title_text_font_style="normal",
        padding=4,
    )  # fmt: skip


def build(ctx: Context):
    images = ctx.sources["images"]
    info = ctx.info
    classifier = info["has_classifier"]
    metric = layout_metric(len(info["class_names"]))
    p = plot(
        f"images placed by their heads' importance ({metric})",
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
            title=f"Find an image ({'id or label' if classifier else 'id'}), then Enter",
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
    some = 0 < info["num_attention"] < info["num_images"]
    which = "predicted class" if info["labels_are_predictions"] else "label"
    colour = (
        f"Colour: the image's {which} (faint: the model gives it a low probability)."
        if classifier
        else "One colour: a backbone without a classifier has no classes nor probabilities."
    )
    note = text_box(
        ctx,
        "overview_note",
        f"Images near each other depend on the same heads. {colour}"
        + (" Outlined: the images whose attention D can show." if some else ""),
        width=WIDTH,
    )
    from bokeh.layouts import row

    return panel(
        "A", "Image Overview", "view_A", [row(search, everything), status, chosen, p, note]
    )
