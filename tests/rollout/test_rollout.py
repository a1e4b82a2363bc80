"""Attention rollout against a plain NumPy loop over layers, on fresh random attention and on a
model's own attention."""

import numpy as np
import pytest

from jaxvit_interp import ViTConfig, init_params, run_model
from jaxvit_interp.execution import Execution
from jaxvit_interp.rollout import (
    attention_rollout,
    final_rollout_over_images,
    model_rollout_over_images,
    rollout_maps,
)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _rollout_loop(attention: np.ndarray, w: float) -> np.ndarray:
    """[layer, head, N, N] -> [layer, N, N], one matrix product per layer."""
    layers, _, n, _ = attention.shape
    out, current = [], np.eye(n)
    for layer in range(layers):
        step = w * np.eye(n) + (1 - w) * attention[layer].mean(axis=0)
        current = step @ current
        out.append(current)
    return np.stack(out)


@pytest.mark.parametrize("w", [0.5, 0.2])
def test_rollout_is_the_product_of_the_layers(rng, w):
    images, layers, heads, n = 3, int(rng.integers(1, 5)), int(rng.integers(1, 4)), 10
    attention = _softmax(rng.normal(0, 2, (images, layers, heads, n, n)))
    got = np.asarray(attention_rollout(attention.astype(np.float32), residual_weight=w))
    want = np.stack([_rollout_loop(a, w) for a in attention])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)  # still row-stochastic


def test_maps_read_cls_or_the_mean_of_the_patches(rng):
    rollout = rng.uniform(0, 1, (2, 3, 1 + 12, 1 + 12))
    maps = np.asarray(rollout_maps(rollout, (3, 4), num_prefix=1))
    np.testing.assert_array_equal(maps, rollout[..., 0, 1:].reshape(2, 3, 3, 4))
    patches = rng.uniform(0, 1, (2, 3, 12, 12))
    maps = np.asarray(rollout_maps(patches, (3, 4), num_prefix=0))
    np.testing.assert_allclose(maps, patches.mean(-2).reshape(2, 3, 3, 4), rtol=1e-6)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_model_rollout_over_images_matches_the_models_attention(rng, classifier):
    config = ViTConfig.from_variant("mu/4", image_size=(12, 8), classifier=classifier)
    params = init_params(config, int(rng.integers(1 << 30)))
    images = rng.normal(size=(5, 12, 8, 3)).astype(np.float32)
    maps = model_rollout_over_images(
        config, params, images, execution=Execution(batch_size=2, progress=False)
    )
    attention = np.asarray(run_model(config, params, images).attention, np.float64)
    first = int(config.has_cls_token)
    for i in range(5):
        rollout = _rollout_loop(attention[i], 0.5)
        rows = rollout[:, 0] if first else rollout[:, first:].mean(1)
        want = rows[:, first:].reshape(config.num_layers, *config.grid)
        np.testing.assert_allclose(maps[i], want, rtol=1e-4, atol=1e-6)


def test_final_rollout_skips_every_special_token(rng):
    """The final map and each layer's contribution against the NumPy product, on a model without
    CLS whose patches start after registers: it reads the mean of its patch rows, not a
    register's row (CLS with distillation and registers: tests/pipeline/test_attention_store.py)."""
    config = ViTConfig.from_variant(
        "mu/4", image_size=(8, 12), classifier="gap", num_register_tokens=3
    )
    params = init_params(config, int(rng.integers(1 << 30)))
    images = rng.normal(size=(3, 8, 12, 3)).astype(np.float32)
    got = final_rollout_over_images(
        config, params, images, execution=Execution(batch_size=2, progress=False)
    )
    attention = np.asarray(run_model(config, params, images).attention, np.float64)
    first, n = config.num_prefix_tokens, config.num_tokens
    assert first == 3 and not config.has_cls_token
    for i in range(3):
        rows = _rollout_loop(attention[i], 0.5)[:, first:].mean(1)  # [layer, N]
        np.testing.assert_allclose(
            got.map[i], rows[-1, first:].reshape(config.grid), rtol=1e-4, atol=1e-6
        )
        # Before any layer the pooled patch rows are uniform over the patches.
        before = np.concatenate([np.zeros((1, first)), np.full((1, n - first), 1 / (n - first))], 1)
        before = np.concatenate([before, rows[:-1]])
        want = 0.5 * np.abs(rows - before).sum(-1)
        np.testing.assert_allclose(got.contribution[i], want, rtol=1e-4, atol=1e-6)
    # The identity's half of each layer's step moves nothing: at most 1/2 moves.
    assert ((got.contribution >= 0) & (got.contribution <= 0.5 + 1e-6)).all()
