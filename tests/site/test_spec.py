"""Site specs: the shipped one loads; unknown keys, wrong types and missing files are named."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from jaxvit_interp.pipeline.settings import AnalysisSettings
from jaxvit_interp.quantities import METRIC_NAMES
from jaxvit_interp.site.spec import SiteSpecError, load_site_spec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = 'model = "builtin:digits"\nimages = "builtin:digits"\n'


def test_the_shipped_digits_spec():
    spec = load_site_spec(REPO / "sites" / "digits.toml")
    assert spec.model == "builtin:digits" and spec.images == "builtin:digits"
    assert spec.max_images == 300 and spec.analysis.attention_images == 32
    assert spec.metrics == METRIC_NAMES
    assert spec.site_options()["max_attention_images"] == 32
    # Its [analysis] table is the run's settings, nothing added: what `analyze --config` runs.
    table = tomllib.loads((REPO / "sites" / "digits.toml").read_text())["analysis"]
    assert spec.analysis == AnalysisSettings.from_dict(table)
    # The package's copy (the demo's) is the same file.
    shipped = REPO / "jaxvit_interp" / "data" / "builtin" / "digits.toml"
    assert shipped.read_bytes() == (REPO / "sites" / "digits.toml").read_bytes()


def test_defaults_of_a_minimal_spec(tmp_path):
    spec = load_site_spec(write(tmp_path, MINIMAL))
    assert spec.title is None and spec.labels is None
    assert spec.max_images == 300 and spec.analysis == AnalysisSettings()
    assert spec.site_options()["max_attention_images"] is None
    assert spec.default_metric is None and spec.default_kind == "cls"
    assert spec.compression == 0


def test_paths_resolve_against_the_spec_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("id,label\n")
    (tmp_path / "model.npz").write_bytes(b"")
    sub = tmp_path / "sites"
    sub.mkdir()
    spec = load_site_spec(
        write(
            sub,
            'model = "../model.npz"\nimages = "../images"\n'
            'labels = "../labels.csv"\n[analysis]\npartial_images = 7\n',
        )
    )
    assert spec.model == tmp_path / "model.npz"
    assert spec.images == tmp_path / "images"
    assert spec.labels == tmp_path / "labels.csv"
    assert spec.analysis.partial_images == 7


@pytest.mark.parametrize(
    "text,needle",
    [
        (MINIMAL + "colour = 3\n", "unknown key 'colour'"),
        (MINIMAL + "[views]\ncolour = 3\n", "unknown key 'views.colour'"),
        (MINIMAL + "[analysis]\nepochs = 3\n", "unknown key 'analysis.epochs'"),
        ('images = "builtin:digits"\n', "required key 'model' is missing"),
        (MINIMAL + 'max_images = "300"\n', "max_images must be of type int, got '300'"),
        (MINIMAL + "max_images = true\n", "max_images must be of type int, got True"),
        (MINIMAL + "max_images = 0\n", "max_images must be at least 1"),
        (
            MINIMAL + "[analysis]\nattention_images = 400\n",
            "analysis.attention_images = 400 exceeds max_images = 300",
        ),
        (
            MINIMAL + "max_images = 10\n[analysis]\npartial_images = 11\n",
            "analysis.partial_images = 11 exceeds max_images = 10",
        ),
        (
            MINIMAL + '[analysis]\nattention_images = "some"\n',
            "analysis.attention_images must be 'all' or an integer of at least 0, got 'some'",
        ),
        (MINIMAL + "[analysis]\nbatch_size = 0\n", "analysis.batch_size must be an integer of"),
        (MINIMAL + "analysis = 3\n", "analysis must be a table"),
        (
            MINIMAL + "[views]\nthumbnail_size = 112\n",
            "views.thumbnail_size = 112 is larger than the thumbnails the run keeps, "
            "analysis.thumbnail_size = 64",
        ),
        (MINIMAL + '[views]\nmetrics = ["kl", "fisher"]\n', "unknown metric 'fisher'"),
        (
            MINIMAL + '[views]\nmetrics = ["kl"]\ndefault_metric = "prob"\n',
            "default_metric = 'prob'",
        ),
        (MINIMAL + '[views]\ndefault_kind = "row"\n', "default_kind = 'row'"),
        (MINIMAL + "[views]\ncompression = 12\n", "views.compression must be a gzip level"),
        (MINIMAL + "views = 3\n", "views must be a table"),
        ('model = "builtin:imagenet"\nimages = "builtin:digits"\n', "not a built-in"),
        (MINIMAL + "title = \n", "not valid TOML"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(SiteSpecError, match=needle) as err:
        load_site_spec(path)
    assert str(path) in str(err.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(SiteSpecError, match=r"model = 'weights.npz': no such file .*weights.npz"):
        load_site_spec(write(tmp_path, 'model = "weights.npz"\nimages = "builtin:digits"\n'))
    with pytest.raises(SiteSpecError, match=r"images = 'pictures': no such file or folder"):
        load_site_spec(write(tmp_path, 'model = "builtin:digits"\nimages = "pictures"\n'))
    with pytest.raises(SiteSpecError, match=r"labels = 'labels.csv': no such file"):
        load_site_spec(write(tmp_path, MINIMAL + 'labels = "labels.csv"\n'))
    (tmp_path / "labels").mkdir()
    with pytest.raises(SiteSpecError, match=r"labels = 'labels' must be a file"):
        load_site_spec(write(tmp_path, MINIMAL + 'labels = "labels"\n'))
    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(SiteSpecError, match=r"images = 'one.png' must be a folder"):
        load_site_spec(write(tmp_path, 'model = "builtin:digits"\nimages = "one.png"\n'))
    with pytest.raises(SiteSpecError, match="does not exist"):
        load_site_spec(tmp_path / "nope.toml")


def test_spec_options_build_a_site(tmp_path, rng):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from sitepage import make_bundle

    from jaxvit_interp.site.document import build_site

    spec = load_site_spec(
        write(
            tmp_path,
            MINIMAL + 'title = "T"\n[analysis]\nattention_images = 1\n'
            '[views]\nmetrics = ["kl", "flip"]\ndefault_kind = "patch"\n',
        )
    )
    bundle = make_bundle(
        rng,
        num_images=6,
        num_layers=1,
        num_heads=2,
        grid=(2, 2),
        partial_images=2,
        attention_images=2,
    )
    page = build_site(bundle, tmp_path / "out", **spec.site_options()).read_text()
    assert "<title>T</title>" in page


def test_a_spec_with_the_settings_at_the_top_level_is_told_where_they_moved(tmp_path):
    # Earlier specs: partial_images followed attention_images when not given.
    for given, lines in (
        ("attention_images = 7\n", ["attention_images = 7", "partial_images = 7"]),
        (
            "attention_images = 7\npartial_images = 3\n",
            ["attention_images = 7", "partial_images = 3"],
        ),
        ('attention_images = "all"\n', ['attention_images = "all"']),
        ("partial_images = 5\n", ["partial_images = 5"]),
    ):
        path = write(tmp_path, MINIMAL + "max_images = 20\n" + given)
        with pytest.raises(SiteSpecError, match="moved into the .analysis. table") as err:
            load_site_spec(path)
        message = str(err.value)
        assert str(path) in message
        told = [line.strip() for line in message.splitlines()[1:]]
        assert told == ["[analysis]", *lines]
        # Written as told, the spec loads, with the values the old spec meant.
        fixed = write(tmp_path, MINIMAL + "max_images = 20\n" + "\n".join(told) + "\n", "new.toml")
        analysis = load_site_spec(fixed).analysis
        old = tomllib.loads(given)
        assert analysis.attention_images == old.get("attention_images", "all")
        expected_partial = old.get("partial_images", old.get("attention_images", 64))
        assert analysis.partial_images == (64 if expected_partial == "all" else expected_partial)


def test_the_page_thumbnails_follow_the_runs_unless_the_views_shrink_them(tmp_path):
    spec = load_site_spec(write(tmp_path, MINIMAL + "[analysis]\nthumbnail_size = 96\n"))
    assert spec.analysis.thumbnail_size == 96 and spec.site_options()["thumbnail_size"] == 96
    spec = load_site_spec(
        write(tmp_path, MINIMAL + "[analysis]\nthumbnail_size = 96\n[views]\nthumbnail_size = 40\n")
    )
    assert spec.analysis.thumbnail_size == 96 and spec.site_options()["thumbnail_size"] == 40


def test_patching_pairs_are_read_and_checked_with_the_spec(tmp_path):
    """The pairs' CSV resolves against the spec's folder and is checked against the image
    folder when the spec is read: a built-in's images, a missing CSV, a bad column or a file
    that is not in the folder is named with the key."""
    images = tmp_path / "pics"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(b"")
    (tmp_path / "pairs.csv").write_text("clean,corrupted\na.png,b.png\nc.png,a.png\n")
    head = 'model = "builtin:digits"\nimages = "pics"\n'
    spec = load_site_spec(write(tmp_path, head + 'patching_pairs = "pairs.csv"\n'))
    assert spec.patching_pairs == tmp_path / "pairs.csv"
    assert load_site_spec(write(tmp_path, head)).patching_pairs is None

    (tmp_path / "gone.csv").write_text("clean,corrupted\na.png,gone.png\n")
    (tmp_path / "other.csv").write_text("clean,other\na.png,b.png\n")
    for text, needle in [
        (
            MINIMAL + 'patching_pairs = "pairs.csv"\n',
            "patching_pairs = 'pairs.csv' names image files, and images = 'builtin:digits' "
            "has none",
        ),
        (head + 'patching_pairs = "nope.csv"\n', "patching_pairs = 'nope.csv': no such file"),
        (head + 'patching_pairs = "gone.csv"\n', r"patching_pairs = 'gone.csv': .*'gone.png'"),
        (head + 'patching_pairs = "other.csv"\n', "patching_pairs = 'other.csv': .*corrupted"),
        (head + "patching_pairs = 3\n", "patching_pairs must be of type str, got 3"),
    ]:
        path = write(tmp_path, text)
        with pytest.raises(SiteSpecError, match=needle) as err:
            load_site_spec(path)
        assert str(path) in str(err.value)


def test_a_comparison_table_patches_its_own_pairs(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{folder}.png").write_bytes(b"")
        (tmp_path / folder / "x.png").write_bytes(b"")
    (tmp_path / "one.csv").write_text("clean,corrupted\none.png,x.png\n")
    (tmp_path / "two.csv").write_text("clean,corrupted\ntwo.png,x.png\n")
    text = (
        'images = "one"\npatching_pairs = "one.csv"\n'
        '[[model]]\nname = "a"\nmodel = "builtin:digits"\n'
        '[[model]]\nname = "b"\nmodel = "builtin:digits"\nimages = "two"\n'
    )
    with pytest.raises(SiteSpecError, match=r"patching_pairs = 'one.csv': .*'one.png'"):
        load_site_spec(write(tmp_path, text))  # the shared pairs are not in b's folder
    a, b = load_site_spec(write(tmp_path, text + 'patching_pairs = "two.csv"\n')).models
    assert (a.patching_pairs, b.patching_pairs) == (tmp_path / "one.csv", tmp_path / "two.csv")
    with pytest.raises(SiteSpecError, match=r"model\[2\]\.patching_pairs = 'one.csv'"):
        load_site_spec(write(tmp_path, text + 'patching_pairs = "one.csv"\n'))
