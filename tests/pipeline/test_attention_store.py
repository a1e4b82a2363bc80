"""One analysis run, chunk by chunk, of a model with special tokens besides CLS (a distillation
token and two registers before the patches):

- every image's attention in the bundle by default: codes that decode to the model's attention
  within the error the bundle records;
- the rollout part: each image's final rollout map and per-layer contributions equal a plain
  NumPy product of the model's own attention, with the patch grid after every special token."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest
from clitools import TINY

from jaxvit_interp import init_params, run_model
from jaxvit_interp.attention_codes import CODE_MAX, decode_attention
from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.model.run import attention_over_images
from jaxvit_interp.patterns.train import AutoencoderSettings
from jaxvit_interp.pipeline.analyze import analyze
from jaxvit_interp.pipeline.settings import AnalysisSettings

CONFIG = TINY.replace(distillation_token=True, num_register_tokens=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The model, its images and the bundle of one analysis with the default settings' attention."""
    seed = int(os.environ.get("JAXVIT_TEST_SEED", secrets.randbits(32)))
    print(f"attention store run: JAXVIT_TEST_SEED={seed}")
    rng = np.random.default_rng(seed)
    params = init_params(CONFIG, int(rng.integers(1 << 30)))
    images = rng.normal(0, 1, (9, *CONFIG.image_size, CONFIG.channels)).astype(np.float32)
    settings = AnalysisSettings(
        chunk_images=4,  # three chunks, the last one short
        partial_images=2,
        pattern_samples=64,
        clusters=3,
        projection="tsne",  # no UMAP compile for nine images
        autoencoder=AutoencoderSettings(max_epochs=2, batch_size=16, latent_dim=4, features=(8,)),
        set_images=0,
    )
    assert settings.attention_images == "all"
    out = tmp_path_factory.mktemp("analysis") / "run"
    analyze(CONFIG, params, images, out, settings=settings, progress=False)
    return params, images, load_bundle(out)


def test_default_keeps_every_images_attention_within_the_recorded_error(run):
    params, images, bundle = run
    attention = bundle["attention"]
    np.testing.assert_array_equal(attention["image_index"], np.arange(9))

    # The reference: the model's attention on each image alone.
    want = np.concatenate(
        [attention_over_images(CONFIG, params, images[i : i + 1]) for i in range(9)]
    ).astype(np.float32)
    got = decode_attention(np.asarray(attention["codes"]), np.asarray(attention["steps"]))
    # Within each matrix's recorded error, give or take a float16 unit: the analysis's
    # batches of images may round the model's float16 attention differently.
    ulp = np.spacing(want.astype(np.float16)).astype(np.float32)
    assert (np.abs(got - want) <= attention["error"][..., None, None] + ulp).all()
    assert (attention["error"] <= 0.5 / CODE_MAX + 1e-7).all()
    np.testing.assert_array_equal(attention["error_max"], attention["error"].max(axis=0))


def _read_rows(attention: np.ndarray) -> np.ndarray:
    """[layer, head, N, N] -> [layer, N]: CLS's row of the rollout after each layer, one
    product a layer (identity and head-mean attention half and half)."""
    layers, _, n, _ = attention.shape
    current, rows = np.eye(n), []
    for layer in range(layers):
        current = (0.5 * np.eye(n) + 0.5 * attention[layer].mean(0)) @ current
        rows.append(current[0])
    return np.stack(rows)


def test_rollout_part_equals_the_numpy_product(run):
    params, images, bundle = run
    rollout = bundle["rollout"]
    first, n = CONFIG.num_prefix_tokens, CONFIG.num_tokens
    assert first == 4  # CLS, distillation, two registers
    attention = np.asarray(run_model(CONFIG, params, images).attention, np.float64)
    for i in range(len(images)):
        rows = _read_rows(attention[i])
        want_map = rows[-1, first:].reshape(CONFIG.grid)
        np.testing.assert_allclose(rollout["map"][i], want_map, rtol=1e-4, atol=1e-6)
        before = np.concatenate([np.eye(n)[:1], rows[:-1]])  # CLS alone before any layer
        want = 0.5 * np.abs(rows - before).sum(-1)
        np.testing.assert_allclose(rollout["contribution"][i], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rollout["map_mean"], rollout["map"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        rollout["contribution_mean"], rollout["contribution"].mean(0), rtol=1e-5
    )
