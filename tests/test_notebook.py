"""The notebook views: bad arguments, what a head's view shows against the model itself, and the
shipped example notebook run top to bottom on a Jupyter kernel, its outputs checked, then exported
as HTML and opened in headless Chromium."""

import html
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import jaxvit_interp as jvi
from jaxvit_interp import notebook
from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.errors import InputError
from jaxvit_interp.quantities import metric
from jaxvit_interp.summary import number

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "explore.ipynb"
# The example's run folder, relative to the folder it runs in.
EXAMPLE_RUN = "runs/digits-notebook"
SHOW_CALLS = ("jvi.show(", "jvi.show_head(", "jvi.show_image(", "jvi.show_pruning_curves(")
NETWORK_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)
# True once a view's frame has BokehJS's one document built and drawn.
FRAME_DRAWN_JS = "() => !!(window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].is_idle)"
# The plots a frame's BokehJS has drawn (a view per model; a plot's has a canvas).
PLOTS_DRAWN_JS = """() => {
  let plots = 0;
  const walk = (views) => {
    for (const v of views) {
      if (v.canvas_view !== undefined) plots++;
      if (v.child_views) walk(v.child_views);
    }
  };
  walk(Object.values(Bokeh.index));
  return plots;
}"""


@pytest.fixture(scope="module")
def digits_bundle(digits_head_sets_run):
    """The session's digits run (24 images, attention stored for 2) as a bundle."""
    return jvi.load_bundle(digits_head_sets_run[-1])


def test_bad_arguments_are_named(digits_bundle, tmp_path, rng):
    dims = digits_bundle.dims()
    layer = int(rng.integers(dims["L"], 3 * dims["L"]))
    with pytest.raises(InputError, match=f"layer {layer} is out of range: the model has 6"):
        jvi.show_head(digits_bundle, layer, 0)
    head = -int(rng.integers(1, 5))
    with pytest.raises(InputError, match=f"head {head} is out of range"):
        jvi.show_head(digits_bundle, 0, head)
    with pytest.raises(InputError, match="layer must be a whole number, got True"):
        jvi.show_head(digits_bundle, True, 0)
    with pytest.raises(InputError, match="head must be a whole number, got 1.5"):
        jvi.show_head(digits_bundle, 0, 1.5)
    unknown = f"img-{rng.integers(1000)}"
    with pytest.raises(InputError, match=f"unknown image id '{unknown}'.*'0', '1'"):
        jvi.show_image(digits_bundle, unknown)
    with pytest.raises(InputError, match="image 24 is out of range: the bundle has 24 images"):
        jvi.show_head(digits_bundle, 0, 0, image=24)
    with pytest.raises(InputError, match=f"{re.escape(str(tmp_path))} is not a results bundle"):
        jvi.show(tmp_path)
    with pytest.raises(InputError, match="expected a ResultsBundle or the path .* got int 3"):
        jvi.show_image(3, 0)
    without = ResultsBundle(
        digits_bundle.meta, {k: v for k, v in digits_bundle.parts.items() if k != "head_sets"}
    )
    with pytest.raises(InputError, match="no pruning curves \\(no 'head_sets' part"):
        jvi.show_pruning_curves(without)
    with pytest.raises(InputError, match="takes no layout option"):
        jvi.show(digits_bundle, layout="folder")


def test_head_view_matches_the_model(digits_head_sets_run, digits_bundle, rng):
    """A head's pattern is the model's own CLS attention (within the stored code's error), its
    numbers the bundle's, its ranks those of a count of the heads ahead of it."""
    config, params, images, *_ = digits_head_sets_run
    stored = digits_bundle["attention"]
    rows = np.asarray(stored["image_index"])
    layer, head = int(rng.integers(config.num_layers)), int(rng.integers(config.num_heads))
    attention = np.asarray(jvi.run_model(config, params, images[rows]).attention)
    cls_rows = attention[:, layer, head, 0, 1:].reshape(len(rows), 8, 8)
    tolerance = float(stored["error_max"][layer, head]) + 1e-6
    for position, image in enumerate(rows):
        pattern, what = notebook.head_pattern(digits_bundle, layer, head, int(image))
        assert what == f"image {digits_bundle.meta['image_ids'][image]!r}"
        np.testing.assert_allclose(pattern, cls_rows[position], atol=tolerance)
    pattern, what = notebook.head_pattern(digits_bundle, layer, head, None)
    assert what == f"mean over {len(rows)} images with stored attention"
    np.testing.assert_allclose(pattern, cls_rows.mean(axis=0), atol=tolerance)
    others = sorted(set(range(len(images))) - set(rows.tolist()))
    pattern, what = notebook.head_pattern(digits_bundle, layer, head, others[0])
    assert pattern is None and "no attention stored for image" in what

    image = int(rng.integers(len(images)))
    table = notebook.head_numbers(digits_bundle, layer, head, image)
    for name, value, rank in zip(table["quantity"], table["value"], table["rank"]):
        if ":" not in name:
            continue  # entropy and distance: no rank
        name = name.split(":")[0]
        values = digits_bundle["importance"][name][image]
        mine = values[layer, head]
        ahead = values > mine if metric(name).important_high else values < mine
        assert value == number(mine)
        # Ties keep layer-major order: the heads before it with the same value are ahead too.
        tied = (values == mine).reshape(-1)[: layer * config.num_heads + head].sum()
        assert rank == f"{int(ahead.sum() + tied) + 1} of {values.size}"
    strength = digits_bundle["strength"]["strength"][image, layer, head]
    np.testing.assert_array_equal(
        notebook.head_strength(digits_bundle, layer, head, image), strength
    )


