"""Comparison specs: several ``[[model]]`` tables parsed with the shared defaults filled in, each
refusal named by file, table and key; `site build` of one analyses each model once into
DIR/runs/<name>, writes the comparison, and each model's site links back to it."""

from __future__ import annotations

import tomllib
import types
from pathlib import Path

import numpy as np
import pytest

from jaxvit_interp.pipeline.settings import AnalysisSettings
from jaxvit_interp.site.spec import SiteSpecError, load_site_spec

REPO = Path(__file__).resolve().parents[2]

TWO = """\
title = "T"
images = "builtin:digits"
max_images = 20
[analysis]
attention_images = 4
seed = 3
[views]
default_kind = "patch"

[[model]]
name = "a"
model = "builtin:digits"

[[model]]
name = "b.2"
model = "builtin:shapes"
images = "builtin:shapes"
max_images = 10
[model.analysis]
seed = 5
partial_images = 2
"""


def write(tmp_path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tables_take_the_shared_defaults_and_their_own_keys(tmp_path):
    spec = load_site_spec(write(tmp_path, TWO))
    assert spec.model is None and [m.name for m in spec.models] == ["a", "b.2"]
    a, b = spec.models
    assert (a.model, a.images, a.max_images) == ("builtin:digits", "builtin:digits", 20)
    assert (b.model, b.images, b.max_images) == ("builtin:shapes", "builtin:shapes", 10)
    assert a.analysis == AnalysisSettings(attention_images=4, seed=3)
    # [model.analysis] keys over the shared ones, key by key.
    assert b.analysis == AnalysisSettings(attention_images=4, seed=5, partial_images=2)
    assert spec.analysis == AnalysisSettings(attention_images=4, seed=3)
    options = spec.site_options()
    # The comparison page's title; every model's site keeps its own attention and thumbnails.
    assert options["title"] == "T" and options["max_attention_images"] is None
    assert options["thumbnail_size"] is None and options["default_kind"] == "patch"


def test_table_paths_resolve_against_the_spec_folder(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    (tmp_path / "labels.csv").write_text("id,label\n")
    (tmp_path / "model.npz").write_bytes(b"")
    sub = tmp_path / "sites"
    sub.mkdir()
    spec = load_site_spec(
        write(
            sub,
            'images = "../one"\nlabels = "../labels.csv"\n'
            '[[model]]\nname = "x"\nmodel = "../model.npz"\n'
            '[[model]]\nname = "y"\nmodel = "builtin:digits"\nimages = "../two"\n',
        )
    )
    x, y = spec.models
    assert x.model == tmp_path / "model.npz" and x.images == tmp_path / "one"
    assert y.images == tmp_path / "two" and x.labels == y.labels == tmp_path / "labels.csv"


def test_the_shipped_comparison_spec():
    path = REPO / "sites" / "compare-digits-shapes.toml"
    spec = load_site_spec(path)
    assert [(m.name, m.model, m.images) for m in spec.models] == [
        ("digits", "builtin:digits", "builtin:digits"),
        ("shapes", "builtin:shapes", "builtin:shapes"),
    ]
    table = tomllib.loads(path.read_text())["analysis"]
    assert all(m.analysis == AnalysisSettings.from_dict(table) for m in spec.models)
    assert all(m.max_images <= 64 for m in spec.models)  # a few minutes, not a demo's five


def test_every_spec_in_sites_loads():
    """Parsing only: the specs' analyses take minutes (the demo's test runs digits.toml's)."""
    specs = sorted((REPO / "sites").glob("*.toml"))
    assert len(specs) >= 2
    for path in specs:
        load_site_spec(path)  # raises, naming the key, on a spec it refuses


ONE_TABLE = 'images = "builtin:digits"\n[[model]]\nname = "a"\nmodel = "builtin:digits"\n'
B = '[[model]]\nname = "b"\nmodel = "builtin:digits"\n'


@pytest.mark.parametrize(
    "text,needle",
    [
        (TWO.replace("max_images = 10", "colour = 3"), "unknown key 'model[2].colour'"),
        (TWO + "[model.analysis.x]\n", "unknown key 'model[2].analysis.x'"),
        (TWO.replace("seed = 5", "epochs = 5"), "unknown key 'model[2].analysis.epochs'"),
        (TWO.replace('name = "b.2"', 'name = "a"'), "model[2].name = 'a' is also model[1]'s"),
        (TWO.replace('name = "b.2"\n', ""), "required key 'model[2].name' is missing"),
        (TWO.replace('model = "builtin:digits"\n', ""), "required key 'model[1].model' is missing"),
        (TWO.replace('"b.2"', '"b/2"'), "model[2].name = 'b/2': a name is letters, digits"),
        (TWO.replace("max_images = 10", "max_images = 0"), "model[2].max_images must be at least"),
        (
            TWO.replace("max_images = 10", "max_images = 3"),
            "model[2].analysis.attention_images = 4",
        ),
        (
            TWO.replace("max_images = 10", 'max_images = "10"'),
            "model[2].max_images must be of type",
        ),
        (TWO.replace('"builtin:shapes"\nimages', '"builtin:cats"\nimages'), "model[2].model = "),
        (TWO.split("[model.analysis]")[0] + "analysis = 3\n", "model[2].analysis must be"),
        (TWO.replace('images = "builtin:digits"\n', ""), "required key 'model[1].images'"),
        (TWO.replace('images = "builtin:shapes"', 'images = "gone"'), "model[2].images = 'gone'"),
        (TWO + "[views]\n", "not valid TOML"),
        (ONE_TABLE, "1 [[model]] table: a site of one model gives it at the top level"),
        ('model = "builtin:digits"\n' + ONE_TABLE + B, "a top-level model = ... and [[model]]"),
        ('model = []\nimages = "builtin:digits"\n', "0 [[model]] table"),
        ('model = [3, 4]\nimages = "builtin:digits"\n', "model[1] must be a table, got 3"),
        (
            TWO.replace("[views]", "[views]\nthumbnail_size = 80"),
            "views.thumbnail_size = 80 is larger than the thumbnails the run keeps, "
            "model[1].analysis.thumbnail_size = 64",
        ),
    ],
)
def test_bad_tables_name_the_file_the_table_and_the_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(SiteSpecError) as err:
        load_site_spec(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def _models(doc) -> list[tuple[str, str | None]]:
    """What a document holds, by type and name, sorted (ids differ from build to build)."""
    return sorted(((type(m).__name__, m.name or "") for m in doc.models), key=str)


def test_a_back_link_adds_one_link_to_the_header_and_nothing_else(site_seed):
    from bokeh.models import Div

    from jaxvit_interp.errors import InputError
    from jaxvit_interp.site.document import build_document
    from jaxvit_interp.site.synthetic import synthetic_bundle

    bundle = synthetic_bundle(np.random.default_rng(site_seed), num_layers=2, num_heads=2)
    plain = build_document(bundle, title="T")
    linked = build_document(bundle, title="T", back_link=("../../index.html", "back <here>"))
    assert plain.get_model_by_name("back_link") is None  # a standalone site: none
    link = linked.get_model_by_name("back_link")
    assert isinstance(link, Div)
    assert 'href="../../index.html"' in link.text and "back &lt;here&gt;" in link.text
    # Above the title, in the header's column; every other model as it was.
    header = linked.get_model_by_name("site").children[0]
    assert header.children[0] is link and header.children[1].name == "site_title"
    with_link = _models(linked)
    with_link.remove(("Div", "back_link"))
    assert with_link == _models(plain)
    with pytest.raises(InputError, match="back_link must be"):
        build_document(bundle, back_link=("../index.html",))


# Cheap settings of every stage for the tiny model (tests/pipeline/clitools.py's FAST, AE_FAST).
CHEAP = """\
[analysis]
chunk_images = 4
partial_images = 2
attention_images = 2
pattern_samples = 64
clusters = 3
set_images = 0
projection = "tsne"
autoencoder = { max_epochs = 3, batch_size = 16, latent_dim = 4, features = [8] }
"""


def _files(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` and its modification time."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _run_main():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "pipeline"))
    from clitools import run_main

    return run_main


def test_site_build_runs_each_table_into_its_folder_and_links_each_site_back(
    tmp_path, browser, capsys, monkeypatch, rng
):
    """The command's orchestration, each analysis replaced by a synthetic run of as many images
    as it was asked for (the analysis itself: the next test)."""
    import jaxvit_interp.cli as cli
    from jaxvit_interp.bundle import save_bundle
    from jaxvit_interp.site.browser import FIND_VIEW_JS
    from jaxvit_interp.site.synthetic import synthetic_bundle

    asked = []

    class Loaded:  # what the command reads of a loaded model before its analysis
        def __init__(self, source):
            self.source, self.config = source, types.SimpleNamespace(num_classes=10)

    def analyze(run, source, labels_csv, max_images, model, settings, args, pairs_csv=None):
        asked.append((run, source, f"loaded {model.source}", max_images, settings.seed))
        bundle = synthetic_bundle(
            rng, num_images=max_images, num_layers=2, num_heads=2, partial_images=2,
            attention_images=2, image_ids=[f"{source}-{i}" for i in range(max_images)],
        )  # fmt: skip
        save_bundle(bundle, run)

    monkeypatch.setattr(cli, "_load_model", lambda source, *a, **k: Loaded(source))
    monkeypatch.setattr(cli, "_analyze_images", analyze)
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    spec = write(
        tmp_path,
        'title = "Both"\nimages = "one"\nmax_images = 12\n[analysis]\nseed = 4\n'
        '[[model]]\nname = "a"\nmodel = "builtin:digits"\n'
        '[[model]]\nname = "b"\nmodel = "builtin:shapes"\nimages = "two"\nmax_images = 6\n'
        "[model.analysis]\nseed = 1\n",
    )
    out = tmp_path / "site"
    run_main = _run_main()
    result = run_main(
        capsys, "site", "build", spec, "--out", out, "--max-images", "8", "--no-shared-patterns"
    )
    assert result.returncode == 0, result.stderr
    # --max-images caps every table: a's 12 to 8; b keeps its own 6. Each its own settings.
    assert asked == [
        (out / "runs" / "a", str(tmp_path / "one"), "loaded builtin:digits", 8, 4),
        (out / "runs" / "b", str(tmp_path / "two"), "loaded builtin:shapes", 6, 1),
    ]
    told = [line for line in result.stderr.splitlines() if " of 2: " in line]
    assert [line.split(": ", 1)[1].split(" (")[0] for line in told] == [
        "model 1 of 2: a",
        "model 2 of 2: b",
    ]
    assert "comparison site of 2 models" in result.stdout
    page = (out / "index.html").read_text()
    assert "<title>Both</title>" in page

    view = browser.new_page()
    try:
        view.goto((out / "models" / "b" / "index.html").resolve().as_uri())
        view.wait_for_function("() => window.Bokeh && Bokeh.documents[0]?.is_idle")
        link = view.evaluate(
            f"""() => {{
              const v = ({FIND_VIEW_JS})("back_link");
              const a = v && (v.el.shadowRoot || v.el).querySelector("a[href]");
              return a && [a.href, a.textContent, a.getBoundingClientRect().height];
            }}"""
        )
        assert link is not None, "no link back on the model's site"
        href, text, height = link
        assert href == (out / "index.html").resolve().as_uri() and height > 0
        assert text.endswith("back to the comparison of 2 models")
        view.click("text=back to the comparison of 2 models")
        view.wait_for_url((out / "index.html").resolve().as_uri())
    finally:
        view.close()

    # The run's own site, as `site RUN` writes it, has no link back.
    alone = run_main(capsys, "site", out / "runs" / "a", "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert "back to the comparison" not in (tmp_path / "alone" / "index.html").read_text()
    assert "back to the comparison" in (out / "models" / "a" / "index.html").read_text()


def test_site_build_refuses_a_run_folder_holding_something_else_before_any_analysis(
    tmp_path, capsys
):
    run_main = _run_main()  # puts the command-line helpers on the path
    from clitools import assert_one_line_error

    spec = write(tmp_path, 'images = "builtin:digits"\n[[model]]\nname = "a"\nmodel = '
                 '"builtin:digits"\n[[model]]\nname = "b"\nmodel = "builtin:digits"\n')  # fmt: skip
    taken = tmp_path / "site" / "runs" / "b"
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("mine")
    result = run_main(capsys, "site", "build", spec, "--out", tmp_path / "site")
    assert_one_line_error(result, str(taken), "not empty")
    assert "model 1 of 2" not in result.stderr
    assert not (tmp_path / "site" / "runs" / "a").exists()


@pytest.mark.slow
def test_site_build_analyses_each_model_once(tmp_path, capsys, rng):
    """Two real analyses of the tiny model (of one shape: the second compiles nothing new);
    a second call reads them back and writes none of their files again."""
    from PIL import Image

    run_main = _run_main()
    from clitools import TINY

    from jaxvit_interp import init_params, save_checkpoint
    from jaxvit_interp.bundle import load_bundle

    save_checkpoint(tmp_path / "tiny", TINY, init_params(TINY, int(rng.integers(1 << 30))))
    for name in ("cat", "dog", "owl"):  # the tiny model's 3 classes, one folder each
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    spec = write(
        tmp_path,
        'images = "images"\n' + CHEAP + '[[model]]\nname = "a"\nmodel = "tiny"\n'
        '[[model]]\nname = "b"\nmodel = "tiny"\n[model.analysis]\nseed = 1\n',
    )
    out = tmp_path / "site"
    command = ["site", "build", spec, "--out", out, "--max-images", "8", "--layout", "single",
               "--no-shared-patterns"]  # fmt: skip
    first = run_main(capsys, *command)
    assert first.returncode == 0, first.stderr
    for name, seed in (("a", 0), ("b", 1)):
        bundle = load_bundle(out / "runs" / name)
        assert len(bundle.meta["image_ids"]) == 8
        assert bundle.meta["settings"]["seed"] == seed
    assert (out / "index.html").is_file() and (out / "models" / "b" / "index.html").is_file()

    before = _files(out / "runs")
    second = run_main(capsys, *command)
    assert second.returncode == 0, second.stderr
    assert _files(out / "runs") == before
    assert "analysing images: started" not in second.stderr
    assert "model 2 of 2: b" in second.stderr
