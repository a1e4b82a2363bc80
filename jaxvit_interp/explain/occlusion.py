"""Occlusion maps: how much the label's probability falls when one patch is hidden.

``map[p] = p(label | image) - p(label | image with patch p's pixels replaced by the baseline)``,
for every patch ``p`` of the grid. Every occluded copy of every image of a batch goes through
one forward pass: ``batch * Gh * Gw`` images at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.explain.baselines import baseline_images
from jaxvit_interp.explain.gradients import at_labels
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import forward

Array = jax.Array

__all__ = ["occlusion_batch", "patch_masks"]


def patch_masks(config: ViTConfig) -> np.ndarray:
    """``[patch, height, width, 1]``: 1 on the pixels of each patch (row-major), 0 elsewhere."""
    (gh, gw), (ph, pw) = config.grid, config.patch_size
    masks = np.zeros((gh, gw, *config.image_size, 1), np.float32)
    for row in range(gh):
        for col in range(gw):
            masks[row, col, row * ph : (row + 1) * ph, col * pw : (col + 1) * pw] = 1.0
    return masks.reshape(gh * gw, *config.image_size, 1)


@functools.partial(jax.jit, static_argnames=("config", "baseline"))
def occlusion_batch(
    config: ViTConfig,
    params,
    images: Array,
    labels: Array,
    baselines: Array | None = None,
    *,
    baseline: str = "zero",
) -> Array:
    """Occlusion maps ``[batch, Gh, Gw]`` of ``images`` ``[batch, height, width, channels]``,
    patches replaced by ``baselines`` (the same shape) or where None by the ``baseline`` kind of
    each image (:func:`~jaxvit_interp.explain.baselines.baseline_images`)."""
    images = images.astype(jnp.float32)
    if baselines is None:
        baselines = baseline_images(config, baseline, images)
    masks = jnp.asarray(patch_masks(config))  # [patch, H, W, 1]
    batch, patches = len(images), len(masks)
    copies = images[:, None] * (1.0 - masks) + baselines[:, None].astype(jnp.float32) * masks
    every = jnp.concatenate([images, copies.reshape(batch * patches, *images.shape[1:])])
    probs = jax.nn.softmax(forward(config, params, every).logits, axis=-1)
    repeated = jnp.concatenate([labels, jnp.repeat(labels, patches)])
    label_probs = at_labels(probs, repeated)
    clean, occluded = label_probs[:batch], label_probs[batch:].reshape(batch, patches)
    return (clean[:, None] - occluded).reshape(batch, *config.grid)
