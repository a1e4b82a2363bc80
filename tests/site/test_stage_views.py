"""Views B4 and B5, the Shapley values and the activation patching of the analysis's kept
stages: each in the page with its bundle part (B4's points the bundle's values, stderr and single
drops, the shaded heads its ``disagree``; B5's the mean scores of both directions), absent
without it; in Chromium a click on a point of either chooses its head, the chosen head is
outlined, and nothing is off-screen or cut at 1,280 and 1,920 px."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvit_interp.bundle import ResultsBundle, load_bundle
from jaxvit_interp.site.document import build_document, build_site


def _without(bundle: ResultsBundle, *names: str) -> ResultsBundle:
    parts = {k: v for k, v in bundle.parts.items() if k not in names}
    return ResultsBundle(meta={k: v for k, v in bundle.meta.items() if k not in names}, parts=parts)


def test_the_panel_shows_the_part_and_only_with_it(kinds_run):
    bundle = load_bundle(kinds_run[-1])
    part = bundle["shapley"]
    doc = build_document(bundle)
    assert doc.get_model_by_name("shapley_plot") is not None
    heads = doc.get_model_by_name("heads").data
    for name in ("values", "stderr", "single_drop"):
        np.testing.assert_allclose(heads[f"shapley/{name}"], part[name].reshape(-1), atol=1e-7)
    np.testing.assert_allclose(
        heads["shapley_high"] - heads["shapley_low"], 2 * part["stderr"].reshape(-1), atol=1e-6
    )
    marked = doc.get_model_by_name("shapley_disagree").data["x"]
    np.testing.assert_array_equal(marked, np.flatnonzero(part["disagree"].reshape(-1)))
    note = doc.get_model_by_name("shapley_note").text
    assert f"over {len(part['image_index'])} images with the mean ablation" in note
    assert f"v(all) = {float(part['v_all']):.4f}" in note

    plain = build_document(_without(bundle, "shapley"))
    assert plain.get_model_by_name("shapley_plot") is None
    assert plain.get_model_by_name("shapley_note") is None
    assert not any(k.startswith("shapley") for k in plain.get_model_by_name("heads").data)
    assert plain.get_model_by_name("patching_plot") is not None


def test_the_patching_panel_shows_the_part_and_only_with_it(kinds_run):
    bundle = load_bundle(kinds_run[-1])
    part = bundle["patching"]
    doc = build_document(bundle)
    assert doc.get_model_by_name("patching_plot") is not None
    heads = doc.get_model_by_name("heads").data
    for direction in ("denoising", "noising"):
        name = f"patching/{direction}_score_mean"
        want = part[f"{direction}_score_mean"].reshape(-1)
        np.testing.assert_allclose(heads[name], want, atol=1e-7)
        # What B5 opens with: the means, in the columns the page rewrites for a chosen pair.
        np.testing.assert_allclose(heads[f"patching_shown_{direction}"], want, atol=1e-7)
    note = doc.get_model_by_name("patching_note").text
    assert f"{len(part['pairs'])} pairs" in note and f"{int(part['defined'].sum())} pairs" in note
    # The menu: the mean, then every pair by its images' ids, the unscored ones said so.
    menu = doc.get_model_by_name("patching_pair")
    ids = bundle.meta["image_ids"]
    assert menu.value == "mean"
    assert menu.options[0] == ("mean", f"mean over the {int(part['defined'].sum())} scored pairs")
    assert [value for value, _ in menu.options[1:]] == [str(p) for p in range(len(part["pairs"]))]
    for (_, label), (clean, corrupt), scored in zip(
        menu.options[1:], part["pairs"], part["defined"], strict=True
    ):
        assert f"{ids[clean]} -> {ids[corrupt]}" in label
        assert ("not scored" in label) == (not scored)
    plain = build_document(_without(bundle, "patching"))
    assert plain.get_model_by_name("patching_plot") is None
    assert not any(k.startswith("patching") for k in plain.get_model_by_name("heads").data)


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 1920])
def test_a_click_on_a_point_chooses_its_head(kinds_run, open_page, tmp_path, width):
    bundle = load_bundle(kinds_run[-1])
    part = bundle["shapley"]
    site = open_page(build_site(bundle, tmp_path / "site"), width=width, height=900)
    assert site.problems == []
    assert site.prop("shapley_plot", "name") == "shapley_plot"
    values = part["values"].reshape(-1)
    start = site.state()["head"]
    k = next(j for j in range(len(values)) if j != start)
    site.click("shapley_plot", k - 0.18, float(values[k]))
    assert site.selected("heads") == [k] and site.state()["head"] == k
    # The chosen head is drawn outlined in red: its selection glyph.
    near = site.pixels_near("shapley_plot", k - 0.18, float(values[k]), radius=8)
    assert (np.abs(near.astype(int) - [214, 39, 40]).sum(axis=-1) < 60).any()
    # B5: a click on a head's noising score chooses that head.
    noising = bundle["patching"]["noising_score_mean"].reshape(-1)
    j = next(i for i in range(len(noising)) if i != k and np.isfinite(noising[i]))
    site.click("patching_plot", j + 0.18, float(noising[j]))
    assert site.selected("heads") == [j] and site.state()["head"] == j
    # B5's menu: one pair's own scores in both directions, its ids in the title; then the means.
    patching = bundle["patching"]
    pair = int(np.random.default_rng().integers(len(patching["pairs"])))
    menu = site.page.locator("select", has=site.page.locator("option", has_text="pair 1:"))
    menu.select_option(index=pair + 1)
    site.page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('patching_title').text.includes('pair')"
    )
    heads = site.data("heads")
    ids = bundle.meta["image_ids"]
    clean, corrupt = patching["pairs"][pair]
    for direction in ("denoising", "noising"):
        np.testing.assert_allclose(
            np.asarray(heads[f"patching_shown_{direction}"], np.float64),
            patching[f"{direction}_score"][pair].reshape(-1),
            atol=1e-6,
        )
    # Another head chosen: the chosen pair's scores stay (the menu, not the head, picks them).
    site.set_selected("heads", [k])
    np.testing.assert_allclose(
        np.asarray(site.data("heads")["patching_shown_denoising"], np.float64),
        patching["denoising_score"][pair].reshape(-1),
        atol=1e-6,
    )
    assert site.state()["patching_pair"] == str(pair)
    title = site.prop("patching_title", "text")
    assert f"pair {pair + 1}: {ids[clean]} -> {ids[corrupt]}" in title, title
    assert f"{float(patching['prob_clean'][pair]):.3f} clean" in title, title
    menu.select_option(index=0)
    site.page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('patching_title').text.includes('mean')"
    )
    np.testing.assert_allclose(
        np.asarray(site.data("heads")["patching_shown_noising"], np.float64), noising, atol=1e-6
    )
    assert site.layout_problems() == []
    assert site.problems == []
