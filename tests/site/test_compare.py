"""Several runs on one comparison site: summaries against slow NumPy references, the page in
Chromium (a run compared with itself draws identical curves; runs of other depths, patch sizes,
image sizes and special tokens draw on one relative depth axis), the model menu's links, and the
runs refused before anything is written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sitepage import open_comparison_page

from jaxvit_interp.bundle import INDEX_FILE as BUNDLE_INDEX
from jaxvit_interp.cli import main
from jaxvit_interp.compare import match_images, summarize_run
from jaxvit_interp.errors import InputError
from jaxvit_interp.site.browser import FIND_VIEW_JS
from jaxvit_interp.site.comparison import (
    MODELS_DIR,
    build_comparison_document,
    build_comparison_site,
)
from jaxvit_interp.site.synthetic import synthetic_bundle


def _reference(bundle) -> dict:
    """The comparison's values of one bundle, by loops over heads and tokens."""
    strength, importance = bundle["strength"], bundle["importance"]
    L, H = strength["head_entropy_mean"].shape
    entropy, distance, hop = [], [], []
    for layer in range(L):
        hops = []
        for head in range(H):
            s = [float(v) for v in strength["strength_mean"][layer, head]]
            hops.append(sum(k * v for k, v in enumerate(s)) / sum(s))
        entropy.append(sum(float(v) for v in strength["head_entropy_mean"][layer]) / H)
        distance.append(sum(float(v) for v in strength["distance_mean"][layer]) / H)
        hop.append(sum(hops) / H)
    metric = "prob_drop" if "prob_drop_mean" in importance else "repr"
    values = sorted((abs(float(v)) for v in importance[f"{metric}_mean"].ravel()), reverse=True)
    share = [sum(values[:k]) / sum(values) for k in range(len(values) + 1)]
    special: dict[str, float] = {}
    for t, name in enumerate(bundle.meta["special_tokens"]):
        kind = "registers" if name.startswith("register_") else name
        mass = float(strength["special_to_mean"][:, :, t].mean())
        special[kind] = special.get(kind, 0.0) + mass
    return {
        "depth": [(layer + 0.5) / L for layer in range(L)],
        "entropy": entropy,
        "distance": distance,
        "hop": hop,
        "fraction": [k / (L * H) for k in range(L * H + 1)],
        "share": share,
        "special": special,
    }


@pytest.fixture(scope="module")
def runs(site_seed):
    """Three small runs unlike each other: a ViT of patch 16 with a head-set stage, a deeper
    DeiT-like one of patch 14 with a distillation token, and a backbone with registers and no
    CLS token on other images."""
    rng = np.random.default_rng(site_seed)
    return {
        "vit": synthetic_bundle(
            rng, num_layers=3, num_heads=2, grid=(3, 3), patch_size=16, set_images=8
        ),
        "deit": synthetic_bundle(
            rng, num_layers=5, num_heads=3, grid=(4, 4), patch_size=14, distillation_token=True
        ),
        "dino": synthetic_bundle(
            rng,
            num_layers=4,
            num_heads=2,
            grid=(4, 3),
            has_cls=False,
            num_registers=2,
            num_classes=0,
            image_ids=[f"other-{i}" for i in range(40)],
        ),
    }


