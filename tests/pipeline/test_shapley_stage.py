"""The Shapley stage of ``analyze``:

- the bundle's ``shapley`` part equals :func:`jaxvit_interp.head_shapley` called directly on the
  stage's images with the run's first ablation kind (mean, its seeded reference sample), the
  single drops equal :func:`jaxvit_interp.head_importance` there, and ``disagree`` follows the
  documented rule (checked here against a plain loop);
- sampled values (a model of more heads than exact values take) equal the library's too;
- a resumed run reads the stage back; other Shapley settings recompute that stage alone, in a
  complete run too, and the stage turned off takes the part out;
- bad Shapley settings are refused before the run folder exists.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from clitools import TINY

from jaxvit_interp import init_params
from jaxvit_interp.bundle import INDEX_FILE, load_bundle
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import head_importance, head_shapley
from jaxvit_interp.importance.shapley import DISAGREE_SHARE, DISAGREE_STDERRS
from jaxvit_interp.pipeline import shapley_stage
from jaxvit_interp.pipeline.analyze import analyze
from jaxvit_interp.pipeline.settings import AnalysisSettings
from jaxvit_interp.pipeline.subsets import REFERENCE_STREAM, SHAPLEY_STREAM, subset

QUIET = Execution(progress=False)


def _disagree_by_loop(values, stderr, single):
    """The rule of docs/analyses.md, head by head."""
    scale = max(abs(float(v)) for v in [*values.ravel(), *single.ravel()])
    out = np.zeros(values.shape, bool)
    for at in np.ndindex(values.shape):
        allowed = DISAGREE_STDERRS * stderr[at] + DISAGREE_SHARE * scale
        out[at] = abs(values[at] - single[at]) > allowed
    return out


def test_the_stage_equals_the_library_on_its_images(kinds_run):
    params, images, labels, settings, out = kinds_run
    bundle = load_bundle(out)
    part, meta = bundle["shapley"], bundle.meta["shapley"]
    index = subset(len(images), settings.shapley_images, settings.seed, SHAPLEY_STREAM)
    np.testing.assert_array_equal(part["image_index"], index)
    sample = images[subset(len(images), settings.reference_images, settings.seed, REFERENCE_STREAM)]
    want = head_shapley(
        TINY,
        params,
        images[index],
        labels[index],
        ablation="mean",
        reference=sample,
        permutations=settings.shapley_permutations,
        target_stderr=settings.shapley_stderr,
        seed=settings.seed,
        execution=QUIET,
    )
    np.testing.assert_allclose(part["values"], want.values, atol=2e-6)
    np.testing.assert_allclose(part["stderr"], want.stderr, atol=2e-6)
    np.testing.assert_allclose(part["v_all"], want.v_all, atol=2e-6)
    assert int(part["permutations"]) == want.permutations
    assert meta["ablation"] == "mean" and meta["exact"] == want.exact
    assert meta["computed_with"] == shapley_stage.stage_settings(settings)
    single = head_importance(
        TINY, params, images[index], labels[index], ablation="mean", reference=sample,
        metrics=("prob_drop",), execution=QUIET,
    )  # fmt: skip
    np.testing.assert_allclose(part["single_drop"], single["prob_drop"].mean(0), atol=2e-6)
    # The values share out the drop with every head ablated (efficiency).
    np.testing.assert_allclose(part["values"].sum(), part["v_all"], atol=1e-5)
    np.testing.assert_array_equal(
        part["disagree"], _disagree_by_loop(part["values"], part["stderr"], part["single_drop"])
    )


def test_sampled_values_equal_the_library(rng):
    """Eight heads with a cap of 8 permutations: sampled, not exact."""
    config = dataclasses.replace(TINY, num_heads=4)
    params = init_params(config, int(rng.integers(1 << 30)))
    images = rng.normal(0, 1, (5, *config.image_size, config.channels)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, 5)
    index = np.array([0, 2, 3])
    single = rng.normal(0, 0.1, (5, config.num_layers, config.num_heads))
    seed = int(rng.integers(1000))
    part, meta = shapley_stage.compute_shapley(
        config, params, images, labels, single, index, permutations=8, target_stderr=1e-6,
        seed=seed, execution=QUIET,
    )  # fmt: skip
    want = head_shapley(
        config, params, images[index], labels[index], permutations=8, target_stderr=1e-6,
        seed=seed, execution=QUIET,
    )  # fmt: skip
    assert not meta["exact"] and int(part["permutations"]) == 8
    np.testing.assert_allclose(part["values"], want.values, atol=2e-6)
    np.testing.assert_allclose(part["stderr"], want.stderr, atol=2e-6)
    # Sampled, so errors are reported; a head whose marginal is the same in every permutation
    # (p(label) saturated in float32) has none.
    assert (part["stderr"] > 0).any()
    np.testing.assert_allclose(part["single_drop"], single[index].mean(0), atol=1e-6)
    np.testing.assert_array_equal(
        part["disagree"], _disagree_by_loop(want.values, want.stderr, single[index].mean(0))
    )


def _count_computes(monkeypatch) -> list:
    calls = []
    real = shapley_stage.compute_shapley

    def counted(*args, **kwargs):
        calls.append(kwargs["permutations"])
        return real(*args, **kwargs)

    monkeypatch.setattr(shapley_stage, "compute_shapley", counted)
    return calls


def test_resume_reads_the_stage_and_other_settings_recompute_it(kinds_run, tmp_path, monkeypatch):
    params, images, labels, settings, out = kinds_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = load_bundle(out)
    calls = _count_computes(monkeypatch)
    # Interrupted before the bundle: the stage is read back, not computed.
    (run / INDEX_FILE).unlink()
    again = analyze(TINY, params, images, run, labels=labels, settings=settings, progress=False)
    assert calls == []
    np.testing.assert_array_equal(again["shapley"]["values"], before["shapley"]["values"])
    # A complete run asked for other Shapley settings: that stage again, nothing else.
    # An odd cap counts one less: pairs of a permutation and its reverse.
    other = dataclasses.replace(settings, shapley_images=3, shapley_permutations=5)
    changed = analyze(TINY, params, images, run, labels=labels, settings=other, progress=False)
    assert calls == [4]
    assert len(changed["shapley"]["image_index"]) == 3
    assert changed.meta["shapley"]["computed_with"]["shapley_images"] == 3
    assert load_bundle(run).meta["settings"]["shapley_images"] == 3
    for name, array in before["importance"].items():
        np.testing.assert_array_equal(changed["importance"][name], array, err_msg=name)
    # The same settings once more: nothing to do.
    analyze(TINY, params, images, run, labels=labels, settings=other, progress=False)
    assert calls == [4]
    # Turned off: the part goes.
    off = dataclasses.replace(settings, shapley_images=0)
    bundle = analyze(TINY, params, images, run, labels=labels, settings=off, progress=False)
    assert "shapley" not in bundle.parts and "shapley" not in load_bundle(run).parts
    assert calls == [4]


@pytest.mark.parametrize(
    "table, named",
    [
        ({"shapley_permutations": 2}, "shapley_permutations"),
        ({"shapley_stderr": 0}, "shapley_stderr"),
        ({"shapley_images": -1}, "shapley_images"),
    ],
)
def test_bad_shapley_settings_are_refused(table, named):
    with pytest.raises(InputError, match=named):
        AnalysisSettings.from_dict(table, "analysis.")
