"""Baseline images: what integrated gradients starts its path from and what occlusion puts in a
patch's place.

- ``"zero"``: every pixel 0 (the preprocessed mean colour for most checkpoints' normalisation).
- ``"mean"``: each image's own mean per channel, a flat image of its average colour.
- ``"blur"``: each image blurred by a Gaussian of standard deviation half a patch side along
  each axis (ViT-B/16: 8 pixels), truncated at 3 standard deviations, samples beyond an edge
  reflected (``scipy.ndimage``'s ``mode="reflect"``): the patch's detail removed, its colours
  kept.
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


# The blur's standard deviation in patch sides, and where its kernel is cut (in deviations).
BLUR_SIGMA_PATCHES = 0.5
BLUR_TRUNCATE = 3.0


def blur_matrix(size: int, sigma: float, truncate: float = BLUR_TRUNCATE) -> np.ndarray:
    """``[size, size]`` matrix ``B`` with ``B @ x`` the 1-D Gaussian blur of ``x`` along its
    first axis: weights ``exp(-t^2 / (2 sigma^2))`` for offsets ``|t| <= int(truncate * sigma
    + 0.5)``, normalised to sum 1, samples beyond an edge reflected (``d c b a | a b c d``)."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    matrix = np.zeros((size, size))
    for row in range(size):
        source = row + offsets
        # Reflect into [0, size) until every index lands (a kernel wider than the image folds
        # more than once).
        while ((source < 0) | (source >= size)).any():
            source = np.where(source < 0, -source - 1, source)
            source = np.where(source >= size, 2 * size - source - 1, source)
        np.add.at(matrix[row], source, weights)
    return matrix.astype(np.float32)


def baseline_images(config: ViTConfig, kind: str, images: Array) -> Array:
    """The ``kind`` baseline of each of ``images`` ``[batch, height, width, channels]``."""
    if kind == "zero":
        return jnp.zeros_like(images)
    if kind == "mean":
        return jnp.broadcast_to(jnp.mean(images, axis=(1, 2), keepdims=True), images.shape)
    if kind == "blur":
        sigma_h, sigma_w = (BLUR_SIGMA_PATCHES * side for side in config.patch_size)
        rows = jnp.asarray(blur_matrix(images.shape[1], sigma_h))
        cols = jnp.asarray(blur_matrix(images.shape[2], sigma_w))
        return jnp.einsum("hi,bijc,wj->bhwc", rows, images, cols, precision="highest")
    raise ValueError(f"unknown baseline kind {kind!r}")
