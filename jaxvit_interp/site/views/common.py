"""What the four views share: the build context, panel framing, figures and text boxes."""

from __future__ import annotations

import dataclasses
from typing import Any

from bokeh.models import Column, Div, Legend, Model, Row
from bokeh.plotting import figure

from jaxvit_interp.site.sources import SiteData

PANEL_STYLE = {
    "border": "1px solid #d6d9de",
    "border-radius": "6px",
    "padding": "4px 8px 8px 8px",
    "margin": "4px",
    "background": "#ffffff",
}
FONT = "Helvetica, Arial, sans-serif"


@dataclasses.dataclass
class Context:
    """Everything a view needs to build itself and to be reached by the page's code.

    Attributes:
      data: the prepared tables and facts.
      sources: table name -> the shared ``ColumnDataSource`` of that entity.
      models: name -> model the page's code reads or writes (display sources, widgets,
        mappers, notes). Every model registered here carries the same Bokeh ``name``, so a
        test or a reader's console finds it with ``doc.get_model_by_name(name)``.
      options: site options (``metrics``, ``default_metric``, ``default_kind``).
    """

    data: SiteData
    sources: dict[str, Any]
    models: dict[str, Model] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def info(self) -> dict[str, Any]:
        return self.data.info

    def add(self, name: str, model: Model) -> Model:
        """Register ``model`` under ``name`` (and name it so); returns it."""
        if name in self.models or name in self.sources:
            raise ValueError(f"two site models are both named {name!r}")
        model.name = name
        self.models[name] = model
        return model


def text_box(ctx: Context | None, name: str | None, text: str = "", **kwargs) -> Div:
    """A Div that shows its text literally: labels and ids from a bundle are never HTML."""
    styles = {"font-size": "12px", "color": "#333", **kwargs.pop("styles", {})}
    div = Div(text=text, render_as_text=True, styles=styles, **kwargs)
    if ctx is not None and name is not None:
        ctx.add(name, div)
    return div


def heading(letter: str, title: str) -> Div:
    """A view's heading; both strings are this module's constants, never bundle text."""
    return Div(
        text=f'<span style="font:600 15px {FONT};color:#2b2f36">{title}</span>'
        f'<span style="display:inline-block;margin-left:6px;width:18px;height:18px;'
        f"border:1.5px solid #2b2f36;border-radius:50%;text-align:center;"
        f'font:600 12px/18px {FONT}">{letter}</span>',
    )


def panel(letter: str, title: str, name: str, children: list, **kwargs) -> Column:
    """A bordered view with its heading; ``name`` is what figure export looks for."""
    return Column(heading(letter, title), *children, name=name, styles=dict(PANEL_STYLE), **kwargs)


# Pixels a tick label of n digits takes on an axis (10 px text; a digit is about 6 px wide), with
# the gap that keeps neighbours apart.
DIGIT_PX = 6
LABEL_GAP_PX = 8


