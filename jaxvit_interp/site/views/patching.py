"""View B5, activation patching on the run's image pairs (the bundle's ``patching`` part), shown
only when it is there.

Every head along the x axis (layer-major): its normalised patching score in both directions side
by side, averaged over the pairs that have one (the part's ``denoising_score_mean`` and
``noising_score_mean``, :func:`jaxvit_interp.importance.activation_patching`) or, chosen in the
menu above the plot, one pair's own (``denoising_score`` and ``noising_score``). The page's code
writes the shown scores into the shared ``heads`` source's ``patching_shown_*`` columns, so the
chosen head is outlined here as in every view and clicking a point chooses its head.
"""

from __future__ import annotations

import numpy as np
from bokeh.layouts import column
from bokeh.models import HoverTool, LegendItem, Select, Span, TapTool

from jaxvit_interp.importance.patching import PATCHING_DIRECTIONS
from jaxvit_interp.site.views.common import (
    Context,
    head_points,
    heads_along_x,
    outside_legend,
    padded,
    text_box,
)

# Each direction's mark: beside the head's x on the left or the right, its colour and shape.
MARKS = {
    "denoising": (-0.18, "#2ca02c", "circle"),
    "noising": (0.18, "#9467bd", "triangle"),
}
WHAT = {
    "denoising": "corrupted image, this head restored from the clean one",
    "noising": "clean image, this head from the corrupted one",
}


def has_patching(ctx: Context) -> bool:
    """Whether the bundle holds the patching stage's part."""
    return "patching/denoising_score_mean" in ctx.info["tables"]


def shown_column(direction: str) -> str:
    """The ``heads`` column of the scores B5 shows in ``direction`` (the mean or one pair's)."""
    return f"patching_shown_{direction}"


def pair_options(ctx: Context) -> list[tuple[str, str]]:
    """The menu's entries: ``"mean"``, then each pair by its position, clean and corrupted ids."""
    part, ids = ctx.data.bundle["patching"], ctx.sources["images"].data["id"]
    meta = ctx.info["patching"]
    options = [("mean", f"mean over the {meta['scored']} scored pairs")]
    for p, ((clean, corrupt), scored) in enumerate(
        zip(part["pairs"], part["defined"], strict=True)
    ):
        why = "" if scored else " (not scored: p(y) too close)"
        options.append((str(p), f"pair {p + 1}: {ids[clean]} -> {ids[corrupt]}{why}"))
    return options


def build(ctx: Context):
    """B5, or None for a bundle without the ``patching`` part."""
    if not has_patching(ctx):
        return None
    info, heads = ctx.info, ctx.sources["heads"]
    part = ctx.data.bundle["patching"]
    fields = {d: shown_column(d) for d in PATCHING_DIRECTIONS}
    for d in PATCHING_DIRECTIONS:  # the opening state: the means; the page's code rewrites them
        heads.data[fields[d]] = ctx.data.column("patching", f"{d}_score_mean")
    every = np.concatenate([np.asarray(part[f"{d}_score"]).ravel() for d in PATCHING_DIRECTIONS])
    p = heads_along_x(
        "patching_plot",
        "activation patching: mean normalised score per head",
        "(p_patched - p_corrupt) / (p_clean - p_corrupt)",
        info,
        padded([*every, 1.0]),  # every pair's scores fit, whichever is shown
    )
    ctx.add("patching_title", p.title)
    menu = ctx.add(
        "patching_pair",
        Select(title="Pair", value="mean", width=420, options=pair_options(ctx)),
    )
    # 0: answers as the corrupted image; 1: as the clean one.
    for level in (0.0, 1.0):
        p.add_layout(Span(location=level, dimension="width", line_color="#bbbbbb", line_dash="4 4"))
    renderers = {
        d: head_points(p, heads, fields[d], *MARKS[d], name=f"patching_{d}")
        for d in PATCHING_DIRECTIONS
    }
    p.add_tools(TapTool(renderers=list(renderers.values()), mode="replace"))
    p.add_tools(
        HoverTool(
            renderers=list(renderers.values()),
            tooltips=[("head", "@name")]
            + [(d, f"@{{{fields[d]}}}{{0.000}}") for d in PATCHING_DIRECTIONS],
        )
    )
    outside_legend(
        p,
        [LegendItem(label=f"{d}: {WHAT[d]}", renderers=[r]) for d, r in renderers.items()],
        orientation="vertical",
    )
    return column(menu, p, text_box(ctx, "patching_note", _note(ctx), width=900))


def _note(ctx: Context) -> str:
    """How many pairs, how many scored, and how to read the score."""
    meta = ctx.info["patching"]
    return (
        f"Each head patched between the images of {meta['pairs']} pairs, one at a time; the "
        f"score's mean over the {meta['scored']} pairs whose clean and corrupted p(y) differ "
        f"enough to score (min_gap {meta.get('min_gap', 'n/a')}). 1: the patched run answers as "
        "the clean image, 0: as the corrupted one. Denoising near 1: the head alone brings the "
        "clean answer back; noising "
        "near 0: corrupting the head alone gives the corrupted answer. Choose a pair in the menu "
        "for its own scores; click a point to choose its head."
    )
