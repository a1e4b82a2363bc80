"""Helpers of the site tests: hostile names, tiny bundles, and a page wrapper for Playwright."""

from __future__ import annotations

import numpy as np

from jaxvit_interp.site.browser import FIND_VIEW_JS, wait_drawn
from jaxvit_interp.site.synthetic import synthetic_bundle

DOUBLE_TAP_MS = 300  # BokehJS's UIGestures.doubletap_threshold
# Names that would run code if any view put them into HTML unescaped.
EVIL_LABEL = "<script>alert(1)</script>"
EVIL_ID = '<img src=x onerror="window.__xss=1">'


def make_bundle(rng: np.random.Generator, **kwargs):
    """A tiny bundle whose class 0 and image 0 carry names meant to break out of HTML."""
    num_images = kwargs.pop("num_images", 30)
    num_classes = kwargs.pop("num_classes", 5)
    class_names = [EVIL_LABEL] + [f"class-{c}" for c in range(1, num_classes)]
    image_ids = [EVIL_ID] + [f"img-{i:03d}" for i in range(1, num_images)]
    return synthetic_bundle(
        rng,
        num_images=num_images,
        num_classes=num_classes,
        class_names=class_names,
        image_ids=image_ids,
        **kwargs,
    )


# The model families the page meets (issue 22's), as synthetic bundles with their shapes.
FAMILIES = {
    # timm ViT-S/16: CLS, 12 x 6 heads, 14 x 14 patches, with the most clusters analysis finds
    # and the explanations stage's part (view F).
    "vit": dict(
        num_layers=12, num_heads=6, grid=(14, 14), clusters=12, set_images=16, explain_images=6
    ),
    # Hugging Face DeiT-tiny distilled: CLS and the distillation token, 12 x 3 heads.
    "deit": dict(num_layers=12, num_heads=3, grid=(14, 14), distillation_token=True, set_images=16),
    # DINOv2-small with 4 registers and no probe (no classes) at 224 px, and at 518 px: 37 x 37
    # patches, whose 1,374-token attention is too large to keep in a test.
    "dino": dict(
        num_layers=12, num_heads=6, grid=(16, 16), num_registers=4, num_classes=0, clusters=9
    ),
    "dino518": dict(
        num_layers=12,
        num_heads=6,
        grid=(37, 37),
        num_registers=4,
        num_classes=0,
        attention_images=0,
    ),  # fmt: skip
    # A 6-layer CLIP ViT-B/16 tower with a linear probe on ImageNet-1k's classes, never sure.
    "clip": dict(
        num_layers=6, num_heads=12, grid=(14, 14), num_classes=1000, confidence=0.0, set_images=16
    ),
}


def family_bundle(rng: np.random.Generator, family: str, num_images: int = 24):
    """A bundle of ``family`` (:data:`FAMILIES`) whose ids are photo paths, longer than a title
    holds, and whose classes are ImageNet-1k's where it has 1,000."""
    from jaxvit_interp.data.imagenet import imagenet1k

    shape = dict(FAMILIES[family])
    classes = shape.get("num_classes", 10)
    if classes == 1000:
        shape["class_names"] = list(imagenet1k().names)
    shape.setdefault("attention_images", 2)
    ids = [f"photos/folder_{i % 5}/IMG_2023_{i:04d}.JPEG" for i in range(num_images)]
    return synthetic_bundle(rng, num_images=num_images, partial_images=4, image_ids=ids, **shape)


