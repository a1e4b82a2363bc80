"""The patching stage of ``analyze`` and ``--patching-pairs``:

- the bundle's ``patching`` part equals :func:`jaxvit_interp.activation_patching` called
  directly on the same pairs, in both directions, per pair and its mean;
- a resumed run reads the stage back; other pairs recompute that stage alone, in a complete run
  too, and a run without pairs takes the part out;
- on the command line, a CSV whose files are under the image folder gives the same as the
  library on the images the folder loads to; a CSV without a column, naming a missing file or
  an image that is not among the analysed ones, or pairs with the built-in digits, is refused
  with the CSV's line and file named before the run folder exists.
"""

from __future__ import annotations

import html
import shutil

import numpy as np
import pytest
from clitools import FAST, TINY, assert_one_line_error, run_main
from PIL import Image

from jaxvit_interp.bundle import INDEX_FILE, load_bundle
from jaxvit_interp.data.images import load_image_folder
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import activation_patching
from jaxvit_interp.pipeline import patching_stage
from jaxvit_interp.pipeline.analyze import analyze

QUIET = Execution(progress=False)


def _assert_equals_library(part, params, images, labels, pairs, atol=2e-6):
    clean, corrupted = images[pairs[:, 0]], images[pairs[:, 1]]
    y = None if labels is None else np.asarray(labels)[pairs[:, 0]]
    for direction in ("denoising", "noising"):
        want = activation_patching(
            TINY, params, clean, corrupted, y, direction=direction, execution=QUIET
        )
        np.testing.assert_allclose(part[f"{direction}_score"], want.score, atol=atol)
        np.testing.assert_allclose(part[f"{direction}_prob"], want.prob_patched, atol=atol)
        np.testing.assert_allclose(part[f"{direction}_score_mean"], want.mean_score(), atol=atol)
        np.testing.assert_allclose(part["prob_clean"], want.prob_clean, atol=atol)
        np.testing.assert_allclose(part["prob_corrupt"], want.prob_corrupt, atol=atol)
        np.testing.assert_array_equal(part["defined"], want.defined)
        np.testing.assert_array_equal(part["labels"], want.labels)


def test_the_stage_equals_the_library_on_its_pairs(kinds_run):
    params, images, labels, settings, out = kinds_run
    bundle = load_bundle(out)
    part = bundle["patching"]
    pairs = part["pairs"].astype(np.int64)
    assert pairs.shape == (3, 2) and len(set(pairs.ravel())) == 6
    _assert_equals_library(part, params, images, labels, pairs)
    ids = bundle.meta["image_ids"]
    assert bundle.meta["patching"]["computed_with"] == patching_stage.pairs_key(pairs, ids)


