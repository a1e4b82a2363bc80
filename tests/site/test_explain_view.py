"""View F, the explanations of the analysis's kept stage, on the tiny model's run (``kinds_run``,
3 explained images): the areas' table is NumPy's mean and standard deviation of the part's areas,
the head panels draw the part's ``head_area_mean``, and a bundle without the part has no view F
(nor a bundle whose meta names other methods, which is refused by name). In Chromium, the page
shows the mean curves until an explained image is chosen, then that image's maps and curves as
the bundle holds them; a click on a head point chooses that head everywhere; nothing is cut or
off-screen at 1,280 and 1,920 px, and the console stays clean."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvit_interp.bundle import BundleError, ResultsBundle, load_bundle
from jaxvit_interp.site.browser import wait_drawn
from jaxvit_interp.site.document import build_document, build_site


@pytest.fixture(scope="module")
def explained(kinds_run, tmp_path_factory):
    """The run's bundle and its site, built once for the module."""
    bundle = load_bundle(kinds_run[-1])
    return bundle, build_site(bundle, tmp_path_factory.mktemp("explain_site"))


def test_the_view_shows_the_part_and_only_with_it(explained):
    bundle, _ = explained
    part, meta = bundle["explanations"], bundle.meta["explanations"]
    doc = build_document(bundle)
    assert doc.get_model_by_name("view_F") is not None
    areas = doc.get_model_by_name("explain_areas").data
    assert areas["method"] == [*meta["methods"], "random order"]
    table = doc.get_model_by_name("explain_area_table").text
    for d, mode in enumerate(meta["modes"]):
        values = np.concatenate(
            [part["area"][:, :, d], part["random_area"][:, d, None]], axis=1
        ).astype(np.float64)
        mean, std = values.mean(axis=0), values.std(axis=0)
        np.testing.assert_allclose(areas[f"{mode}_mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(areas[f"{mode}_std"], std, rtol=1e-12)
        for m, s in zip(mean, std, strict=True):
            assert f"{m:.4f} ± {s:.4f}" in table
        heads = doc.get_model_by_name("heads").data
        np.testing.assert_array_equal(
            heads[f"explain_head_area_{mode}"], part["head_area_mean"][..., d].reshape(-1)
        )
    mean_curves = doc.get_model_by_name("explain_mean_curves").data
    np.testing.assert_allclose(
        mean_curves[f"insertion/{meta['methods'][-1]}"], part["curves"][:, -1, 1].mean(0), atol=1e-7
    )

    parts = {k: v for k, v in bundle.parts.items() if k != "explanations"}
    rest = {k: v for k, v in bundle.meta.items() if k != "explanations"}
    plain = build_document(ResultsBundle(meta=rest, parts=parts))
    assert plain.get_model_by_name("view_F") is None
    assert plain.get_model_by_name("explain_note") is None
    assert not any(k.startswith("explain") for k in plain.get_model_by_name("heads").data)

    wrong = {**bundle.meta, "explanations": {**meta, "methods": meta["methods"][:-1]}}
    with pytest.raises(BundleError, match="'explanations' must list .* methods"):
        build_document(ResultsBundle(meta=wrong, parts=bundle.parts))


def _isolated_head(site, plot: str, field: str) -> int:
    """The head whose point in ``plot`` lies farthest on the screen from every other one."""
    heads = site.data("heads")
    xy = np.array([site.screen_xy(plot, x, y) for x, y in zip(heads["value"], heads[field])])
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.diag([np.inf] * len(xy))
    return int(np.argmax(gaps.min(axis=1)))


def _layout_problems(site) -> list[str]:
    """What is cut or off-screen at a 1,280 px window's width and at a 1,920 px one's."""
    problems = []
    for width in (1280, 1920):
        site.page.set_viewport_size({"width": width, "height": 900})
        site.page.wait_for_timeout(200)  # BokehJS lays the page out again after a resize
        wait_drawn(site.page)
        problems += [f"{width} px: {problem}" for problem in site.layout_problems()]
    return problems


@pytest.mark.slow
def test_the_page_shows_each_explained_image(explained, open_page):
    bundle, path = explained
    part, meta = bundle["explanations"], bundle.meta["explanations"]
    methods, modes = meta["methods"], meta["modes"]
    ids = bundle.meta["image_ids"]
    site = open_page(path, width=1280, height=900)
    assert site.problems == []
    # No image chosen: the mean curves, and a note naming the explained images.
    note = site.text("explain_note")
    assert note.startswith(f"{len(part['image_index'])} images were explained: ")
    assert all(str(ids[i]) in note for i in part["image_index"])
    curves = site.data("explain_curves")
    np.testing.assert_allclose(curves[f"deletion/{methods[0]}"], part["curves"][:, 0, 0].mean(0),
                               atol=1e-6)  # fmt: skip
    assert _layout_problems(site) == []

    row = int(np.random.default_rng().integers(len(part["image_index"])))
    image = int(part["image_index"][row])
    site.set_selected("images", [image])
    cells = site.data("explain_cells")
    for m in range(len(methods)):
        # float16 in the bundle, float32 on the page: the same numbers.
        np.testing.assert_array_equal(cells[f"heat_{m}"], part["maps"][row, m].reshape(-1))
        assert min(cells[f"alpha_{m}"]) >= 0.1
    curves = site.data("explain_curves")
    for d, mode in enumerate(modes):
        for m, method in enumerate(methods):
            np.testing.assert_allclose(curves[f"{mode}/{method}"], part["curves"][row, m, d],
                                       rtol=1e-6)  # fmt: skip
        np.testing.assert_allclose(curves[f"{mode}/random"], part["random_curves"][row, d],
                                   rtol=1e-6)  # fmt: skip
        assert site.prop(f"explain_curves_title_{mode}", "text") == f"{mode}: image {ids[image]}"
    assert len(site.data("explain_photo")["image"]) == 1
    assert site.text("explain_note").startswith(f"Image {ids[image]}: ")
    assert _layout_problems(site) == []

    # An image that was not explained: no maps, the mean curves again.
    other = next(i for i in range(len(ids)) if i not in part["image_index"])
    site.set_selected("images", [other])
    assert max(site.data("explain_cells")["alpha_0"]) == 0
    assert site.text("explain_note").startswith(f"Image {ids[other]} was not explained")
    assert site.data("explain_curves") == site.data("explain_mean_curves")

    # A click on a head's point chooses that head in every view.
    field = "explain_head_area_insertion"
    k = _isolated_head(site, "explain_heads_insertion", field)
    if k == site.state()["head"]:
        site.set_selected("heads", [(k + 1) % len(site.data("heads")["value"])])
    heads = site.data("heads")
    site.click("explain_heads_insertion", heads["value"][k], heads[field][k])
    assert site.selected("heads") == [k] and site.state()["head"] == k
    near = site.pixels_near("explain_heads_insertion", heads["value"][k], heads[field][k], 8)
    assert (np.abs(near.astype(int) - [214, 39, 40]).sum(axis=-1) < 60).any()
    # Its x axis names B1's metric, whose values it draws.
    label = site.prop("explain_heads_x_axis_insertion", "axis_label")
    assert label.startswith(f"importance: {site.prop('metric_select', 'value')}\n")
    assert _layout_problems(site) == []
    assert site.problems == []
