"""The explanations stage of ``analyze``:

- the bundle's ``explanations`` part equals :func:`jaxvit_interp.explain.explain`,
  :func:`~jaxvit_interp.explain.faithfulness` (one method's maps at a time) and
  :func:`~jaxvit_interp.explain.head_faithfulness` called directly on the stage's seeded subset,
  with the run's labels, its baseline and steps;
- attention flow joins the methods up to 65 tokens and not beyond;
- a resumed run reads the stage back; other explanation settings recompute that stage alone (its
  file rewritten, every other kept file and chunk untouched), in a complete run too, and the
  stage turned off takes the part out;
- bad explanation settings are refused naming the flag, before the run folder exists.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from clitools import TINY, assert_one_line_error, run_main
from PIL import Image

from jaxvit_interp.bundle import INDEX_FILE, load_bundle
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain import explain, faithfulness, head_faithfulness
from jaxvit_interp.pipeline import explain_stage
from jaxvit_interp.pipeline.analyze import analyze
from jaxvit_interp.pipeline.run_folder import CHUNK_DIR
from jaxvit_interp.pipeline.settings import AnalysisSettings
from jaxvit_interp.pipeline.subsets import EXPLAIN_STREAM, subset

QUIET = Execution(progress=False)
# The tiny model has 17 tokens: attention flow is among its methods.
TINY_METHODS = [
    "rollout",
    "attention_flow",
    "grad_rollout",
    "gradcam",
    "integrated_gradients",
    "occlusion",
]
MODES = ["deletion", "insertion"]


def test_the_stage_equals_the_library_on_its_images(kinds_run):
    params, images, labels, settings, out = kinds_run
    bundle = load_bundle(out)
    part, meta = bundle["explanations"], bundle.meta["explanations"]
    index = subset(len(images), settings.explain_images, settings.seed, EXPLAIN_STREAM)
    assert len(index) == 3
    np.testing.assert_array_equal(part["image_index"], index)
    np.testing.assert_array_equal(part["labels"], labels[index])
    assert meta["methods"] == TINY_METHODS and meta["modes"] == MODES
    assert meta["baseline"] == "mean" and meta["steps"] == settings.explain_steps
    assert meta["computed_with"] == explain_stage.stage_settings(settings)
    chosen, followed = images[index], labels[index]
    options = dict(steps=settings.explain_steps, baseline="mean", execution=QUIET)
    ex = explain(
        TINY, params, chosen, followed, methods=TINY_METHODS, ig_baseline="mean",
        occlusion_baseline="mean", execution=QUIET,
    )  # fmt: skip
    assert part["maps"].dtype == np.float16
    for k, method in enumerate(TINY_METHODS):
        np.testing.assert_allclose(
            part["maps"][:, k].astype(np.float32), ex.maps[method], rtol=1e-3, atol=1e-6,
            err_msg=method,
        )  # fmt: skip
        for d, mode in enumerate(MODES):
            want = faithfulness(
                TINY, params, chosen, followed, ex.maps[method], mode=mode,
                random_seed=settings.seed, **options,
            )  # fmt: skip
            what = f"{method} {mode}"
            np.testing.assert_allclose(
                part["curves"][:, k, d], want.curves, atol=1e-5, err_msg=what
            )
            np.testing.assert_allclose(part["area"][:, k, d], want.area, atol=1e-5, err_msg=what)
            np.testing.assert_allclose(part["random_curves"][:, d], want.random_curves, atol=1e-5)
            np.testing.assert_allclose(part["random_area"][:, d], want.random_area, atol=1e-5)
    assert part["curves"].shape[-1] == settings.explain_steps + 1
    for d, mode in enumerate(MODES):
        heads = head_faithfulness(
            TINY, params, chosen, followed, mode=mode, random_seed=settings.seed, **options
        )
        np.testing.assert_allclose(part["head_area"][..., d], heads.area, atol=1e-5, err_msg=mode)
        np.testing.assert_allclose(part["head_area_mean"][..., d], heads.mean, atol=1e-5)


def test_attention_flow_joins_the_methods_up_to_65_tokens():
    defaults = [m for m in TINY_METHODS if m != "attention_flow"]
    at_65 = dataclasses.replace(TINY, image_size=(16, 16))  # 8 x 8 patches and the CLS token
    beyond = dataclasses.replace(TINY, image_size=(18, 18))  # 9 x 9 patches: 82 tokens
    assert (at_65.num_tokens, beyond.num_tokens) == (65, 82)
    assert list(explain_stage.stage_methods(at_65)) == TINY_METHODS
    assert list(explain_stage.stage_methods(beyond)) == defaults


def _kept_files(run) -> dict:
    """The files of the run folder's kept stages and chunks, by path -> modification time."""
    files = [*run.glob("*-stage.npz"), *(run / CHUNK_DIR).glob("*.npz")]
    return {path: path.stat().st_mtime_ns for path in files}


