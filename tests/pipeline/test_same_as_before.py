"""The analysis, restructured as stages over one attention pass, gives every bundle array that the
code before it gave: the digits demo's model and a ViT-B/16-shaped random-weight model, each run
by this code and by the project's own code at :data:`REFERENCE_COMMIT` (taken from the git
history of this checkout) on the same images with the same settings.

The four runs take about 10 minutes of two cores, more than the rest of the suite can spare, so
the test runs when asked for: ``JAXVIT_REFERENCE_RUNS=1 python -m pytest
tests/pipeline/test_same_as_before.py``. Where the history is not at hand (an unpacked source
archive), it is skipped and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.quantities import DIRECT, summary_dims

# The last commit before the analysis became stages over one attention pass.
REFERENCE_COMMIT = "048addc"
REPO = Path(__file__).resolve().parents[2]

# Each run: the model, the images and the settings, as a script both versions run (only public
# functions that both have).
RUNS = {
    "digits": """
        from jaxvit_interp.data.digits import load_digits, load_digits_model
        config, params = load_digits_model()
        images, labels = load_digits("test")
        images, labels = images[:24], labels[:24]
        settings = dict(
            chunk_images=10, partial_images=5, attention_images=7, set_images=8,
            interaction_heads=4, random_orders=1, greedy_max_heads=24, pattern_samples=200,
            clusters=4, projection="tsne",
            autoencoder=AutoencoderSettings(max_epochs=4, batch_size=32, latent_dim=4, features=(8,)),
        )
    """,
    "vit_b16": """
        config = ViTConfig.from_variant("B/16", num_classes=10)
        params = init_params(config, 0)
        rng = np.random.default_rng(0)
        images = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
        labels = np.array([3, 7])
        settings = dict(
            chunk_images=1, partial_images=1, attention_images=1, set_images=0,
            pattern_samples=100, clusters=3, projection="tsne",
            autoencoder=AutoencoderSettings(max_epochs=2, batch_size=32, latent_dim=4, features=(8,)),
        )
    """,
}
SCRIPT = """
import sys
import numpy as np
from jaxvit_interp import AnalysisSettings, AutoencoderSettings, ViTConfig, analyze, init_params
{setup}
analyze(
    config, params, images, sys.argv[1], labels=labels,
    image_ids=[f"img-{{i}}" for i in range(len(images))],
    model_identity={{"path": "{name}", "sha256": "0"}},
    settings=AnalysisSettings(**settings), progress=False,
)
"""
# Arrays added since the reference commit that the default settings compute: each head's direct
# logit attribution and its reductions over images (its own tests compare it with the library).
ADDED = {("importance", name) for name in summary_dims(DIRECT)}
# Arrays computed from ones that differ by float32 rounding: equal to a looser tolerance (the
# autoencoder trains on patterns equal to 1e-6, then t-SNE lays out its latents).
LOOSE = {("patterns", "positions"), ("patterns", "positions_mean"), ("patterns", "extent")}


def _reference_code(target: Path) -> Path:
    """The package at :data:`REFERENCE_COMMIT`, unpacked into ``target``."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("this checkout has no git history to take the reference code from")
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", REFERENCE_COMMIT, "jaxvit_interp"],
            check=True,
            capture_output=True,
        ).stdout
    except subprocess.CalledProcessError as e:
        pytest.skip(f"commit {REFERENCE_COMMIT} is not in this checkout's history: {e.stderr}")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def _run(code: Path, name: str, out: Path) -> Path:
    script = SCRIPT.format(setup=textwrap.dedent(RUNS[name]), name=name)
    env = {**os.environ, "PYTHONPATH": str(code)}
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, cwd=code)
    return out


@pytest.fixture(scope="module")
def reference_code(tmp_path_factory) -> Path:
    return _reference_code(tmp_path_factory.mktemp("reference"))


def _arrays(bundle) -> dict[tuple[str, str], np.ndarray]:
    return {
        (part, name): np.asarray(value)
        for part, arrays in bundle.parts.items()
        for name, value in arrays.items()
    }


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("JAXVIT_REFERENCE_RUNS"),
    reason="four whole runs: set JAXVIT_REFERENCE_RUNS=1 to compare with the reference commit",
)
@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_bundle_array_equals_the_reference_codes(name, reference_code, tmp_path):
    before = load_bundle(_run(reference_code, name, tmp_path / "before"))
    after = load_bundle(_run(REPO, name, tmp_path / "after"))
    old, new = _arrays(before), _arrays(after)
    assert sorted(set(new) - ADDED) == sorted(old)
    for key, want in old.items():
        got = new[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if key in LOOSE:
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=str(key))
        elif key == ("attention", "codes"):
            # Codes of weights at a rounding boundary may move by one step.
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, key
        elif np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6, err_msg=str(key))
        else:
            np.testing.assert_array_equal(got, want, err_msg=str(key))
    drop = {"fingerprint", "settings", "devices"}
    assert {k: v for k, v in after.meta.items() if k not in drop} == json.loads(
        json.dumps({k: v for k, v in before.meta.items() if k not in drop})
    )