def _display_outputs(cell) -> list[str]:
    return [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]


@pytest.fixture(scope="module")
def executed_example(digits_head_sets_run, tmp_path_factory):
    """The shipped notebook executed as a reader would (a python3 kernel, in a fresh folder):
    ``(the executed notebook, its folder)``. The session's digits run has the example's images
    and settings; copied to the example's run folder, it is the run a reader finds there on a
    second pass, so ``analyze`` resumes it (every stage found complete, the bundle read back)
    rather than computing it again: the analysis itself is tested with the library."""
    import nbformat
    from nbclient import NotebookClient

    work = tmp_path_factory.mktemp("reader")
    shutil.copy(EXAMPLE, work)
    shutil.copytree(digits_head_sets_run[-1], work / EXAMPLE_RUN)
    nb = nbformat.read(work / EXAMPLE.name, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells), "the example is shipped without outputs"
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    return nb, work


@pytest.mark.slow
def test_example_notebook_shows_every_view(executed_example):
    """No errors; each view an inline page with its Bokeh document and nothing from the
    network; the head shown is the one the bundle ranks first."""
    nb, work = executed_example
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    bundle = jvi.load_bundle(work / EXAMPLE_RUN)
    # The example's head, found again: the highest mean prob_drop (first in layer-major order).
    drops = bundle["importance"]["prob_drop_mean"]
    layer, head = np.argwhere(drops == drops.max())[0]
    shown = [c for c in nb.cells if any(call in c.source for call in SHOW_CALLS)]
    assert len(shown) == 5
    pages = []
    for cell in shown:
        (output,) = _display_outputs(cell)
        assert output.startswith('<iframe srcdoc="'), output[:100]
        page = html.unescape(output.split('srcdoc="', 1)[1].split('"', 1)[0])
        assert "cdn.bokeh.org" not in page and not NETWORK_SCRIPT.search(page)
        assert 'type="application/json"' in page  # the Bokeh document, inline
        pages.append(page)
    site, mean_head, image_head, image, curves = pages
    assert "jaxvitRecord(" in site  # the page's records, inline
    for page in (mean_head, image_head):
        assert f"<title>head L{layer} H{head}</title>" in page
    assert "mean over 2 images with stored attention" in mean_head
    assert "image_rollout" in image and "heads removed" in curves


@pytest.mark.slow
def test_example_notebook_export_opens_in_chromium(executed_example, browser):
    """The executed notebook exported as HTML (nbconvert's lab template) and opened with the
    network cut: every view's frame draws its plots, the site's code computes its state, with
    no error and no request from a view."""
    from nbconvert import HTMLExporter

    from jaxvit_interp.site.browser import DRAWN_JS

    nb, work = executed_example
    exported, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    path = work / "explore.html"
    path.write_text(exported, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors, network = [], []

    def console(message):
        # nbconvert's own template asks a CDN for MathJax and require.js: cut off here.
        if message.type == "error" and not message.location.get("url", "").startswith("http"):
            errors.append(message.text)

    def request(route):
        if route.request.url.startswith(("http:", "https:")):
            network.append((route.request.frame.url, route.request.url))
            return route.abort()
        return route.continue_()

    page.on("console", console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", request)
    try:
        page.goto(path.resolve().as_uri())
        frames = [f for f in page.frames if f.url == "about:srcdoc"]
        assert len(frames) == 5
        plots = []
        for frame in frames:
            frame.wait_for_function(FRAME_DRAWN_JS, timeout=60000)
            plots.append(frame.evaluate(PLOTS_DRAWN_JS))
        frames[0].wait_for_function(DRAWN_JS, timeout=60000)
        assert all(count > 0 for count in plots), plots
        assert plots[0] > 10, plots  # the site's views
        assert not errors, errors
        assert not [url for frame, url in network if frame == "about:srcdoc"], network
    finally:
        page.close()
