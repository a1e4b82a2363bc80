"""Resampling position embeddings to another patch grid (loading a model at a new image size)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("old_grid", "new_grid", "num_prefix"))
def resample_posemb(
    posemb: Array, *, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int
) -> Array:
    """Bilinear resampling of the patch part of a position-embedding table.

    Args:
      posemb: ``[1, num_prefix + Gh*Gw, hidden]``, patches row-major after the prefix.
      old_grid: ``(Gh, Gw)`` the table was trained for.
      new_grid: ``(Gh', Gw')`` wanted.
      num_prefix: leading rows that are not patches (1 for a CLS token, else 0); kept as they are.

    Returns:
      ``[1, num_prefix + Gh'*Gw', hidden]`` float32.

    Plain bilinear interpolation with pixel-centre alignment and edges clamped, no antialiasing,
    so it equals ``scipy.ndimage.zoom(grid, zoom, order=1, grid_mode=True, mode="nearest")``
    (what the tests compare against) in both directions.
    """
    posemb = posemb.astype(jnp.float32)
    hidden = posemb.shape[-1]
    prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
    grid = grid.reshape(*old_grid, hidden)
    grid = jax.image.resize(grid, (*new_grid, hidden), method="linear", antialias=False)
    return jnp.concatenate([prefix, grid.reshape(1, -1, hidden)], axis=1)
