"""Streaming over images: per-image results, the summary over images, and the model path."""

import gc
import math
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp.execution import Execution
from jaxvit_interp.model import ViTConfig, init_params, run_model
from jaxvit_interp.strength import (
    HopStrength,
    hop_strength,
    model_strength_over_images,
    strength_over_images,
    summarize,
)

FIELDS = ("strength", "mass", "patch_to_cls", "cls_to_patch", "distance", "head_entropy")


def random_attention(seed, lead, num_tokens):
    logits = np.random.default_rng(seed).normal(size=(*lead, num_tokens, num_tokens))
    # Per-head temperatures so entropies spread over the histogram's range.
    scale = np.random.default_rng(seed + 1).uniform(0.1, 8, size=(*lead, 1, 1))
    return np.array(jax.nn.softmax(jnp.asarray(logits * scale, jnp.float32), axis=-1))


def test_stream_matches_hop_strength_and_numpy_summary():
    grid, layers, heads, n = (3, 4), 2, 3, 13
    attention = random_attention(0, (9, layers, heads), n)
    sizes = [3, 2, 4]  # uneven batches
    starts = np.cumsum([0] + sizes)
    batches = (attention[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True))
    results = strength_over_images(
        batches, grid, patch_size=(8, 8), num_images=9, num_bins=7, progress=False
    )
    whole = hop_strength(attention, grid, patch_size=(8, 8))
    for field in FIELDS:
        local = getattr(results.local, field)
        assert isinstance(local, np.ndarray)
        np.testing.assert_allclose(local, getattr(whole, field), rtol=1e-6, err_msg=field)
    assert results.grid == grid and results.num_hops == 4 and results.has_cls_token

    summary = results.summary
    entropy = np.asarray(whole.head_entropy)  # [image, layer, head]
    assert int(summary.num_images) == 9
    np.testing.assert_allclose(summary.head_entropy_mean, entropy.mean(0), rtol=1e-5)
    np.testing.assert_allclose(summary.head_entropy_std, entropy.std(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(summary.strength_mean, np.asarray(whole.strength).mean(0), rtol=1e-5)
    np.testing.assert_allclose(summary.mass_mean, np.asarray(whole.mass).mean(0), rtol=1e-5)
    np.testing.assert_allclose(summary.distance_mean, np.asarray(whole.distance).mean(0), rtol=1e-5)
    np.testing.assert_allclose(summary.layer_head_entropy_mean, entropy.mean((0, 2)), rtol=1e-5)
    edges = np.linspace(0, math.log(4), 8)
    np.testing.assert_allclose(summary.entropy_bin_edges, edges, rtol=1e-6)
    for layer in range(layers):
        for head in range(heads):
            counts, _ = np.histogram(entropy[:, layer, head], bins=edges)
            np.testing.assert_array_equal(summary.entropy_histogram[layer, head], counts)
    assert summary.entropy_histogram.sum() == 9 * layers * heads


def test_summary_leaves_out_nan_heads():
    k = 3
    entropy = np.array([[[0.1, np.nan]], [[0.5, np.nan]], [[np.log(k), 0.2]]], np.float32)
    strength = np.ones((3, 1, 2, k), np.float32)
    local = HopStrength(
        strength=strength,
        mass=strength,
        patch_to_cls=np.full((3, 1, 2), np.nan, np.float32),
        cls_to_patch=np.full((3, 1, 2), np.nan, np.float32),
        distance=np.ones((3, 1, 2), np.float32),
        head_entropy=entropy,
    )
    summary = summarize(local, num_bins=4)
    np.testing.assert_allclose(
        summary.head_entropy_mean[0], [(0.1 + 0.5 + np.log(k)) / 3, 0.2], 1e-6
    )
    np.testing.assert_allclose(summary.head_entropy_std[0, 1], 0.0)
    np.testing.assert_array_equal(summary.entropy_histogram[0, 0], [1, 1, 0, 1])  # ln K: last bin
    np.testing.assert_array_equal(summary.entropy_histogram[0, 1], [1, 0, 0, 0])
    with pytest.raises(ValueError, match=r"\[image, layer, head\]"):
        summarize(jax.tree.map(lambda x: x[0], local))


def test_single_hop_grid_puts_everything_in_the_first_bin():
    attention = random_attention(1, (4, 1, 2), 2)  # grid 1x1 plus CLS
    results = strength_over_images([attention], (1, 1), progress=False, num_bins=5)
    np.testing.assert_array_equal(results.local.head_entropy, 0)
    np.testing.assert_array_equal(results.summary.entropy_histogram[..., 0], 4)


def test_stream_holds_only_the_batches_in_flight():
    """A batch is released once the next-but-one is requested: memory stays bounded."""
    alive = []

    def batches():
        for i in range(5):
            gc.collect()
            # At most the batch being measured and the one before it may still be referenced.
            assert sum(ref() is not None for ref in alive) <= 2, f"batch {i}: old batches alive"
            batch = random_attention(10 + i, (2, 1, 2), 5)
            alive.append(weakref.ref(batch))
            yield batch

    results = strength_over_images(batches(), (2, 2), progress=False)
    assert results.local.strength.shape == (10, 1, 2, 2)


def test_stream_errors_name_the_image():
    attention = random_attention(2, (6, 2, 2), 10)
    attention[4, 1, 0, 3, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*\(4, 1, 0, 3\) \(axes: image layer head"):
        strength_over_images([attention[:3], attention[3:]], (3, 3), progress=False)
    with pytest.raises(ValueError, match=r"layer and head counts"):
        strength_over_images([attention[:3, :1], attention[3:]], (3, 3), progress=False)
    with pytest.raises(ValueError, match=r"expected \[batch, layer, head, N, N\]"):
        strength_over_images([attention[0]], (3, 3), progress=False)
    with pytest.raises(ValueError, match="10 tokens"):
        strength_over_images([attention], (3, 4), progress=False)
    with pytest.raises(ValueError, match="no attention batches"):
        strength_over_images([], (3, 3), progress=False)


@pytest.fixture(scope="module", params=["token", "gap"])
def mu_model(request):
    """A tiny model on a non-square 2x3 grid with non-square 4x6-pixel patches."""
    config = ViTConfig.from_variant(
        "mu/4", image_size=(8, 18), patch_size=(4, 6), num_classes=3, classifier=request.param
    )
    return config, init_params(config, 0)


def test_model_path_matches_run_model(mu_model):
    config, params = mu_model
    # 5 images in batches of 2: the last batch is padded and its padding dropped.
    images = np.random.default_rng(3).normal(size=(5, 8, 18, 3)).astype(np.float32)
    results = model_strength_over_images(
        config, params, images, execution=Execution(batch_size=2, progress=False)
    )
    attention = run_model(config, params, images).attention
    expected = hop_strength(
        attention, config.grid, has_cls_token=config.has_cls_token, patch_size=config.patch_size
    )
    assert results.local.strength.shape == (5, 2, 2, 3)
    for field in FIELDS:
        np.testing.assert_allclose(
            getattr(results.local, field),
            getattr(expected, field),
            rtol=1e-5,
            atol=1e-7,
            err_msg=field,
        )
    assert results.has_cls_token == config.has_cls_token
    assert np.isnan(results.local.cls_to_patch).all() != config.has_cls_token
    assert results.patch_size == (4, 6)


def test_model_path_rejects_bad_images(mu_model):
    config, params = mu_model
    with pytest.raises(ValueError, match=r"shape \(2, 8, 9, 3\); expected \[image, 8, 18, 3\]"):
        model_strength_over_images(
            config, params, np.zeros((2, 8, 9, 3)), execution=Execution(progress=False)
        )
    with pytest.raises(ValueError, match="batch_size"):
        model_strength_over_images(
            config, params, np.zeros((2, 8, 18, 3)), execution=Execution(batch_size=0)
        )
