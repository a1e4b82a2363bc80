"""The comparison page's shared pattern space in Chromium: a run compared with itself, where
every head's nearest head in the other copy is itself and choosing a head selects its nearest
heads in the other runs; runs without CLS or without stored attention said so on the page; the
command's default, the stored space read back without training, and --no-shared-patterns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sitepage import open_comparison_page

from jaxvit_interp.bundle import save_bundle
from jaxvit_interp.cli import main
from jaxvit_interp.patterns import AutoencoderSettings
from jaxvit_interp.patterns import shared as shared_module
from jaxvit_interp.patterns.shared import SHARED_DIR, SharedPatternSettings, load_or_compute
from jaxvit_interp.site import comparison
from jaxvit_interp.site.browser import FIND_VIEW_JS
from jaxvit_interp.site.comparison import build_comparison_document
from jaxvit_interp.site.synthetic import synthetic_bundle

TINY = SharedPatternSettings(
    images_per_run=6,
    clusters=3,
    projection="tsne",
    neighbours=2,
    autoencoder=AutoencoderSettings(latent_dim=4, features=(8,), batch_size=32, max_epochs=4),
)


@pytest.fixture(scope="module")
def bundle(site_seed):
    return synthetic_bundle(
        np.random.default_rng(site_seed), num_layers=3, num_heads=2, grid=(4, 4), patch_size=16
    )


def _selected(page, name: str) -> list[int]:
    return page.evaluate(
        "(n) => Array.from(Bokeh.documents[0].get_model_by_name(n).selected.indices)", name
    )


def _stub_site(bundle, out_dir, **options):
    """Each run's own site, left out: these tests read the comparison page only."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)


@pytest.mark.slow
def test_a_run_compared_with_itself_is_nearest_to_itself(
    bundle, browser, tmp_path, capsys, monkeypatch
):
    """The command on a run, its copy, a backbone without CLS (registers, a 3x3 grid) and a run
    without stored attention: each head of the copy is nearest to itself, choosing a head
    selects its nearest heads in the other runs, and the page says what is left out."""
    rng = np.random.default_rng()
    backbone = synthetic_bundle(
        rng, num_layers=2, num_heads=2, grid=(3, 3), has_cls=False, num_registers=1, num_classes=0
    )
    bare = synthetic_bundle(rng, num_layers=2, num_heads=2, grid=(3, 3))
    del bare.parts["attention"]
    runs = {"a": bundle, "b": bundle, "dino": backbone, "bare": bare}
    folders = [str(save_bundle(b, tmp_path / "runs" / n)) for n, b in runs.items()]
    out = tmp_path / "site"
    monkeypatch.setattr(comparison, "build_site", _stub_site)
    with pytest.MonkeyPatch.context() as patch:
        # The command's default settings, made tiny here to keep the test short.
        patch.setattr(shared_module, "SharedPatternSettings", lambda: TINY)
        assert main(["site", *folders, "--out", str(out)]) == 0
    assert (
        f"shared pattern space computed and stored in {out / SHARED_DIR}" in capsys.readouterr().err
    )

    # Read back, not trained again: training now fails the test.
    def fail(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(shared_module, "train_autoencoder", fail)
    space = load_or_compute(list(runs.values()), list(runs), out / SHARED_DIR, TINY)
    assert space.reused and set(space.kinds) == {"cls", "patch"} and space.grid == (3, 3)
    assert space.kinds["cls"].runs == [0, 1] and space.kinds["patch"].runs == [0, 1, 2]
    L, H = space.dims[0]
    for kind in space.kinds:
        found = space.nearest(kind)
        for pair in ((0, 1), (1, 0)):
            index, distance = found[pair]
            np.testing.assert_array_equal(index[:, 0], np.arange(L * H))
            np.testing.assert_array_equal(distance[:, 0], 0.0)
        tables = space.table(kind)
        np.testing.assert_array_equal(tables[0], tables[1])
        assert tables[0].sum() == L * H

    assert "patterns.html" in (out / "index.html").read_text()  # the summary links to it
    page = open_comparison_page(browser, out / "patterns.html")
    try:
        note = page.evaluate(
            "() => Bokeh.documents[0].get_model_by_name('shared_patterns_note').text"
        )
        assert f"Computed and stored in {out / SHARED_DIR}" in note
        assert "No stored attention, so no patterns: bare." in note
        assert "No CLS token, so no CLS patterns: dino." in note
        found = space.nearest("patch")
        for head in (0, L * H - 1, 3):
            page.evaluate(
                "(h) => { Bokeh.documents[0].get_model_by_name('shared_patch_grid_0')"
                ".selected.indices = [h]; }",
                head,
            )
            page.wait_for_timeout(50)  # any change event Bokeh delivers later has arrived
            assert _selected(page, "shared_patch_grid_0") == [head]  # the choice stays
            chosen = [_selected(page, f"shared_patch_grid_{r}") for r in (1, 2)]
            assert chosen[0] == sorted(found[(0, 1)][0][head].tolist()) and head in chosen[0]
            assert chosen[1] == sorted(found[(0, 2)][0][head].tolist())
            # The embedding selects them all: each run's heads after the one before's.
            offsets = [0, L * H, 2 * L * H]
            want = [head] + [offsets[r] + n for r, c in zip((1, 2), chosen) for n in c]
            assert _selected(page, "shared_patch_heads") == want
        # A real tap on run a's head (layer 2, head 1).
        plot = "shared_patch_gridfig_0"
        page.evaluate(f"(n) => ({FIND_VIEW_JS})(n).el.scrollIntoView({{block: 'center'}})", plot)
        x, y = page.evaluate(
            f"""(n) => {{
              const v = ({FIND_VIEW_JS})(n);
              const r = v.canvas_view.el.getBoundingClientRect();
              return [r.left + v.frame.x_scale.compute(1), r.top + v.frame.y_scale.compute(2)];
            }}""",
            plot,
        )
        page.wait_for_timeout(350)  # not a double tap with the last
        page.mouse.click(x, y)
        head = 2 * H + 1
        page.wait_for_function(
            "(h) => Bokeh.documents[0].get_model_by_name('shared_patch_grid_0')"
            ".selected.indices[0] === h",
            arg=head,
        )
        assert _selected(page, "shared_patch_grid_1") == sorted(found[(0, 1)][0][head].tolist())
        assert page.problems == []
    finally:
        page.close()

    skipped = tmp_path / "skipped"
    assert main(["site", *folders[:2], "--out", str(skipped), "--no-shared-patterns"]) == 0
    assert not (skipped / SHARED_DIR).exists()
    assert not (skipped / "patterns.html").exists()
    assert "patterns.html" not in (skipped / "index.html").read_text()


def test_the_summary_links_the_pattern_page_only_when_there_is_one(bundle):
    def links(**options):
        doc = build_comparison_document([bundle, bundle], ["a", "b"], ["a", "b"], **options)
        return doc.get_model_by_name("compare_title").text

    assert "patterns.html" not in links()
    assert 'href="patterns.html"' in links(patterns_page=True)
    assert 'href="images.html"' in links()
