"""The written page: one offline file, hostile names escaped, options checked, parts optional."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from bokeh.settings import settings

from jaxvit_interp.site.document import build_document, build_site
from jaxvit_interp.site.sources import prepare_site_data

sys.path.insert(0, os.path.dirname(__file__))
from sitepage import EVIL_ID, EVIL_LABEL, make_bundle  # noqa: E402


@pytest.fixture
def bundle(rng):
    return make_bundle(
        rng,
        num_images=10,
        num_layers=2,
        num_heads=2,
        grid=(3, 3),
        partial_images=3,
        attention_images=3,
    )


def test_one_offline_file_with_hostile_names_escaped(bundle, tmp_path):
    path = build_site(bundle, tmp_path / "site", title="<b>Title</b> & more")
    assert path == tmp_path / "site" / "index.html"
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]
    page = path.read_text()
    # BokehJS is inline: no script or stylesheet comes from anywhere else.
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*\bhref=", page)
    assert "cdn.bokeh.org" not in page
    assert "Bokeh.embed.embed_items" in page
    # Labels, ids and the title never reach the HTML as markup.
    for raw in (EVIL_LABEL, EVIL_ID, "<b>Title</b>"):
        assert raw not in page
    assert "<title>&lt;b&gt;Title&lt;/b&gt; &amp; more</title>" in page


def test_every_model_the_page_code_uses_is_in_the_document(bundle):
    doc = build_document(bundle)
    names = {m.name for m in doc.models if m.name}
    # Every table the page looks a bundle array up in (see sources.py).
    for name in set(prepare_site_data(bundle).info["tables"].values()):
        assert name in names, name
    for name in (
        "images",
        "heads",
        "attention",
        "thumbnails",
        "state",
        "partial_bars",
        "top5_view",
        "hop_bars",
        "entropy_hist",
        "head_images",
        "patches",
        "matrix_view",
        "value_hist",
        "view_A",
        "view_B",
        "view_C",
        "view_D",
        "metric_select",
        "search",
    ):
        assert name in names, name
    # A's, B's, C's and D's head marks all draw the one heads source.
    heads = doc.get_model_by_name("heads")
    for renderer in ("importance_cells", "entropy_points", "embedding_heads"):
        assert doc.get_model_by_name(renderer).data_source is heads


def test_options_are_checked(bundle):
    with pytest.raises(ValueError, match="unknown importance metric.*'fisher'"):
        build_document(bundle, metrics=["kl", "fisher"])
    with pytest.raises(ValueError, match="default metric 'prob' is not among"):
        build_document(bundle, metrics=["kl"], default_metric="prob")
    with pytest.raises(ValueError, match="default pattern kind 'row'"):
        build_document(bundle, default_kind="row")


def test_optional_parts_may_be_missing(bundle, tmp_path):
    for part in ("partial", "attention", "patterns"):
        del bundle.parts[part]
    doc = build_document(bundle)
    assert doc.get_model_by_name("embedding_note").text.startswith("This results bundle has no")
    assert build_site(bundle, tmp_path).exists()


def test_attention_limit_and_compression_shrink_the_file(rng, tmp_path):
    bundle = make_bundle(
        rng,
        num_images=20,
        num_layers=3,
        num_heads=4,
        grid=(6, 6),
        partial_images=4,
        attention_images=8,
    )
    before = settings.compression_level()
    sizes = {}
    for key, options in {
        "all": {},
        "two": {"max_attention_images": 2},
        "zipped": {"compression": 9},
    }.items():
        sizes[key] = build_site(bundle, tmp_path / key, **options).stat().st_size
    # Each attention image holds L*H*N*N uint16 values, base64 encoded (4/3).
    per_image = 3 * 4 * 37 * 37 * 2 * 4 / 3
    assert sizes["all"] - sizes["two"] == pytest.approx(6 * per_image, rel=0.02)
    assert sizes["zipped"] < sizes["all"]
    assert settings.compression_level() == before  # Bokeh's own setting is left as it was


def test_options_choose_the_opening_selections(bundle):
    """The document holds what the page opens on; the page's code draws it (test_browser.py)."""
    doc = build_document(bundle, default_kind="patch", default_metric="kl")
    toggle = doc.get_model_by_name("kind_toggle")
    assert toggle.labels[toggle.active] == "patch patterns"
    assert doc.get_model_by_name("metric_select").value == "kl"
    # The opening head is the most important one under the default metric (highest kl).
    assert doc.get_model_by_name("heads").selected.indices == [
        int(np.nanargmax(bundle["importance"]["kl"].mean(0).reshape(-1)))
    ]
    modes = bundle.meta["pruning_modes"]
    assert doc.get_model_by_name("partial_bars").selected.indices == [modes.index("head")]


def test_the_page_code_runs_once_the_document_is_ready(bundle):
    doc = build_document(bundle)
    (ready,) = doc.callbacks.js_event_callbacks["document_ready"]
    update = doc.get_model_by_name("images").selected.js_property_callbacks["change:indices"][0]
    assert ready is update
    assert ready.module is True and "export default function update" in ready.code
    # Values reach the code as arguments, and every name its functions take from them is one.
    assert ready.args["info"]["num_images"] == 10
    taken = re.findall(r"function \w+\(\{([^}]*)\}|const \{([^}]*)\} = page;", ready.code)
    names = {n.strip() for groups in taken for group in groups for n in group.split(",")} - {""}
    assert {"info", "value_palette", "images", "heads", "state", "entropy_hist_y_range"} <= names
    assert names <= ready.args.keys(), names - ready.args.keys()
