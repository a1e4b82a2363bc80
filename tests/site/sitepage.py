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

    def click(self, plot: str, x: float, y: float) -> None:
        """A real mouse click at data point ``(x, y)`` of ``plot``; waits for the redraw."""
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

        sx, sy = self.screen_xy(plot, x, y)
        png = self.page.screenshot(
            clip={"x": sx - radius, "y": sy - radius, "width": 2 * radius, "height": 2 * radius}
        )
        return np.asarray(Image.open(BytesIO(png)).convert("RGB"))
