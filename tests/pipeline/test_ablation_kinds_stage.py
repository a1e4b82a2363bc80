"""The run's ablation kinds and direct logit attribution, chunk by chunk:

- the first kind of ``ablations`` makes the ``importance`` metrics and the head-set stage, each
  further kind's metrics sit beside them (``prob_drop_zero_ablation``), and ``direct`` is each
  head's direct logit attribution: every array equals the library's function called directly on
  the same images, with the reference a mean ablation averages over (the run's seeded sample) and
  the partners a resample ablation pairs (the run's seeded derangement);
- a resumed run equals an uninterrupted one, a chunk written before the direct attribution
  existed included;
- the default settings keep the fingerprint of a run from before the settings existed; bad
  settings are refused before the run folder exists.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from clitools import TINY

from jaxvit_interp import init_params
from jaxvit_interp.bundle import INDEX_FILE, load_bundle
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import (
    direct_logit_attribution,
    head_importance,
    pairwise_interactions,
)
from jaxvit_interp.pipeline.analyze import CHUNK_DIR, analyze
from jaxvit_interp.pipeline.settings import STAGE_SETTINGS, AnalysisSettings, run_fingerprint
from jaxvit_interp.pipeline.subsets import REFERENCE_STREAM, derangement, subset
from jaxvit_interp.quantities import KIND_METRICS, ablation_array
from jaxvit_interp.storage import load_npz, save_npz

QUIET = Execution(progress=False)
KINDS = ("mean", "zero", "resample")  # as tests/conftest.py kinds_run asks


def _reference(kind, images, settings):
    if kind == "mean":
        return images[
            subset(len(images), settings.reference_images, settings.seed, REFERENCE_STREAM)
        ]
    if kind == "resample":
        return images[derangement(len(images), settings.seed)]
    return None


def test_each_kind_and_the_direct_attribution_equal_the_library(kinds_run):
    params, images, labels, settings, out = kinds_run
    bundle = load_bundle(out)
    part = bundle["importance"]
    assert bundle.meta["settings"]["ablations"] == list(KINDS)
    partners = derangement(len(images), settings.seed)
    assert (partners != np.arange(len(images))).all()
    assert sorted(partners) == list(range(len(images)))
    for kind in KINDS:
        want = head_importance(
            TINY,
            params,
            images,
            labels,
            ablation=kind,
            reference=_reference(kind, images, settings),
            execution=QUIET,
        )
        names = {m: m if kind == KINDS[0] else ablation_array(m, kind) for m in KIND_METRICS}
        for m, name in names.items():
            np.testing.assert_allclose(part[name], want[m], atol=2e-6, err_msg=name)
            np.testing.assert_allclose(
                part[f"{name}_mean"], np.asarray(want[m], np.float64).mean(0), atol=2e-6
            )
            assert f"{name}_class_specificity" in part
    # taylor is the same gradient for every kind: only the first's is kept.
    assert "taylor" in part and not any(k.startswith("taylor_") and "ablation" in k for k in part)
    direct = direct_logit_attribution(TINY, params, images, labels, ablation=None, execution=QUIET)
    np.testing.assert_allclose(part["direct"], direct.direct, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(part["direct_mean"], direct.direct.mean(0), rtol=1e-5, atol=2e-6)


def test_the_head_set_stage_ablates_with_the_first_kind(kinds_run):
    params, images, labels, settings, out = kinds_run
    part = load_bundle(out)["head_sets"]
    index = part["image_index"]
    sample = images[subset(len(images), settings.reference_images, settings.seed, REFERENCE_STREAM)]
    inter = pairwise_interactions(
        TINY,
        params,
        images[index],
        part["interaction_heads"],
        labels[index],
        ablation="mean",
        reference=sample,
        execution=QUIET,
    )
    np.testing.assert_allclose(part["interaction_prob_drop"], inter.mean("prob_drop"), atol=2e-6)
    zero = pairwise_interactions(
        TINY, params, images[index], part["interaction_heads"], labels[index], execution=QUIET
    )
    assert not np.allclose(part["single_prob_drop"], zero.single["prob_drop"].mean(0))


def test_a_resumed_run_equals_the_uninterrupted_one(kinds_run, tmp_path):
    """The bundle gone, one chunk lost and one written before the direct attribution existed:
    the run again gives the uninterrupted run's arrays."""
    params, images, labels, settings, out = kinds_run
    bundle = load_bundle(out)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / INDEX_FILE).unlink()
    (old / CHUNK_DIR / "chunk-00002.npz").unlink()
    path = old / CHUNK_DIR / "chunk-00001.npz"
    chunk = load_npz(path)
    assert "direct" in chunk
    save_npz(path, {k: v for k, v in chunk.items() if k != "direct"})

    resumed = analyze(TINY, params, images, old, labels=labels, settings=settings, progress=False)
    for name, value in bundle["importance"].items():
        np.testing.assert_allclose(resumed["importance"][name], value, atol=1e-6, err_msg=name)
    assert "direct" in load_npz(path)


def test_default_settings_keep_the_fingerprint_of_a_run_from_before_them():
    """The fingerprint of the default settings is the hash of the settings that existed before
    ``ablations`` and ``reference_images``; asking for another kind makes another run."""
    model, digest = {"path": "m", "sha256": "0"}, "images"
    default = AnalysisSettings()
    # The Shapley stage's settings came later still, and never enter the fingerprint.
    later = ("ablations", "reference_images", *STAGE_SETTINGS)
    before = {k: v for k, v in default.to_dict().items() if k not in later}
    blob = json.dumps({"model": model, "images": digest, "settings": before}, sort_keys=True)
    want = hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert run_fingerprint(model_identity=model, image_digest=digest, settings=default) == want
    for other in (
        AnalysisSettings(ablations=("zero", "mean")),
        AnalysisSettings(ablations=("resample",)),
    ):
        assert run_fingerprint(model_identity=model, image_digest=digest, settings=other) != want
    # The reference sample matters only to a mean ablation.
    fewer = AnalysisSettings(reference_images=3)
    assert run_fingerprint(model_identity=model, image_digest=digest, settings=fewer) == want


def test_bad_kinds_are_refused_before_the_run_folder_exists(tmp_path):
    with pytest.raises(InputError, match="ablations must be a list naming each item once"):
        AnalysisSettings(ablations=("mean", "zero", "mean"))
    with pytest.raises(InputError, match="ablations must be a non-empty list, each one of"):
        AnalysisSettings.from_dict({"ablations": ["zero", "half"]}, "analysis.")
    params = init_params(TINY, 0)
    one = np.zeros((1, *TINY.image_size, TINY.channels), np.float32)
    out = tmp_path / "run"
    with pytest.raises(InputError, match="resample ablation .* this run has 1 image"):
        analyze(TINY, params, one, out, settings=AnalysisSettings(ablations=("zero", "resample")))
    assert not out.exists()
