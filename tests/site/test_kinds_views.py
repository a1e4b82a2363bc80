"""View B's menu on a run with several ablation kinds and the direct logit attribution: each
metric under each kind side by side and the direct attribution, whose cells show the bundle's
values over all images, for a chosen image and for a chosen class; nothing off-screen or cut at
1,280 and 1,920 px."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.site.browser import wait_drawn
from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.views.head_sets import class_rows

ENTRIES = ("prob_drop", "prob_drop_zero_ablation", "prob_drop_resample_ablation", "direct")


def _choose(site, entry: str) -> None:
    site.page.evaluate(
        "(m) => { Bokeh.documents[0].get_model_by_name('metric_select').value = m; }", entry
    )
    wait_drawn(site.page)


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 1920])
def test_menu_offers_each_kind_and_the_direct_attribution(kinds_run, open_page, tmp_path, width):
    out = kinds_run[-1]
    bundle = load_bundle(out)
    part = bundle["importance"]
    site = open_page(build_site(bundle, tmp_path / "site"), width=width, height=900)
    assert site.problems == []
    options = site.prop("metric_select", "options")
    values = [o[0] for o in options]
    titles = dict(map(tuple, options))
    # Side by side: each metric, then the same under each further kind; the direct attribution.
    at = values.index("prob_drop")
    assert values[at : at + 3] == list(ENTRIES[:3]) and values[-1] == "direct"
    assert "taylor_zero_ablation" not in values
    assert titles["prob_drop"].endswith("(mean ablation)")
    assert titles["prob_drop_zero_ablation"].endswith("(zero ablation)")
    assert "direct logit attribution" in titles["direct"]
    L, H = bundle.dims()["L"], bundle.dims()["H"]
    image = 4
    rows = class_rows(part["class_counts"])
    for entry in ENTRIES:
        site.set_selected("class_cells", [])
        site.set_selected("images", [])
        _choose(site, entry)
        np.testing.assert_allclose(
            site.data("heads")["value"], part[f"{entry}_mean"].reshape(-1), atol=1e-6
        )
        assert site.layout_problems() == [], entry
        site.set_selected("images", [image])
        np.testing.assert_allclose(
            site.data("heads")["value"], part[entry][image].reshape(-1), atol=1e-6
        )
        # A class chosen in the class map: its mean under the entry.
        site.set_selected("images", [])
        site.set_selected("class_cells", [0 * L * H + 1])
        np.testing.assert_allclose(
            site.data("heads")["value"],
            part[f"{entry}_class_mean"][rows[0]].reshape(-1),
            atol=1e-6,
        )
        assert site.layout_problems() == [], entry
    assert site.problems == []
