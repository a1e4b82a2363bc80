"""Resampling position embeddings to another patch grid (loading a model at a new image size).

Each family resamples its learned table its own way, and a model loaded at another size should
see exactly the table its own library would give it:

- ``"bilinear"``: vit_jax and big_vision (``scipy.ndimage.zoom(..., order=1)``).
- ``"bicubic"``: PyTorch's ``F.interpolate(mode="bicubic", align_corners=False)``, Keys' cubic
  with ``a = -0.75`` and clamped edges (Hugging Face ViT, DeiT, DINOv2, CLIP, SigLIP).
- ``"bicubic_antialias"``: the same with ``antialias=True``, a separable filter with
  ``a = -0.5`` (Pillow's) widened by the scale when shrinking and renormalised at the edges
  (timm, OpenCLIP, Hugging Face DINOv2 with registers).

The two bicubic forms are written here as ``[new, old]`` weight matrices per axis, built the way
PyTorch's kernels compute their weights, so no PyTorch is needed to load.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError

Array = jax.Array
METHODS = ("bilinear", "bicubic", "bicubic_antialias")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``x``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(old: int, new: int) -> np.ndarray:
    """``[new, old]`` weights of PyTorch's bicubic resize (``align_corners=False``)."""
    scale = old / new
    source = scale * (np.arange(new) + 0.5) - 0.5
    base = np.floor(source)
    t = source - base
    weights = np.zeros((new, old))
    for offset in (-1, 0, 1, 2):
        # PyTorch reads out-of-range taps from the nearest edge pixel.
        index = np.clip(base + offset, 0, old - 1).astype(int)
        np.add.at(weights, (np.arange(new), index), _cubic(t - offset, -0.75))
    return weights


def bicubic_antialias_matrix(old: int, new: int) -> np.ndarray:
    """``[new, old]`` weights of PyTorch's antialiased bicubic resize (``align_corners=False``)."""
    scale = old / new
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((new, old))
    for i in range(new):
        center = scale * (i + 0.5)
        # int() truncates as PyTorch's int64 cast does; the bounds are then clamped to the input.
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), old)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv_scale, -0.5)
        total = taps.sum()
        weights[i, lo:hi] = taps / total if total != 0 else taps
    return weights


@functools.lru_cache(maxsize=64)
def _matrices(old_grid, new_grid, method) -> tuple[np.ndarray, np.ndarray]:
    build = bicubic_matrix if method == "bicubic" else bicubic_antialias_matrix
    return build(old_grid[0], new_grid[0]), build(old_grid[1], new_grid[1])


@functools.partial(jax.jit, static_argnames=("old_grid", "new_grid"))
def _bilinear(grid: Array, old_grid, new_grid) -> Array:
    hidden = grid.shape[-1]
    grid = grid.reshape(*old_grid, hidden)
    return jax.image.resize(grid, (*new_grid, hidden), method="linear", antialias=False)


def resample_posemb(
    posemb,
    *,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix: int,
    method: str = "bilinear",
) -> np.ndarray:
    """Resample the patch part of a position-embedding table to another grid.

    Args:
      posemb: ``[1, num_prefix + Gh*Gw, hidden]``, patches row-major after the prefix.
      old_grid: ``(Gh, Gw)`` the table was trained for.
      new_grid: ``(Gh', Gw')`` wanted.
      num_prefix: leading rows that are not patches (special tokens); kept as they are.
      method: ``"bilinear"``, ``"bicubic"`` or ``"bicubic_antialias"`` (module docstring).

    Returns:
      ``[1, num_prefix + Gh'*Gw', hidden]`` float32.

    ``"bilinear"`` is plain bilinear interpolation with pixel-centre alignment and edges clamped,
    no antialiasing, so it equals ``scipy.ndimage.zoom(grid, zoom, order=1, grid_mode=True,
    mode="nearest")`` (what the tests compare against) in both directions.
    """
    if method not in METHODS:
        raise InputError(f"unknown position interpolation {method!r}; expected one of {METHODS}")
    posemb = np.asarray(posemb, np.float32)
    hidden = posemb.shape[-1]
    prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
    if grid.shape[0] != math.prod(old_grid):
        raise InputError(
            f"position table has {grid.shape[0]} patch rows; grid {old_grid} needs "
            f"{math.prod(old_grid)}"
        )
    if method == "bilinear":
        resized = np.asarray(_bilinear(jnp.asarray(grid), tuple(old_grid), tuple(new_grid)))
    else:
        rows, cols = _matrices(tuple(old_grid), tuple(new_grid), method)
        table = grid.reshape(*old_grid, hidden).astype(np.float64)
        resized = np.einsum("ya,xb,abd->yxd", rows, cols, table)
    resized = resized.reshape(1, -1, hidden).astype(np.float32)
    return np.concatenate([prefix, resized], axis=1)