class SitePage:
    """A page showing a site, with the reads and clicks the tests need."""

    def __init__(self, page):
        self.page = page

    @property
    def problems(self) -> list[str]:
        """The console errors and warnings and the uncaught exceptions of the page."""
        return self.page.site_errors + self.page.site_warnings

    def data(self, name: str) -> dict:
        """A data source's columns (typed arrays become lists)."""
        return self.page.evaluate(
            """(name) => {
              const d = Bokeh.documents[0].get_model_by_name(name).data;
              const out = {};
              for (const [k, v] of Object.entries(d)) {
                out[k] = (v != null && typeof v.length === "number" && typeof v !== "string")
                  ? Array.from(v, (x) => (x != null && x.shape) ? Array.from(x) : x) : v;
              }
              return out;
            }""",
            name,
        )

    def prop(self, name: str, attr: str):
        return self.page.evaluate(
            "([n, a]) => Bokeh.documents[0].get_model_by_name(n)[a]", [name, attr]
        )

    def selected(self, source: str) -> list[int]:
        return self.page.evaluate(
            "(n) => Array.from(Bokeh.documents[0].get_model_by_name(n).selected.indices)", source
        )

    def state(self) -> dict:
        return {k: v[0] for k, v in self.data("state").items()}

    def text(self, name: str) -> str:
        """The text a Div shows (its shadow DOM without stylesheets)."""
        return self.page.evaluate(
            f"""(name) => {{
              const v = ({FIND_VIEW_JS})(name);
              const root = v.el.shadowRoot || v.el;
              return [...root.childNodes].filter((n) => !["STYLE", "LINK"].includes(n.nodeName))
                .map((n) => n.textContent).join("");
            }}""",
            name,
        )

    def html_elements(self, name: str, selector: str) -> int:
        """How many elements matching ``selector`` a view's DOM holds."""
        return self.page.evaluate(
            f"""([name, sel]) => {{
              const v = ({FIND_VIEW_JS})(name);
              return (v.el.shadowRoot || v.el).querySelectorAll(sel).length;
            }}""",
            [name, selector],
        )

    def screen_xy(self, plot: str, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of data point ``(x, y)`` of figure ``plot``."""
        return tuple(
            self.page.evaluate(
                f"""([name, x, y]) => {{
              const v = ({FIND_VIEW_JS})(name);
              const r = v.canvas_view.el.getBoundingClientRect();
              return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
            }}""",
                [plot, float(x), float(y)],
            )
        )

    def search(self, text: str, *, chosen: int | None = None) -> None:
        """Type ``text`` into A's search box and press Enter; waits until image ``chosen`` is
        the chosen one, or (None) until the search has said that it found nothing."""
        box = self.page.locator("input[type=text]")
        box.fill(text)
        box.press("Enter")
        if chosen is None:
            self.page.wait_for_function(
                "() => Bokeh.documents[0].get_model_by_name('search_status').text"
                ".startsWith('No image')"
            )
        else:
            self.page.wait_for_function(
                "(i) => Bokeh.documents[0].get_model_by_name('state').data.image[0] === i",
                arg=chosen,
            )

    def show(self, plot: str) -> None:
        """Scroll ``plot`` into the window when it is not all in it: real clicks and screenshots
        reach only what the window shows (views wrap onto further rows in a narrow one)."""
        self.page.evaluate(
            f"""(name) => {{
              const r = ({FIND_VIEW_JS})(name).el.getBoundingClientRect();
              if (r.top < 0 || r.left < 0 || r.bottom > innerHeight || r.right > innerWidth)
                ({FIND_VIEW_JS})(name).el.scrollIntoView({{block: "center", inline: "center"}});
            }}""",
            plot,
        )

    def click(self, plot: str, x: float, y: float) -> None:
        """A real mouse click at data point ``(x, y)`` of ``plot``; waits for the redraw."""
        self.show(plot)
        sx, sy = self.screen_xy(plot, x, y)
        # BokehJS takes two taps within 300 ms as one double tap, so clicks are spaced apart.
        self.page.wait_for_timeout(DOUBLE_TAP_MS + 50)
        self.page.mouse.click(sx, sy)
        wait_drawn(self.page)

    def set_selected(self, source: str, indices: list[int]) -> None:
        self.page.evaluate(
            "([n, i]) => { Bokeh.documents[0].get_model_by_name(n).selected.indices = i; }",
            [source, [int(i) for i in indices]],
        )
        wait_drawn(self.page)

    def pixels_near(self, plot: str, x: float, y: float, radius: int = 14):
        """RGB pixels of the screen around data point ``(x, y)`` of ``plot``, ``[h, w, 3]``."""
        from io import BytesIO

        from PIL import Image

        self.show(plot)
        sx, sy = self.screen_xy(plot, x, y)
        png = self.page.screenshot(
            clip={"x": sx - radius, "y": sy - radius, "width": 2 * radius, "height": 2 * radius}
        )
        return np.asarray(Image.open(BytesIO(png)).convert("RGB"))

    def layout_problems(self) -> list[str]:
        """Everything laid out badly on the page as it is drawn now: texts cut or run together
        (:func:`text_problems`), a legend over its plot's frame, a view past the window's right
        edge or a page wider than the window."""
        texts = self.page.evaluate(CANVAS_TEXTS_JS)
        problems = text_problems(texts)
        # B1's numbers stay inside their cells.
        cells = np.asarray(self.page.evaluate(GRID_CELLS_JS), np.float64).reshape(-1, 4)
        for t in texts:
            if t["plot"] != "importance_grid" or not t["renderer"].startswith("GlyphRenderer"):
                continue  # the grid's only glyph texts are its values
            box = np.asarray(t["corners"], np.float64)
            (left, top), (right, bottom) = box.min(0), box.max(0)
            cx, cy = (left + right) / 2, (top + bottom) / 2
            home = cells[
                (cells[:, 0] <= cx)
                & (cx <= cells[:, 2])
                & (cells[:, 1] <= cy)
                & (cy <= cells[:, 3])
            ]
            if not len(home) or (
                left < home[0, 0] or right > home[0, 2] or top < home[0, 1] or bottom > home[0, 3]
            ):
                problems.append(f"importance_grid: the value {t['text']!r} spills out of its cell")
        for item in self.page.evaluate(LEGENDS_JS):
            (l0, t0, r0, b0), (l1, t1, r1, b1) = item["legend"], item["frame"]
            if l0 < r1 and l1 < r0 and t0 < b1 and t1 < b0:
                problems.append(f"{item['plot']}: the legend {item['legend']} covers the frame")
        width = self.page.evaluate(PAGE_WIDTH_JS)
        if width["scroll"] > width["window"]:
            problems.append(
                f"the page is {width['scroll']} px wide in a {width['window']} px window"
            )
        for name, (left, right) in width["views"].items():
            if left < 0 or right > width["window"]:
                problems.append(f"{name} spans [{left:.0f}, {right:.0f}] px of {width['window']}")
        return problems


# All text of the page, through every (nested) shadow root.
DEEP_TEXT_JS = """() => {
  const parts = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.shadowRoot) walk(el.shadowRoot);
      if (!["STYLE", "SCRIPT"].includes(el.nodeName) && el.childNodes.length)
        for (const n of el.childNodes) if (n.nodeType === 3) parts.push(n.textContent);
    }
  };
  walk(document);
  return parts.join(" ");
}"""
# The views of the plots the page shows (visible, and not inside a hidden part of the page).
SHOWN_PLOTS_JS = """() => {
  const walk = function* (views) {
    for (const v of views) {
      yield v;
      if (v.child_views) yield* walk(v.child_views);
    }
  };
  return [...walk(Object.values(Bokeh.index))].filter((v) => v.canvas_view
    && v.computed_renderer_views && v.model.visible && v.el.offsetParent !== null);
}"""
# Every text BokehJS draws on the canvases of the shown plots, as it draws it: each plot is
# painted once more with the 2-D context's fillText, transform and clip recorded. A text is its
# ink box (measureText in the font it is drawn in) through the transform of the moment, as four
# corners in canvas pixels, with the clip rectangle in force (the frame, for glyphs) and the
# canvas's size; `renderer` names what drew it.
CANVAS_TEXTS_JS = f"""() => {{
  const P = CanvasRenderingContext2D.prototype, saved = {{}}, states = new WeakMap(), texts = [];
  let plot = null, renderer = null;
  const st = (ctx) => {{
    if (!states.has(ctx)) states.set(ctx, {{clip: null, stack: [], rect: null}});
    return states.get(ctx);
  }};
  const at = (m, x, y) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f];
  const hook = (name, fn) => {{
    saved[name] = P[name];
    P[name] = function (...args) {{ fn.apply(this, args); return saved[name].apply(this, args); }};
  }};
  hook("save", function () {{ const s = st(this); s.stack.push(s.clip); }});
  hook("restore", function () {{ const s = st(this); s.clip = s.stack.length ? s.stack.pop() : null; }});
  hook("beginPath", function () {{ st(this).rect = null; }});
  hook("rect", function (x, y, w, h) {{
    const m = this.getTransform(), [x0, y0] = at(m, x, y), [x1, y1] = at(m, x + w, y + h);
    st(this).rect = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
  }});
  hook("clip", function () {{
    const s = st(this), r = s.rect, c = s.clip;
    if (r) s.clip = c ? [Math.max(c[0], r[0]), Math.max(c[1], r[1]), Math.min(c[2], r[2]),
                         Math.min(c[3], r[3])] : r;
  }});
  hook("fillText", function (text, x, y) {{
    if (!String(text).trim()) return;
    const m = this.getTransform(), t = this.measureText(text);
    const l = x - t.actualBoundingBoxLeft, r = x + t.actualBoundingBoxRight;
    const top = y - t.actualBoundingBoxAscent, bottom = y + t.actualBoundingBoxDescent;
    texts.push({{plot, renderer, text: String(text), font: this.font,
                 corners: [[l, top], [r, top], [r, bottom], [l, bottom]].map(([a, b]) => at(m, a, b)),
                 clip: st(this).clip, canvas: [this.canvas.width, this.canvas.height]}});
  }});
  try {{
    for (const v of ({SHOWN_PLOTS_JS})()) {{
      plot = v.model.name || v.model.id;
      const views = [...v.computed_renderer_views], paints = views.map((r) => r.paint);
      views.forEach((r, i) => {{
        r.paint = function (...args) {{
          renderer = `${{r.model.type}} ${{r.model.name || ""}}`.trim();
          return paints[i].apply(this, args);
        }};
      }});
      try {{ v.invalidate_painters(); v.paint(); }}
      finally {{ views.forEach((r, i) => {{ r.paint = paints[i]; }}); renderer = null; }}
    }}
  }} finally {{
    for (const [name, fn] of Object.entries(saved)) P[name] = fn;
  }}
  return texts;
}}"""
# The legends of the shown plots, and each one's plot frame, in canvas pixels [l, t, r, b].
LEGENDS_JS = f"""() => {{
  const out = [];
  for (const v of ({SHOWN_PLOTS_JS})()) {{
    const f = v.frame.bbox;
    for (const r of v.computed_renderer_views) {{
      if (r.model.type !== "Legend" || !r.model.visible || !r.model.items.length) continue;
      const b = r.bbox;
      out.push({{plot: v.model.name || v.model.id, legend: [b.left, b.top, b.right, b.bottom],
                 frame: [f.left, f.top, f.right, f.bottom]}});
    }}
  }}
  return out;
}}"""
# The cells of B1's head grid, in canvas pixels [l, t, r, b] (its rect glyph as drawn).
GRID_CELLS_JS = f"""() => {{
  const r = ({FIND_VIEW_JS})("importance_cells");
  if (!r || !r.glyph.sx0) return [];
  const g = r.glyph;
  return Array.from(g.sx0, (x, i) => [x, g.sy1[i], x + g.swidth[i], g.sy1[i] + g.sheight[i]]);
}}"""
# Each view's box on the page and the page's width against the window's.
PAGE_WIDTH_JS = f"""() => {{
  const find = {FIND_VIEW_JS};
  const views = {{}};
  for (const name of ["view_A", "view_B", "view_C", "view_D", "view_E"]) {{
    const v = find(name);
    if (v) {{ const r = v.el.getBoundingClientRect(); views[name] = [r.left, r.right]; }}
  }}
  return {{scroll: document.documentElement.scrollWidth, window: innerWidth, views}};
}}"""


def _separated(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Whether convex quadrilaterals ``a`` and ``b`` (``[4, 2]`` corners in order) lie at least
    ``gap`` pixels apart along some edge normal (the separating axis theorem)."""
    for poly in (a, b):
        for k in range(4):
            edge = poly[(k + 1) % 4] - poly[k]
            normal = np.array([-edge[1], edge[0]])
            length = np.hypot(*normal)
            if length == 0:
                continue
            normal = normal / length
            pa, pb = a @ normal, b @ normal
            if pa.max() + gap <= pb.min() or pb.max() + gap <= pa.min():
                return True
    return False


