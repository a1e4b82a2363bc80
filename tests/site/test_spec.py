"""Site specs: the shipped one loads; unknown keys, wrong types and missing files are named."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert spec.max_images == 300 and spec.attention_images == 32
    assert spec.metrics == METRIC_NAMES
    assert spec.site_options()["max_attention_images"] == 32


def test_defaults_of_a_minimal_spec(tmp_path):
    spec = load_site_spec(write(tmp_path, MINIMAL))
    assert spec.title is None and spec.labels is None
    assert (spec.max_images, spec.attention_images, spec.partial_images) == (300, "all", 64)
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
            'labels = "../labels.csv"\npartial_images = 7\n',
        )
    )
    assert spec.model == tmp_path / "model.npz"
    assert spec.images == tmp_path / "images"
    assert spec.labels == tmp_path / "labels.csv"
    assert spec.partial_images == 7


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
        (MINIMAL + "attention_images = 400\n", "attention_images = 400 exceeds max_images = 300"),
        (MINIMAL + 'attention_images = "some"\n', "attention_images must be 'all' or a count"),
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
            MINIMAL + 'title = "T"\nattention_images = 1\n'
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
