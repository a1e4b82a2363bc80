"""View E: the interactions and pruning curves of the analysis's head-set stage, and the class x
head map, on the digits model's site; a bundle without the stage shows the class map only."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvit_interp.bundle import ResultsBundle, load_bundle
from jaxvit_interp.quantities import CLASS_TOP_HEADS
from jaxvit_interp.site.browser import FIND_VIEW_JS
from jaxvit_interp.site.document import build_document, build_site
from jaxvit_interp.site.views.head_sets import class_map_tables, class_rows


def _scroll_to(site, name: str) -> None:
    """Bring a view on screen: a real click only reaches what the window shows."""
    site.page.evaluate(f"(n) => ({FIND_VIEW_JS})(n).el.scrollIntoView()", name)


@pytest.mark.slow
def test_digits_site_interaction_click_chooses_the_pair(digits_head_sets_run, open_page, tmp_path):
    out = digits_head_sets_run[-1]
    bundle = load_bundle(out)
    part = bundle["head_sets"]
    site = open_page(build_site(bundle, tmp_path / "site"))
    assert site.problems == []
    for name in ("interaction_plot", "curves_accuracy_plot", "curves_prob_plot", "class_map_plot"):
        assert site.prop(name, "name") == name
    # The caption says what was measured and that greedy was skipped, and why.
    caption = site.text("curves_caption")
    assert "importance order" in caption and "random orders" in caption
    assert "greedy order skipped" in caption.lower() and "24 heads" in caption
    # The matrix shows the bundle's prob_drop interactions for the opening metric.
    cells = site.data("interaction_cells")
    np.testing.assert_allclose(cells["value"], part["interaction_prob_drop"].reshape(-1), atol=1e-6)

    H = bundle.meta["config"]["num_heads"]
    heads = part["interaction_heads"]
    first = [int(heads[i, 0] * H + heads[i, 1]) for i in range(len(heads))]
    # Row i, column j: a pair whose row head is not the head chosen now.
    start = site.state()["head"]
    i = next(n for n in range(1, len(heads)) if first[n] != start)
    j = 0
    _scroll_to(site, "interaction_plot")
    site.click("interaction_plot", j, i)
    assert site.selected("interaction_cells") == [i * len(heads) + j]
    assert site.selected("heads") == [first[i]] and site.state()["head"] == first[i]
    marks = site.data("pair_marks")
    assert sorted(zip(marks["y"], marks["x"])) == sorted(
        [tuple(map(int, heads[i])), tuple(map(int, heads[j]))]
    )
    # Choosing a head outside the pair lets the pair go.
    outside = next(
        k for k in range(len(site.data("heads")["index"])) if k not in (first[i], first[j])
    )
    site.set_selected("heads", [outside])
    assert site.selected("interaction_cells") == [] and site.data("pair_marks")["x"] == []
    assert site.problems == []


def test_class_map_is_class_specific_heads_and_old_bundles_have_no_head_sets(tiny_bundle):
    # The tiny synthetic bundle has no head_sets part: E shows the class map only.
    doc = build_document(tiny_bundle)
    assert doc.get_model_by_name("class_cells") is not None
    for name in ("interaction_cells", "curves", "curves_caption"):
        assert doc.get_model_by_name(name) is None, name
    # Each cell: the class's mean over its images minus the mean over all images, computed
    # here from the per-image values; prob's map is prob_drop's (its own class means are the
    # model's confidence in each class), and B's class means stay prob's.
    part, labels = tiny_bundle["importance"], tiny_bundle["images"]["labels"]
    tables = class_map_tables(tiny_bundle, ["prob", "kl"])
    shown = class_rows(part["class_counts"])
    assert {k for k in tables["cells"] if k.startswith(("spec_", "mean_"))} == {
        "spec_prob_drop", "spec_kl", "mean_prob", "mean_kl",
    }  # fmt: skip
    for metric in ("prob_drop", "kl"):
        values = np.asarray(part[metric], np.float64)
        want = np.stack([values[labels == c].mean(0) - values.mean(0) for c in shown])
        got = tables["cells"][f"spec_{metric}"].reshape(len(shown), -1)
        np.testing.assert_allclose(got, want.reshape(len(shown), -1), atol=1e-5)
        # Each row's dots: its class's most specific heads, most specific first.
        dots = []
        for row, spec in enumerate(want.reshape(len(shown), -1)):
            ranked = sorted(range(spec.size), key=lambda k, spec=spec: (-spec[k], k))
            dots += [(float(k), float(row)) for k in ranked[:CLASS_TOP_HEADS]]
        assert list(zip(tables["top"][f"{metric}_x"], tables["top"][f"{metric}_y"])) == dots
    for metric in ("prob", "kl"):
        values = np.asarray(part[metric], np.float64)
        want = np.stack([values[labels == c].mean(0) for c in shown])
        got = tables["cells"][f"mean_{metric}"].reshape(len(shown), -1)
        np.testing.assert_allclose(got, want.reshape(len(shown), -1), rtol=1e-5)


def test_many_classes_show_the_most_frequent():
    counts = np.zeros(1000, int)
    counts[np.arange(0, 1000, 7)] = np.arange(143) + 1  # 143 classes present
    shown = class_rows(counts)
    assert len(shown) == 40 and list(shown) == sorted(shown)
    assert set(shown) == set(np.arange(0, 1000, 7)[-40:])


def test_the_class_map_only_looks_the_bundle_up(tiny_bundle, rng):
    # Whatever the bundle's class arrays hold, the map's cells and dots are those, row by row.
    C, L, H = (tiny_bundle.dims()[d] for d in ("C", "L", "H"))
    spec = rng.normal(size=(C, L, H)).astype(np.float32)
    top = np.stack(
        [rng.integers(0, L, (C, CLASS_TOP_HEADS)), rng.integers(0, H, (C, CLASS_TOP_HEADS))], -1
    ).astype(np.int32)
    importance = {
        **tiny_bundle["importance"],
        "prob_drop_class_specificity": spec,
        "prob_drop_class_top": top,
    }
    bundle = ResultsBundle(tiny_bundle.meta, {**tiny_bundle.parts, "importance": importance})
    bundle.validate()
    tables = class_map_tables(bundle, ["prob"])
    shown = class_rows(importance["class_counts"])
    np.testing.assert_array_equal(tables["cells"]["spec_prob_drop"], spec[shown].reshape(-1))
    want = [(float(a * H + b), float(row)) for row, c in enumerate(shown) for a, b in top[c]]
    assert list(zip(tables["top"]["prob_drop_x"], tables["top"]["prob_drop_y"])) == want