def test_resume_reads_the_stage_and_other_pairs_recompute_it(kinds_run, tmp_path, monkeypatch):
    params, images, labels, settings, out = kinds_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = load_bundle(out)
    pairs = before["patching"]["pairs"].astype(np.int64)
    calls = []
    real = patching_stage.compute_patching
    monkeypatch.setattr(
        patching_stage, "compute_patching", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    (run / INDEX_FILE).unlink()
    kwargs = dict(labels=labels, settings=settings, progress=False)
    again = analyze(TINY, params, images, run, patching_pairs=pairs, **kwargs)
    assert calls == []
    np.testing.assert_array_equal(
        again["patching"]["noising_score"], before["patching"]["noising_score"]
    )
    other = pairs[::-1, ::-1].copy()  # the corrupted images now clean, and the other way round
    changed = analyze(TINY, params, images, run, patching_pairs=other, **kwargs)
    assert calls == [1]
    _assert_equals_library(changed["patching"], params, images, labels, other)
    np.testing.assert_array_equal(changed["shapley"]["values"], before["shapley"]["values"])
    without = analyze(TINY, params, images, run, **kwargs)
    assert "patching" not in without.parts and "patching" not in load_bundle(run).parts
    assert calls == [1]


def _folder(root, rng, count=8):
    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_pairs_from_a_csv_equal_the_library(tmp_path, tiny_checkpoint, rng, capsys):
    from jaxvit_interp import load_checkpoint

    folder = _folder(tmp_path / "pics", rng)
    (tmp_path / "pairs.csv").write_text("clean,corrupted\n0.png,3.png\n./5.png,1.png\n")
    out = tmp_path / "run"
    result = run_main(
        capsys, "analyze", "--checkpoint", tiny_checkpoint, "--images", folder, "--out", out,
        *FAST, "--patching-pairs", tmp_path / "pairs.csv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(out)
    ids = bundle.meta["image_ids"]
    pairs = bundle["patching"]["pairs"].astype(np.int64)
    assert [[ids[c], ids[k]] for c, k in pairs] == [["0.png", "3.png"], ["5.png", "1.png"]]
    _, params = load_checkpoint(tiny_checkpoint)
    images = load_image_folder(folder, TINY, progress=False).images
    _assert_equals_library(bundle["patching"], params, images, None, pairs, atol=1e-5)


@pytest.mark.parametrize(
    "rows, needles",
    [
        ("clean,other\n0.png,1.png\n", ["pairs.csv", "clean,corrupted"]),
        ("clean,corrupted\n0.png,1.png\n2.png,gone.png\n", ["'gone.png' (line 3)"]),
        (
            "clean,corrupted\n0.png,1.png\n5.png,2.png\n",
            ["'5.png' (clean, line 3)", "not among the 4 analysed images"],
        ),
        ("clean,corrupted\n", ["names no pairs"]),
    ],
)
def test_bad_pairs_are_refused_before_the_run(
    rows, needles, tmp_path, tiny_checkpoint, rng, capsys
):
    folder = _folder(tmp_path / "pics", rng)
    (tmp_path / "pairs.csv").write_text(rows)
    out = tmp_path / "run"
    result = run_main(
        capsys, "analyze", "--checkpoint", tiny_checkpoint, "--images", folder, "--out", out,
        *FAST, "--max-images", "4", "--patching-pairs", tmp_path / "pairs.csv",
    )  # fmt: skip
    assert_one_line_error(result, *needles)
    assert not out.exists()


def test_pairs_with_the_builtin_digits_are_refused(tmp_path, capsys):
    (tmp_path / "pairs.csv").write_text("clean,corrupted\na.png,b.png\n")
    result = run_main(
        capsys, "analyze", "--checkpoint", "builtin:digits", "--images", "builtin:digits",
        "--out", tmp_path / "run", "--patching-pairs", tmp_path / "pairs.csv",
    )  # fmt: skip
    assert_one_line_error(result, "--patching-pairs", "builtin:digits")
    assert not (tmp_path / "run").exists()


def test_a_site_spec_names_the_pairs(tmp_path, tiny_checkpoint, rng, capsys):
    """``patching_pairs`` in a site spec, a path beside it: ``site build`` patches those pairs
    as ``analyze --patching-pairs`` does, and the page has B5 with its menu of the pairs."""
    from jaxvit_interp import load_checkpoint

    folder = _folder(tmp_path / "pics", rng)
    (tmp_path / "pairs.csv").write_text("clean,corrupted\n4.png,2.png\n1.png,5.png\n")
    spec = tmp_path / "site.toml"
    spec.write_text(
        f'model = "{tiny_checkpoint}"\nimages = "pics"\npatching_pairs = "pairs.csv"\n'
        "max_images = 8\n[analysis]\nchunk_images = 4\npartial_images = 0\n"
        'attention_images = 0\npattern_samples = 64\nclusters = 3\nprojection = "tsne"\n'
    )
    out = tmp_path / "site"
    result = run_main(capsys, "site", "build", spec, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(out / "run")
    ids = bundle.meta["image_ids"]
    pairs = bundle["patching"]["pairs"].astype(np.int64)
    assert [[ids[c], ids[k]] for c, k in pairs] == [["4.png", "2.png"], ["1.png", "5.png"]]
    _, params = load_checkpoint(tiny_checkpoint)
    images = load_image_folder(folder, TINY, progress=False).images
    _assert_equals_library(bundle["patching"], params, images, None, pairs, atol=1e-5)
    page = html.unescape((out / "index.html").read_text())  # the document's JSON, escaped
    assert "patching_pair" in page and "pair 2: 1.png -> 5.png" in page
