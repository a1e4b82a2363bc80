"""Paper figures: each view of the site as PNG and SVG, for a chosen image and head.

The figures come from the site itself: the page is built, opened in headless Chromium, put in
the requested state by setting the same selections a reader's clicks set, in a window
:data:`WINDOW_WIDTH` pixels wide (where each view lays its plots out in the rows a desktop screen
shows: D in one), and then

- PNG: a screenshot of the view's element (what the reader sees, widgets included), at
  ``scale`` device pixels per CSS pixel (2 by default, for print);
- SVG: every plot of the view rendered by BokehJS's SVG backend (``PlotView.export("svg")``),
  placed at its position in the view under the view's title. Widgets (menus, buttons, notes)
  are not part of the SVG.

Needs Chromium and Playwright (see :mod:`jaxvit_interp.site.browser`); Bokeh's ``export_png``
would need Selenium and a webdriver instead.
"""

from __future__ import annotations

import contextlib
import html
import re
import tempfile
from pathlib import Path
from typing import Any

from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.errors import InputError
from jaxvit_interp.site.browser import FIND_VIEW_JS, chromium, open_site, wait_drawn
from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.sources import head_label

# The window the figures are taken in: the page wraps its views to the window's width.
WINDOW_WIDTH = 1920
# view letter -> (model name in the page, file stem, title)
VIEWS = {
    "A": ("view_A", "A_overview", "Image Overview"),
    "B": ("view_B", "B_importance", "Head Importance"),
    "C": ("view_C", "C_strength", "Head Attention Strength"),
    "D": ("view_D", "D_pattern", "Head Attention Pattern"),
    # Only on pages whose bundle has head sets (E) or explanations (F).
    "E": ("view_E", "E_heads_together", "Heads Together and per Class"),
    "F": ("view_F", "F_explanations", "Explanations"),
}
FORMATS = ("png", "svg")

_STATE_JS = """
([image, head]) => {
  const doc = Bokeh.documents[0];
  doc.get_model_by_name("images").selected.indices = image < 0 ? [] : [image];
  doc.get_model_by_name("heads").selected.indices = [head];
  return doc.get_model_by_name("state").data;
}
"""

_ELEMENT_JS = f"""
(name) => {{
  const find = {FIND_VIEW_JS};
  const view = find(name);
  return view == null ? null : view.el;
}}
"""

# Each plot's SVG and its offset inside the view's element, in CSS pixels.
_SVGS_JS = f"""
(name) => {{
  const find = {FIND_VIEW_JS};
  const {{PlotView}} = Bokeh.require("models/plots/plot");
  const root = find(name);
  const origin = root.el.getBoundingClientRect();
  const out = [];
  const walk = (views) => {{
    for (const v of views) {{
      if (v instanceof PlotView) {{
        const box = v.el.getBoundingClientRect();
        const svg = v.export("svg", false).ctx.get_serialized_svg(true);
        out.push({{svg, x: box.left - origin.left, y: box.top - origin.top}});
      }} else if (v.child_views) {{
        walk(v.child_views);
      }}
    }}
  }};
  walk(root.child_views);
  return {{plots: out, width: origin.width, height: origin.height}};
}}
"""


def _compose_svg(plots: list[dict[str, Any]], width: float, height: float, title: str) -> str:
    """One SVG document holding each plot's SVG as a nested ``<svg>`` at its offset."""
    top = 30  # room for the title line
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{width:.0f}" height="{height + top:.0f}" '
        f'viewBox="0 0 {width:.0f} {height + top:.0f}">',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="8" y="20" font-family="Helvetica, Arial, sans-serif" font-size="15" '
        f'font-weight="600" fill="#2b2f36">{html.escape(title)}</text>',
    ]
    for p in plots:
        svg = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", p["svg"])
        svg = re.sub(r"^<svg\b", f'<svg x="{p["x"]:.1f}" y="{p["y"] + top:.1f}"', svg, count=1)
        parts.append(svg)
    parts.append("</svg>")
    return "\n".join(parts)