def test_summaries_match_a_slow_reference(runs):
    for name, bundle in runs.items():
        summary, want = summarize_run(bundle), _reference(bundle)
        for field in ("depth", "entropy", "distance", "hop"):
            np.testing.assert_allclose(summary.layers[field], want[field], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(summary.spread["fraction"], want["fraction"], err_msg=name)
        np.testing.assert_allclose(summary.spread["share"], want["share"], rtol=1e-9)
        assert summary.special.keys() == want["special"].keys()
        for kind, mass in want["special"].items():
            assert math.isclose(summary.special[kind], mass, rel_tol=1e-6), (name, kind)
    assert summarize_run(runs["dino"]).metric == "repr"
    assert set(summarize_run(runs["dino"]).special) == {"registers"}


def test_the_table_counts_the_heads_carrying_half_the_importance(runs):
    names = list(runs)
    doc = build_comparison_document(list(runs.values()), names, names)
    table = doc.get_model_by_name("compare_table").text
    for name, bundle in runs.items():
        share = _reference(bundle)["share"]
        heads = len(share) - 1
        carrying = next(k for k, v in enumerate(share) if v >= 0.5)
        metric = "repr" if name == "dino" else "prob_drop"
        assert f"{carrying} of {heads} ({metric})" in table, name


def test_removable_heads_come_from_the_head_set_curves(runs):
    part = runs["vit"]["head_sets"]
    removable = summarize_run(runs["vit"]).removable
    assert removable is not None and "importance" in removable
    first = int(np.flatnonzero(part["curve_order"] == 0)[0])  # CURVE_ORDERS[0]: importance
    for q, point in enumerate(part["removable_points"]):
        assert removable["importance"][float(point)] == part["curve_removable"][first, q]
    assert summarize_run(runs["deit"]).removable is None  # no head-set stage


def test_images_are_matched_by_id():
    assert match_images([["a", "b"], ["b", "a"]]).same
    some = match_images([["a", "b", "c"], ["c", "x", "a"]])
    assert some.shared == ["a", "c"] and not some.same and not some.distributions_only
    assert match_images([["a"], ["b"]]).distributions_only


def _note(page) -> str:
    """What the page says of the runs' images."""
    return page.evaluate("() => Bokeh.documents[0].get_model_by_name('images_note').text")


def _source(page, name: str) -> dict:
    return page.evaluate(
        """(name) => {
          const d = Bokeh.documents[0].get_model_by_name(name).data;
          return Object.fromEntries(Object.entries(d).map(([k, v]) => [k, Array.from(v)]));
        }""",
        name,
    )


@pytest.mark.slow
def test_a_run_compared_with_itself_draws_identical_curves(runs, browser, tmp_path):
    bundle = runs["vit"]
    index = build_comparison_site(
        [bundle, bundle], tmp_path / "site", names=["a", "a<b>"], shared_patterns=False
    )  # the shared pattern space: tests/site/test_compare_shared.py
    page = open_comparison_page(browser, index)
    try:
        want = _reference(bundle)
        for kind, fields in (("layers", ("depth", "entropy", "distance", "hop")),
                             ("spread", ("fraction", "share"))):  # fmt: skip
            first, second = _source(page, f"{kind}_0"), _source(page, f"{kind}_1")
            assert first == second
            for field in fields:
                np.testing.assert_allclose(first[field], want[field], rtol=1e-6)
        special = _source(page, "special")
        assert special["mass"][0::2] == special["mass"][1::2]  # each kind: a's bar, a<b>'s
        assert page.problems == []
        assert "Every run saw the same 40 images" in _note(page)
    finally:
        page.close()


@pytest.mark.slow
def test_the_command_compares_unlike_runs_and_links_each_models_site(runs, browser, tmp_path):
    from jaxvit_interp.bundle import save_bundle

    folders = []
    for name, bundle in runs.items():
        folders.append(str(save_bundle(bundle, tmp_path / "runs" / name)))
    out = tmp_path / "site"
    command = ["site", *folders, "--out", str(out), "--layout", "single", "--no-shared-patterns"]
    assert main(command) == 0
    page = open_comparison_page(browser, out / "index.html")
    try:
        assert page.problems == []
        for i, bundle in enumerate(runs.values()):
            depth = _source(page, f"layers_{i}")["depth"]
            np.testing.assert_allclose(depth, _reference(bundle)["depth"])
        # The backbone ran on other images than the two classifiers.
        assert "The runs share no image" in _note(page)
        menu = page.evaluate(
            "() => Bokeh.documents[0].get_model_by_name('switcher').options.map((o) => o[0])"
        )
        links = page.evaluate(
            f"""() => {{
              const v = ({FIND_VIEW_JS})("model_links");
              return Array.from((v.el.shadowRoot || v.el).querySelectorAll("a[href]"), (a) => a.href);
            }}"""
        )
        want = [f"{MODELS_DIR}/{name}/index.html" for name in runs]
        assert menu[1:] == want
        assert [link.split("/site/", 1)[1] for link in links] == want
        for href in want:
            assert (out / href).is_file()
        page.evaluate(
            "() => { Bokeh.documents[0].get_model_by_name('switcher').value = "
            f"{json.dumps(want[2])}; }}"
        )
        page.wait_for_url(f"**/{want[2]}")
        page.wait_for_function(
            "() => Bokeh.documents[0]?.get_model_by_name('state')?.data.image?.length"
        )
        assert page.problems == []
    finally:
        page.close()


def test_runs_that_cannot_be_compared_are_refused_before_anything_is_written(
    runs, tmp_path, capsys
):
    from jaxvit_interp.bundle import save_bundle

    good = save_bundle(runs["vit"], tmp_path / "good")
    old = save_bundle(runs["dino"], tmp_path / "old")
    index = json.loads((old / BUNDLE_INDEX).read_text())
    (old / BUNDLE_INDEX).write_text(json.dumps({**index, "version": 2}))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a bundle")
    out = tmp_path / "site"
    for runs_given, named in (([good, old], "old"), ([plain, good], "plain")):
        assert main(["site", *map(str, runs_given), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert f"run {tmp_path / named}" in error and "\n" not in error.strip()
        assert not out.exists()
    with pytest.raises(InputError, match="at least two runs"):
        build_comparison_site([runs["vit"]], out)
    with pytest.raises(InputError, match="run b is not a results bundle"):
        build_comparison_site([runs["vit"], {"meta": {}}], out, names=["a", "b"])
    assert not out.exists()


def test_build_site_given_several_bundles_writes_their_comparison(runs, tmp_path):
    from jaxvit_interp.site import build_site

    first, second = runs["vit"], runs["dino"]
    index = build_site([first, second], tmp_path / "site", layout="single", shared_patterns=False)
    assert index == tmp_path / "site" / "index.html"
    for page in ("index.html", "images.html", "models/run-1/index.html", "models/run-2/index.html"):
        assert (tmp_path / "site" / page).is_file()
    assert not (tmp_path / "site" / "patterns.html").exists()
    # Each run's own site is the single-model site, with its link back to the comparison.
    assert (
        "back to the comparison of 2 models"
        in (tmp_path / "site/models/run-1/index.html").read_text()
    )
    with pytest.raises(InputError, match="back_link"):
        build_site([first, second], tmp_path / "other", back_link=("../x.html", "x"))
    assert not (tmp_path / "other").exists()
