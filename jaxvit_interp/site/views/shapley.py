"""View B4, Shapley values of heads (the bundle's ``shapley`` part), shown only when it is there.

Every head along the x axis (layer-major, as the class map lays them out): its Shapley value
of ``prob_drop`` on the stage's images with an error bar of one standard error, and beside it
the single-ablation drop averaged over the same images. A shaded band marks the heads whose two
numbers disagree (the part's ``disagree``, decided by
:func:`jaxvit_interp.importance.shapley.disagreement`). The points are drawn from the shared
``heads`` source, so the chosen head is outlined here as in every view and clicking a point
chooses its head.
"""

from __future__ import annotations

import numpy as np
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, HoverTool, LegendItem, TapTool, Whisker
from bokeh.transform import dodge

from jaxvit_interp.site.sources import head_label
from jaxvit_interp.site.views.common import (
    Context,
    head_points,
    heads_along_x,
    outside_legend,
    padded,
    text_box,
)

# The value and the single drop of a head sit this far either side of the head's x.
OFFSET = 0.18
VALUE_COLOR, SINGLE_COLOR, DISAGREE_COLOR = "#1f77b4", "#7f7f7f", "#fdd0a2"


def has_shapley(ctx: Context) -> bool:
    """Whether the bundle holds the Shapley stage's part."""
    return "shapley/values" in ctx.info["tables"]


def build(ctx: Context):
    """B4, or None for a bundle without the ``shapley`` part."""
    if not has_shapley(ctx):
        return None
    info, data = ctx.info, ctx.data
    H = info["num_heads"]
    heads = ctx.sources["heads"]
    values = data.column("shapley", "values").astype(np.float64)
    stderr = data.column("shapley", "stderr").astype(np.float64)
    single = data.column("shapley", "single_drop").astype(np.float64)
    disagree = data.column("shapley", "disagree") > 0
    # The error bars' ends: the bundle's value and standard error, drawn.
    heads.data["shapley_low"] = (values - stderr).astype(np.float32)
    heads.data["shapley_high"] = (values + stderr).astype(np.float32)
    low, high = padded(np.concatenate([values - stderr, values + stderr, single]))
    p = heads_along_x(
        "shapley_plot",
        "Shapley value of prob_drop vs single-ablation drop, per head",
        "probability drop",
        info,
        (low, high),
    )
    marked = np.flatnonzero(disagree)
    bands = ctx.add(
        "shapley_disagree",
        ColumnDataSource(
            data={
                "x": marked.astype(np.float32),
                "name": [head_label(k // H, k % H) for k in marked],
            }
        ),
    )
    band = p.vbar(
        "x", width=0.9, top=high, bottom=low, source=bands, fill_color=DISAGREE_COLOR,
        line_color=None, fill_alpha=0.7,
    )  # fmt: skip
    whisker = Whisker(
        source=heads, base=dodge("index", -OFFSET), lower="shapley_low", upper="shapley_high",
        line_color=VALUE_COLOR, upper_head=None, lower_head=None,
    )  # fmt: skip
    p.add_layout(whisker)
    shown = head_points(
        p, heads, "shapley/values", -OFFSET, VALUE_COLOR, "circle", "shapley_values"
    )
    beside = head_points(
        p, heads, "shapley/single_drop", OFFSET, SINGLE_COLOR, "square", "shapley_single"
    )
    p.add_tools(TapTool(renderers=[shown, beside], mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=[shown, beside],
            tooltips=[
                ("head", "@name"),
                ("Shapley value", "@{shapley/values}{0.0000} ± @{shapley/stderr}{0.0000}"),
                ("single-ablation drop", "@{shapley/single_drop}{0.0000}"),
            ],
        )
    )
    outside_legend(
        p,
        [
            LegendItem(label="Shapley value ± stderr", renderers=[shown]),
            LegendItem(label="single-ablation drop", renderers=[beside]),
            LegendItem(label="they disagree", renderers=[band]),
        ],
        orientation="horizontal",
        spacing=12,
    )
    return column(p, text_box(ctx, "shapley_note", _note(ctx, len(marked)), width=900))


def _note(ctx: Context, disagreeing: int) -> str:
    """What was measured, on how many images and how, and the rule of the shading."""
    meta = ctx.info["shapley"]
    method = (
        "exact values (every set of heads)"
        if meta["permutations"] == 0
        else f"{meta['permutations']} sampled permutations"
        + ("" if meta.get("converged", True) else " (the standard-error target was not reached)")
    )
    return (
        f"Each head's fair share of the probability drop when heads are removed together, over "
        f"{meta['images']} images with the {meta.get('ablation', 'zero')} ablation: {method}; "
        f"the values add up to v(all) = {meta['v_all']:.4f}, the drop with every head removed. "
        "Beside each "
        "value, the head's drop when it alone is removed, on the same images. Shaded "
        f"({disagreeing}): the two differ by more than 2 standard errors plus a tenth of the "
        "largest, a head that others back up or that matters only beside them. Click a point "
        "to choose its head."
    )