def export_figures(
    bundle: ResultsBundle,
    out_dir: str | Path,
    image_index: int | None,
    layer: int,
    head: int,
    formats: tuple[str, ...] = FORMATS,
    *,
    views: tuple[str, ...] | None = None,
    scale: float = 2.0,
    chromium_path: str | Path | None = None,
    browser: Any = None,
    **site_options: Any,
) -> list[Path]:
    """Write each of ``views`` as ``formats`` for image ``image_index`` and ``(layer, head)``.

    Args:
      bundle: the results bundle.
      out_dir: folder for the figures, named ``{view}_{name}_{image}_l{layer}h{head}.{ext}``,
        e.g. ``B_importance_img-0012_l0h4.png`` (``all`` for ``image_index=None``, the global
        view).
      image_index: row of the image in the bundle, or ``None`` for values over all images.
      formats: any of ``"png"``, ``"svg"``.
      views: letters of :data:`VIEWS`; None: every view the page has (E and F only where the
        bundle holds their parts). A view asked for by name that the page lacks is an error.
      scale: device pixels per CSS pixel of the PNGs.
      chromium_path: the Chromium binary (default: as :func:`browser.find_chromium`).
      browser: a running Playwright browser to use instead of starting Chromium (one
        Playwright instance per thread can run at a time).
      site_options: passed to :func:`build_site` (``metrics``, ``default_metric``, ...).

    Returns:
      The files written, in view then format order.
    """
    dims = bundle.dims()
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError(f"unknown figure format(s) {bad}; expected some of {FORMATS}")
    asked = views is not None
    views = tuple(VIEWS) if views is None else views
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise InputError(f"unknown view(s) {bad}; expected some of {tuple(VIEWS)}")
    if image_index is not None and not 0 <= image_index < dims["I"]:
        raise InputError(f"image_index {image_index} is outside 0..{dims['I'] - 1}")
    if not 0 <= layer < dims["L"] or not 0 <= head < dims["H"]:
        raise InputError(
            f"head (layer {layer}, head {head}) is outside {dims['L']} layers x {dims['H']} heads"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_name = "all" if image_index is None else str(bundle.meta["image_ids"][image_index])
    # Ids may hold any text: keep letters, digits and dashes for the file name.
    safe_image = re.sub(r"[^A-Za-z0-9-]+", "_", image_name).strip("_")[:60] or "image"
    written: list[Path] = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if browser is None:
            browser = stack.enter_context(chromium(chromium_path))
        site = build_site(bundle, tmp, **site_options)
        page = open_site(browser, site, scale=scale, width=WINDOW_WIDTH)
        page.evaluate(
            _STATE_JS, [-1 if image_index is None else image_index, layer * dims["H"] + head]
        )
        wait_drawn(page)
        if page.site_errors:
            raise RuntimeError(f"the site reported errors while exporting: {page.site_errors}")
        for letter in views:
            name, stem, title = VIEWS[letter]
            base = f"{stem}_{safe_image}_l{layer}h{head}"
            element = page.evaluate_handle(_ELEMENT_JS, name).as_element()
            if element is None and not asked:
                continue  # a view this bundle has no part for
            if element is None:
                raise InputError(f"view {letter} ({name}) is not on this bundle's page")
            if "png" in formats:
                path = out_dir / f"{base}.png"
                element.screenshot(path=str(path))
                written.append(path)
            if "svg" in formats:
                found = page.evaluate(_SVGS_JS, name)
                scope = "all images" if image_index is None else f"image {image_name}"
                svg = _compose_svg(
                    found["plots"],
                    found["width"],
                    found["height"],
                    f"{letter}  {title}: {head_label(layer, head)}, {scope}",
                )
                path = out_dir / f"{base}.svg"
                path.write_text(svg, encoding="utf-8")
                written.append(path)
        page.close()
    return written
