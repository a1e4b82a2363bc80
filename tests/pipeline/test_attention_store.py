"""One analysis run, chunk by chunk, of a model with special tokens besides CLS (a distillation
token and two registers before the patches):

- every image's attention in the bundle by default: codes that decode to the model's attention
  within the absolute and relative errors the bundle records;
- a run resumed from chunks written with version 3's linear codes encodes their attention again:
  its bundle holds one code and equals an uninterrupted run's;
- the rollout part: each image's final rollout map and per-layer contributions equal a plain
  NumPy product of the model's own attention, with the patch grid after every special token."""

from __future__ import annotations

import os
import secrets
import shutil

import numpy as np
import pytest
from clitools import TINY

from jaxvit_interp import init_params, run_model
from jaxvit_interp.attention_codes import (
    LINEAR,
    POWER,
    RELATIVE_FLOOR,
    decode_stored,
    encode_attention,
)
from jaxvit_interp.bundle import INDEX_FILE, load_bundle
from jaxvit_interp.model.run import attention_over_images
from jaxvit_interp.patterns.train import AutoencoderSettings
from jaxvit_interp.pipeline.analyze import CHUNK_DIR, analyze
from jaxvit_interp.pipeline.settings import AnalysisSettings
from jaxvit_interp.storage import load_npz, save_npz

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
    return params, images, load_bundle(out), out, settings


def test_default_keeps_every_images_attention_within_the_recorded_error(run):
    params, images, bundle, _, _ = run
    attention = bundle["attention"]
    np.testing.assert_array_equal(attention["image_index"], np.arange(9))
    assert bundle.attention_code == POWER

    # The reference: the model's attention on each image alone.
    want = np.concatenate(
        [attention_over_images(CONFIG, params, images[i : i + 1]) for i in range(9)]
    ).astype(np.float32)
    got = decode_stored(attention, bundle.attention_code)
    # Within each matrix's recorded absolute and relative errors, give or take a float16 unit:
    # the analysis's batches of images may round the model's float16 attention differently.
    ulp = np.spacing(want.astype(np.float16)).astype(np.float32)
    diff = np.abs(got - want)
    assert (diff <= attention["error"][..., None, None] + ulp).all()
    kept = want >= RELATIVE_FLOOR / CONFIG.num_tokens
    relative = attention["relative_error"][..., None, None] * want + ulp
    assert (diff <= relative)[kept].all()
    assert (attention["error"] <= (255.5 / 255) ** 4 - 1).all()
    for name in ("error", "relative_error"):
        np.testing.assert_array_equal(attention[f"{name}_max"], attention[name].max(axis=0))


def test_a_run_resumed_from_linear_chunks_encodes_their_attention_again(run, tmp_path):
    """The chunks of a version-3 run hold linear codes: resuming it (no bundle yet) computes
    their attention again rather than mixing codes, and gives an uninterrupted run's bundle."""
    params, images, bundle, out, settings = run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / INDEX_FILE).unlink()
    # Chunk 1 (images 4..7) as version 3 wrote it: linear codes of every weight and their
    # error, no exponents, special columns nor relative errors.
    path = old / CHUNK_DIR / "chunk-00001.npz"
    chunk = {k: v for k, v in load_npz(path).items() if not k.startswith("attention_")}
    linear = encode_attention(attention_over_images(CONFIG, params, images[4:8]), 4, LINEAR)
    for name in ("codes", "steps", "error"):
        chunk[f"attention_{name}"] = linear[name]
    save_npz(path, chunk)

    resumed = analyze(CONFIG, params, images, old, settings=settings, progress=False)
    assert resumed.attention_code == POWER
    for name, value in bundle["attention"].items():
        np.testing.assert_array_equal(resumed["attention"][name], value, err_msg=name)
    # The chunk was written again with the power code, so a later resume reads it as is.
    assert "attention_special" in load_npz(path)


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
    params, images, bundle, _, _ = run
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
