"""Headless Chromium for the site: figure export, browser tests and the open-time benchmark.

Driven by Playwright's Python package with the system's Chromium (Debian: ``apt-get install
chromium``); Playwright's own browser download is never used, so this works offline. Bokeh's own
``export_png`` / ``export_svg`` need Selenium plus a webdriver, which this does not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Environment variable naming another Chromium binary.
CHROMIUM_ENV = "JAXVIT_CHROMIUM"

# True once BokehJS has built and drawn every root (the document's "idle" state), the page's
# code has computed its state, which it first does when the document is ready, and no image
# record is on its way (loading or decoding): the opening state, views A-D, drawn.
OPENED_JS = """() => {
  const doc = window.Bokeh && Bokeh.documents[0];
  return !!(doc && doc.is_idle && doc.get_model_by_name("state")?.data.image?.length
            && !(window.jaxvitRecords && window.jaxvitRecords.pending > 0));
}"""
# True once, besides, the views drawn after the opening state (E and F) are drawn.
DRAWN_JS = f"""() => ({OPENED_JS})() && !(window.jaxvitDeferred?.pending > 0)"""
# Resolves with the start time (performance.now()'s clock) of the second animation frame from
# now: BokehJS draws what changed in the first.
NEXT_FRAMES_JS = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"

# Find a model's view anywhere under the root views (views are created per model).
FIND_VIEW_JS = """
(name) => {
  const walk = function* (views) {
    for (const v of views) {
      yield v;
      if (v.child_views) yield* walk(v.child_views);
      if (v.renderer_views) yield* walk(v.renderer_views.values());
    }
  };
  for (const v of walk(Object.values(Bokeh.index))) if (v.model.name === name) return v;
  return null;
}
"""


class BrowserUnavailable(RuntimeError):
    """No usable headless Chromium (or Playwright) on this machine."""


def find_chromium(executable: str | os.PathLike | None = None) -> Path:
    """The Chromium binary: ``executable``, else ``$JAXVIT_CHROMIUM``, else the system's."""
    candidates = [
        executable,
        os.environ.get(CHROMIUM_ENV),
        *CHROMIUM_CANDIDATES,
        shutil.which("chromium"),
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    if executable is not None:
        raise BrowserUnavailable(f"no Chromium executable at {executable}")
    raise BrowserUnavailable(
        "no Chromium found (looked for $JAXVIT_CHROMIUM, "
        f"{', '.join(CHROMIUM_CANDIDATES)}); install it, e.g. `apt-get install chromium`"
    )


@contextlib.contextmanager
def chromium(executable: str | os.PathLike | None = None) -> Iterator[Any]:
    """A headless Chromium ``playwright`` Browser, closed on exit."""
    path = find_chromium(executable)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise BrowserUnavailable(
            "the Python package 'playwright' is needed to drive Chromium (pip install playwright; "
            "no browser download is needed)"
        ) from err
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(path), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_site(
    browser,
    path: str | os.PathLike,
    *,
    width: int = 1500,
    height: int = 1250,
    scale: float = 1.0,
    timeout_ms: float = 30000,
):
    """Open ``path`` in a new page and wait until its opening state is drawn; returns the page.

    The page records console errors and uncaught exceptions in ``page.site_errors``, console
    warnings in ``page.site_warnings``, and the URL of every request it makes in
    ``page.site_requests``.
    """
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
    errors: list[str] = []
    warnings: list[str] = []

    def console(message) -> None:
        if message.type == "error":
            errors.append(message.text)
        elif message.type == "warning":
            warnings.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.site_errors = errors
    page.site_warnings = warnings
    page.site_requests = []
    page.on("request", lambda request: page.site_requests.append(request.url))
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_function(DRAWN_JS, timeout=timeout_ms)
    wait_drawn(page, timeout_ms)
    return page


def wait_drawn(page, timeout_ms: float = 10000) -> None:
    """Wait for BokehJS to finish redrawing after a change (two animation frames, then idle)."""
    page.evaluate(NEXT_FRAMES_JS)
    page.wait_for_function(DRAWN_JS, timeout=timeout_ms)