def text_problems(texts: list[dict], gap: float = 1.0, slack: float = 1.5) -> list[str]:
    """What is wrong with the drawn texts of :data:`CANVAS_TEXTS_JS`: a text that runs past its
    canvas or its clip (cut), and two texts of one plot closer than ``gap`` pixels (run together)."""
    problems = []
    for t in texts:
        box = np.asarray(t["corners"], np.float64)
        (left, top), (right, bottom) = box.min(0), box.max(0)
        w, h = t["canvas"]
        bounds = [0.0, 0.0, float(w), float(h)]
        if t["clip"] is not None:
            c = t["clip"]
            bounds = [max(bounds[0], c[0]), max(bounds[1], c[1]), min(w, c[2]), min(h, c[3])]
        if (
            left < bounds[0] - slack
            or top < bounds[1] - slack
            or right > bounds[2] + slack
            or bottom > bounds[3] + slack
        ):
            problems.append(
                f"{t['plot']}: {t['renderer']} text {t['text']!r} at "
                f"[{left:.0f}, {top:.0f}, {right:.0f}, {bottom:.0f}] is cut at "
                f"[{bounds[0]:.0f}, {bounds[1]:.0f}, {bounds[2]:.0f}, {bounds[3]:.0f}]"
            )
    by_plot: dict[str, list[dict]] = {}
    for t in texts:
        by_plot.setdefault(t["plot"], []).append(t)
    for plot, items in by_plot.items():
        boxes = np.asarray([t["corners"] for t in items], np.float64)
        lo, hi = boxes.min(1), boxes.max(1)
        for i in range(len(items)):
            near = np.flatnonzero(
                (lo[i + 1 :, 0] < hi[i, 0] + gap)
                & (hi[i + 1 :, 0] + gap > lo[i, 0])
                & (lo[i + 1 :, 1] < hi[i, 1] + gap)
                & (hi[i + 1 :, 1] + gap > lo[i, 1])
            )
            for j in near + i + 1:
                if not _separated(boxes[i], boxes[j], gap):
                    problems.append(
                        f"{plot}: {items[i]['renderer']} text {items[i]['text']!r} runs into "
                        f"{items[j]['renderer']} text {items[j]['text']!r}"
                    )
    return problems


def open_comparison_page(browser, path):
    """A comparison page (any of its three), opened and drawn; its console errors and warnings
    are kept in ``page.problems``."""
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else 0)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_function("() => window.Bokeh && Bokeh.documents[0]?.is_idle")
    page.problems = problems
    return page