def integer_ticks(count: int, px_per_unit: float, *, across: bool = False) -> list[int]:
    """Ticks at ``0 .. count - 1``: every one, or every 2nd, 5th, 10th, ... where labels that
    close would run together. ``px_per_unit``: the axis's pixels from one integer to the next;
    ``across``: the labels stack across the axis (a vertical axis), so their height counts."""
    need = 10 + 4 if across else DIGIT_PX * len(str(max(count - 1, 0))) + LABEL_GAP_PX
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if step * px_per_unit >= need or step >= count:
            return list(range(0, count, step))
    return list(range(0, count, max(1, count // 5)))


def outside_legend(p, items: list, place: str = "below", **style) -> Legend:
    """A legend in the site's quiet style beside ``p``'s frame (``place``: ``"below"`` or
    ``"right"``), where it covers none of the marks (inside, it hid the tallest bars)."""
    style = {
        "label_text_font_size": "10px",
        "glyph_height": 12,
        "glyph_width": 12,
        "spacing": 0,
        "padding": 2,
        "margin": 2,
        "border_line_color": None,
        **style,
    }
    legend = Legend(items=items, **style)
    p.add_layout(legend, place)
    return legend


def wrap(*children, **kwargs) -> Row:
    """A row that wraps: children that do not fit the window's width go on the next line, so
    the page fits a 1,280 px screen and uses a wider one."""
    styles = {"flex-wrap": "wrap", **kwargs.pop("styles", {})}
    return Row(*children, styles=styles, **kwargs)


def plot(
    title: str,
    width: int | None,
    height: int | None,
    *,
    tools: str = "",
    name: str | None = None,
    **kwargs,
) -> figure:
    """A figure with the site's quiet style: no logo, light grid, small titles. ``width`` and
    ``height`` are the whole plot's; None where ``frame_width`` / ``frame_height`` (in
    ``kwargs``) fix its frame, and the axes add what they need."""
    kwargs.setdefault("toolbar_location", "below" if tools else None)
    p = figure(title=title, width=width, height=height, tools=tools, name=name, **kwargs)
    p.toolbar.logo = None
    p.title.text_font_size = "12px"
    p.title.text_font_style = "normal"
    p.title.text_color = "#555"
    p.outline_line_color = None
    p.grid.grid_line_color = "#eeeeee"
    p.axis.axis_label_text_font_size = "11px"
    p.axis.axis_label_text_font_style = "normal"
    p.axis.major_label_text_font_size = "10px"
    p.min_border_left = 40
    return p


# A per-head plot with every head along x: its least width, and the pixels a head takes at most
# and at least.
HEADS_PLOT_MIN_PX = 440
HEAD_PX = (6, 22)


def heads_along_x(name: str, title: str, y_label: str, info, y_range: tuple[float, float]):
    """A plot with every head along the x axis, layer-major (``L0`` where each layer starts, as
    the class map lays them out), for points drawn from the shared ``heads`` source."""
    from bokeh.models import Range1d

    L, H = info["num_layers"], info["num_heads"]
    LH = L * H
    cell = max(HEAD_PX[0], min(HEAD_PX[1], 900 // max(LH, 1)))
    p = plot(
        title,
        None,
        None,
        name=name,
        frame_width=max(HEADS_PLOT_MIN_PX, cell * LH),
        frame_height=220,
        x_range=Range1d(-0.5, LH - 0.5),
        y_range=Range1d(*y_range),
    )
    p.xaxis.axis_label = "head (layer-major)"
    p.yaxis.axis_label = y_label
    p.xaxis.ticker = [k * H for k in range(L)]
    p.xaxis.major_label_overrides = {k * H: f"L{k}" for k in range(L)}
    return p


def head_points(
    p, heads, field: str, offset: float, color: str, marker: str, name: str, *, x: str | None = None
):
    """Each head's ``field`` of the shared ``heads`` source as a point beside its x (``offset``;
    or at the column ``x`` of the source, for a scatter of two of its values), the chosen head
    outlined in red as in every view; clicking a point chooses its head (with the plot's tap
    tool, which the caller adds over all its point renderers)."""
    from bokeh.transform import dodge

    points = p.scatter(
        x if x is not None else dodge("index", offset), field, source=heads, size=7,
        marker=marker, fill_color=color, line_color=color, name=name,
    )  # fmt: skip
    points.selection_glyph = points.glyph.clone(line_color="#d62728", line_width=3, size=11)
    points.nonselection_glyph = points.glyph.clone()
    return points


def patch_cells(gh: int, gw: int, **columns) -> dict[str, list]:
    """The columns of a ``gh x gw`` patch grid drawn over an image (row-major, row 0 at the
    top, each cell a unit square), with ``columns`` (their start values) beside them."""
    return {
        "row": [r for r in range(gh) for _ in range(gw)],
        "col": [c for _ in range(gh) for c in range(gw)],
        "x": [c + 0.5 for _ in range(gh) for c in range(gw)],
        "y": [gh - r - 0.5 for r in range(gh) for _ in range(gw)],
        **columns,
    }


def padded(values, share: float = 0.08, *, zero: bool = True) -> tuple[float, float]:
    """A y range over the finite ``values`` and 0 (unless not ``zero``), with ``share`` of its
    height either side."""
    import numpy as np

    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not zero and not len(values):
        return -share, 1.0 + share
    start = 0.0 if zero else values[0]
    low, high = float(np.min(values, initial=start)), float(np.max(values, initial=start))
    pad = share * (high - low or 1.0)
    return low - pad, high + pad