def test_resume_reads_the_stage_and_other_settings_recompute_it(kinds_run, tmp_path, monkeypatch):
    params, images, labels, settings, out = kinds_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = load_bundle(out)
    calls = []
    real = explain_stage.compute_explanations
    monkeypatch.setattr(
        explain_stage,
        "compute_explanations",
        lambda *a, **k: calls.append(k["steps"]) or real(*a, **k),
    )
    # Interrupted before the bundle: the stage is read back, not computed.
    (run / INDEX_FILE).unlink()
    kwargs = dict(labels=labels, progress=False)
    again = analyze(TINY, params, images, run, settings=settings, **kwargs)
    assert calls == []
    np.testing.assert_array_equal(again["explanations"]["area"], before["explanations"]["area"])
    # A complete run asked for other steps: that stage again, nothing else.
    kept = _kept_files(run)
    stage_file = run / explain_stage.EXPLAIN_FILE
    assert stage_file in kept and len(kept) == 4 + 3  # head sets, Shapley, patching; 3 chunks
    other = dataclasses.replace(settings, explain_steps=3)
    changed = analyze(TINY, params, images, run, settings=other, **kwargs)
    assert calls == [3]
    assert changed["explanations"]["curves"].shape[-1] == 4
    assert changed.meta["explanations"]["computed_with"]["explain_steps"] == 3
    assert load_bundle(run).meta["settings"]["explain_steps"] == 3
    now = _kept_files(run)
    assert now[stage_file] != kept[stage_file]
    assert {p: t for p, t in now.items() if p != stage_file} == {
        p: t for p, t in kept.items() if p != stage_file
    }
    np.testing.assert_array_equal(changed["explanations"]["maps"], before["explanations"]["maps"])
    np.testing.assert_array_equal(changed["shapley"]["values"], before["shapley"]["values"])
    for name, array in before["importance"].items():
        np.testing.assert_array_equal(changed["importance"][name], array, err_msg=name)
    # Turned off: the part goes; asked for again: read back from its kept file.
    off = dataclasses.replace(settings, explain_images=0)
    bundle = analyze(TINY, params, images, run, settings=off, **kwargs)
    assert "explanations" not in bundle.parts and "explanations" not in load_bundle(run).parts
    back = analyze(TINY, params, images, run, settings=other, **kwargs)
    assert calls == [3]
    np.testing.assert_array_equal(back["explanations"]["area"], changed["explanations"]["area"])


@pytest.mark.parametrize(
    "table, named",
    [
        ({"explain_images": -1}, "explain_images"),
        ({"explain_steps": 0}, "explain_steps"),
        ({"explain_baseline": "noise"}, "explain_baseline"),
    ],
)
def test_bad_explain_settings_are_refused(table, named):
    with pytest.raises(InputError, match=named):
        AnalysisSettings.from_dict(table, "analysis.")


@pytest.mark.parametrize(
    "flag, value", [("--explain-images", "-1"), ("--explain-baseline", "noise")]
)
def test_bad_explain_flags_are_refused_before_the_run_folder(
    flag, value, tiny_checkpoint, tmp_path, capsys
):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    out = tmp_path / "run"
    result = run_main(
        capsys, "analyze", "--checkpoint", tiny_checkpoint, "--images", folder, "--out", out,
        flag, value,
    )  # fmt: skip
    assert_one_line_error(result, flag, value)
    assert not out.exists()
