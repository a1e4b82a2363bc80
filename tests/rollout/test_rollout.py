"""Attention rollout against a plain NumPy loop over layers, on fresh random attention and on a
model's own attention."""

import numpy as np
import pytest

from jaxvit_interp import ViTConfig, init_params, run_model
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
    maps = model_rollout_over_images(config, params, images, batch_size=2)
    attention = np.asarray(run_model(config, params, images).attention, np.float64)
    first = int(config.has_cls_token)
    for i in range(5):
        rollout = _rollout_loop(attention[i], 0.5)
        rows = rollout[:, 0] if first else rollout[:, first:].mean(1)
        want = rows[:, first:].reshape(config.num_layers, *config.grid)
        np.testing.assert_allclose(maps[i], want, rtol=1e-4, atol=1e-6)


def _read_rows_loop(rollout: np.ndarray, first: int, has_cls: bool) -> np.ndarray:
    """[layer, N, N] -> [layer, N]: the CLS row, or the mean of the patch rows."""
    return rollout[:, 0] if has_cls else rollout[:, first:].mean(1)


@pytest.mark.parametrize(
    "special",
    [
        {"classifier": "token", "distillation_token": True, "num_register_tokens": 2},
        {"classifier": "gap", "num_register_tokens": 3},
    ],
    ids=["cls+dist+registers", "gap+registers"],
)
def test_final_rollout_skips_every_special_token(rng, special):
    """The final map and each layer's contribution against the NumPy product, on models whose
    patches start after several special tokens (a model without CLS reads its patch rows, not
    a register's row)."""
    config = ViTConfig.from_variant("mu/4", image_size=(8, 12), **special)
    params = init_params(config, int(rng.integers(1 << 30)))
    images = rng.normal(size=(3, 8, 12, 3)).astype(np.float32)
    got = final_rollout_over_images(config, params, images, batch_size=2)
    attention = np.asarray(run_model(config, params, images).attention, np.float64)
    first, has_cls = config.num_prefix_tokens, config.has_cls_token
    assert (
        first
        == sum(special.get(k, 0) for k in ("distillation_token", "num_register_tokens")) + has_cls
    )
    n = config.num_tokens
    for i in range(3):
        rows = _read_rows_loop(_rollout_loop(attention[i], 0.5), first, has_cls)
        want_map = rows[-1, first:].reshape(config.grid)
        np.testing.assert_allclose(got.map[i], want_map, rtol=1e-4, atol=1e-6)
        before = np.zeros(n)
        if has_cls:
            before[0] = 1.0
        else:
            before[first:] = 1.0 / (n - first)
        want = []
        for layer in range(config.num_layers):
            want.append(0.5 * np.abs(rows[layer] - before).sum())
            before = rows[layer]
        np.testing.assert_allclose(got.contribution[i], want, rtol=1e-4, atol=1e-6)
    assert ((got.contribution >= 0) & (got.contribution <= 1 + 1e-6)).all()
    # The per-layer maps of model_rollout_over_images end in the same final map.
    maps = model_rollout_over_images(config, params, images, batch_size=3)
    np.testing.assert_allclose(maps[:, -1], got.map, rtol=1e-5, atol=1e-7)
