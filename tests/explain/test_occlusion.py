"""Occlusion maps against a loop of single forward passes, one per image and patch, and the
baseline images against their definitions written out in NumPy."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from families import CASES, SMALL
from scipy.ndimage import gaussian_filter

from jaxvit_interp import ViTConfig, run_model
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain import baseline_images, explain


def _looped_occlusion(config, params, images, labels, baselines) -> np.ndarray:
    (gh, gw), (ph, pw) = config.grid, config.patch_size
    maps = np.zeros((len(images), gh, gw))
    for i, image in enumerate(images):
        clean = np.asarray(jax.nn.softmax(run_model(config, params, image[None]).logits))
        for row in range(gh):
            for col in range(gw):
                hidden = image.copy()
                window = (slice(row * ph, (row + 1) * ph), slice(col * pw, (col + 1) * pw))
                hidden[window] = baselines[i][window]
                probs = np.asarray(jax.nn.softmax(run_model(config, params, hidden[None]).logits))
                maps[i, row, col] = clean[0, labels[i]] - probs[0, labels[i]]
    return maps


@pytest.mark.parametrize("baseline", ["mean", "given"])
def test_occlusion_equals_one_forward_pass_per_patch(jittered_model, baseline, rng):
    config, params = jittered_model(**SMALL, **CASES["deit_distilled"])
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, size=3)
    if baseline == "mean":
        baselines = np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
    else:
        baseline = baselines = rng.normal(size=images.shape).astype(np.float32)
    got = explain(
        config,
        params,
        images,
        labels,
        methods="occlusion",
        occlusion_baseline=baseline,
        execution=Execution(batch_size=2, progress=False),
    )
    want = _looped_occlusion(config, params, images, labels, baselines)
    np.testing.assert_allclose(got.maps["occlusion"], want, rtol=0, atol=2e-6)


def test_baseline_images_follow_their_definitions(rng):
    config = ViTConfig(**SMALL, **CASES["deit_distilled"])
    images = rng.normal(size=(2, *config.image_size, 3)).astype(np.float32)
    np.testing.assert_array_equal(baseline_images(config, "zero", images), 0)
    means = np.asarray(baseline_images(config, "mean", images))
    np.testing.assert_allclose(means[:, 3, 5], images.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # SciPy's Gaussian filter: sigma half a patch side per axis, cut at 3 sigma, edges reflected.
    ph, pw = config.patch_size
    want = gaussian_filter(images, sigma=(0, ph / 2, pw / 2, 0), mode="reflect", truncate=3.0)
    blurred = np.asarray(baseline_images(config, "blur", images))
    np.testing.assert_allclose(blurred, want, rtol=1e-5, atol=1e-5)
