"""Baseline images: what integrated gradients starts its path from and what occlusion puts in a
patch's place.

- ``"zero"``: every pixel 0 (the preprocessed mean colour for most checkpoints' normalisation).
- ``"mean"``: each image's own mean per channel, a flat image of its average colour.
- ``"blur"``: each image blurred by a Gaussian of standard deviation half a patch's longer side
  (truncated at 3 standard deviations, each pixel's weights renormalised at the borders): the
  patch's detail removed, its colour kept.
- an array: one image ``[height, width, channels]`` for every image, or one per image
  ``[image, height, width, channels]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig

Array = jax.Array

BASELINE_KINDS: tuple[str, ...] = ("zero", "mean", "blur")

__all__ = ["BASELINE_KINDS", "baseline_images", "blur_matrix", "check_baseline"]


def check_baseline(config: ViTConfig, baseline, num_images: int, name: str):
    """``baseline`` as a kind name, or as float32 images ``[image, height, width, channels]``
    (one image repeated without a copy); an :class:`InputError` naming the option ``name``
    otherwise."""
    if isinstance(baseline, str):
        if baseline not in BASELINE_KINDS:
            raise InputError(
                f"{name}={baseline!r} is not a baseline; expected one of "
                f"{', '.join(repr(k) for k in BASELINE_KINDS)} or an array of images"
            )
        return baseline
    array = np.asarray(baseline)
    if array.dtype.kind not in "fiu":
        raise InputError(f"{name} must be a baseline name or a numeric array, got {baseline!r}")
    image = (*config.image_size, config.channels)
    if array.shape == image:
        array = np.broadcast_to(array, (num_images, *image))
    if array.shape != (num_images, *image):
        raise InputError(
            f"{name} has shape {array.shape}; expected one image {image} or one per image "
            f"{(num_images, *image)}"
        )
    if not np.isfinite(array).all():
        raise InputError(f"{name} holds NaN or infinite pixels")
    return array.astype(np.float32, copy=False)


def blur_matrix(size: int, sigma: float) -> np.ndarray:
    """``[size, size]`` Gaussian weights along one axis, each row summing to 1."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    weights = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= 3 * sigma)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def baseline_images(config: ViTConfig, kind: str, images: Array) -> Array:
    """The ``kind`` baseline of each of ``images`` ``[batch, height, width, channels]``."""
    if kind == "zero":
        return jnp.zeros_like(images)
    if kind == "mean":
        return jnp.broadcast_to(jnp.mean(images, axis=(1, 2), keepdims=True), images.shape)
    if kind == "blur":
        sigma = max(config.patch_size) / 2
        rows = jnp.asarray(blur_matrix(images.shape[1], sigma))
        cols = jnp.asarray(blur_matrix(images.shape[2], sigma))
        return jnp.einsum("hi,bijc,wj->bhwc", rows, images, cols, precision="highest")
    raise ValueError(f"unknown baseline kind {kind!r}")
