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
    for name in set(prepare_site_data(bundle).info["tables"].values()) - {"record"}:
        assert name in names, name
    for name in (
        "images",
        "heads",
        "records",
        "embedding",
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
    # Each attention image's L*H*N*N codes (and L*H*N steps and exponents, L*H*N*X float16
    # special columns), deflated, in base64.
    per_image = (sizes["all"] - sizes["two"]) / 6
    assert 0.2 * 3 * 4 * 37 * 37 < per_image < 3 * 4 * 37 * (37 + 5 + 2) * 4 / 3
    assert sizes["zipped"] < sizes["all"]
    assert settings.compression_level() == before  # Bokeh's own setting is left as it was


def _records_folders(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(("data-", ".data-")))


def test_layouts_single_folder_and_auto(rng, tmp_path, monkeypatch):
    from jaxvit_interp.site import document

    bundle = make_bundle(rng, num_images=12, num_layers=2, num_heads=2, grid=(3, 3))
    single = build_site(bundle, tmp_path / "single", layout="single")
    assert _records_folders(single.parent) == []
    assert single.read_text().count("jaxvitRecord(") == 12  # one call per image
    folder = build_site(bundle, tmp_path / "folder", layout="folder")
    (data,) = _records_folders(folder.parent)
    files = sorted(p.name for p in (folder.parent / data / "images").iterdir())
    assert files == [f"{i:06d}.js" for i in range(12)]
    page = folder.read_text()
    assert f"{data}/images" in page and "jaxvitRecord(0," not in page
    assert single.stat().st_size > folder.stat().st_size
    # auto: one file while the page stays small, a folder beyond.
    assert _records_folders(build_site(bundle, tmp_path / "auto").parent) == []
    monkeypatch.setattr(document, "SINGLE_FILE_LIMIT", 1000)
    assert len(_records_folders(build_site(bundle, tmp_path / "auto").parent)) == 1
    with pytest.raises(ValueError, match="site layout must be one of auto, single, folder"):
        build_site(bundle, tmp_path / "bad", layout="pages")


def test_a_site_is_replaced_whole_and_other_files_are_kept(rng, tmp_path, monkeypatch):
    from jaxvit_interp.site import document

    bundle = make_bundle(rng, num_images=10, num_layers=2, num_heads=2, grid=(3, 3))
    out = tmp_path / "site"
    out.mkdir()
    (out / "run").mkdir()  # e.g. the analysis's run folder beside the page
    first = build_site(bundle, out, layout="folder")
    (old,) = _records_folders(out)
    # A build that fails half-way leaves the published site as it was.
    calls = {"n": 0}
    real = document.SiteData.record

    def failing(self, image):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(28, "No space left on device")
        return real(self, image)

    page = first.read_text()
    with monkeypatch.context() as patch:
        patch.setattr(document.SiteData, "record", failing)
        with pytest.raises(OSError, match="No space"):
            build_site(bundle, out, layout="folder")
    assert first.read_text() == page and _records_folders(out) == [old]
    # A new build's records sit in a new folder that index.html names; the old ones go.
    build_site(bundle, out, layout="folder")
    (new,) = _records_folders(out)
    assert new != old and new in first.read_text()
    assert (out / "run").is_dir()
    build_site(bundle, out, layout="single")
    assert _records_folders(out) == [] and (out / "run").is_dir()


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
    ready, deferred = doc.callbacks.js_event_callbacks["document_ready"]
    assert "drawDeferred" in deferred.code  # views E and F, after the opening state
    update = doc.get_model_by_name("images").selected.js_property_callbacks["change:indices"][0]
    assert ready is update
    assert ready.module is True and "export default function update" in ready.code
    # Values reach the code as arguments, and every name its functions take from them is one.
    assert ready.args["info"]["num_images"] == 10
    taken = re.findall(r"function \w+\(\{([^}]*)\}|const \{([^}]*)\} = page;", ready.code)
    names = {n.strip() for groups in taken for group in groups for n in group.split(",")} - {""}
    assert {"info", "value_palette", "images", "heads", "state", "entropy_hist_y_range"} <= names
    assert names <= ready.args.keys(), names - ready.args.keys()
