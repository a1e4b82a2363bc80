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
    note = doc.get_model_by_name("patching_note").text
    assert f"{len(part['pairs'])} pairs" in note and f"{int(part['defined'].sum())} pairs" in note
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
    assert site.layout_problems() == []
    assert site.problems == []
