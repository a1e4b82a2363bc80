"""Ring geometry on the patch grid: Chebyshev hops, ring counts, patch-centre distances.

Patches are numbered row-major on a ``Gh x Gw`` grid: patch ``p`` sits at row ``p // Gw``, column
``p % Gw``. The hop between query patch ``i`` and key patch ``j`` is the Chebyshev distance
``max(|dr|, |dc|)``: hop 0 is the patch itself, hop 1 its 8-neighbourhood ring, and so on up to
``max(Gh, Gw) - 1``. Everything here is NumPy computed once per grid; the kernels only multiply
attention against the matrices built here.

Axis names: ``query key hop`` (patches only; CLS and the other special tokens are handled by the
kernels).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import numpy as np

from jaxvit_interp.errors import InputError

Array = jax.Array


def _pair(value, name: str) -> tuple[int, int]:
    """``7`` -> ``(7, 7)``; checks both sides are positive integers."""
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(
            f"{name} must be an int or a (height, width) pair, got {value!r}"
        ) from None
    if len(pair) != 2 or min(pair) < 1 or any(p != v for p, v in zip(pair, value, strict=True)):
        raise InputError(f"{name} must be two positive integers (height, width), got {value!r}")
    return pair


def num_hops(grid) -> int:
    """Number of hops ``K = max(Gh, Gw)`` on a ``(Gh, Gw)`` grid (hops ``0 .. K-1``)."""
    return max(_pair(grid, "grid"))


def hop_matrix(grid) -> np.ndarray:
    """Chebyshev hop ``[query, key]`` between every pair of patches, int32, shape ``[P, P]``."""
    gh, gw = _pair(grid, "grid")
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    dr = np.abs(rows[:, None] - rows[None, :])
    dc = np.abs(cols[:, None] - cols[None, :])
    return np.maximum(dr, dc).astype(np.int32)


def ring_counts(grid) -> np.ndarray:
    """Keys at each hop from each query, ``[query, hop]`` int32; rows sum to ``P``.

    On non-square grids and near edges some entries are 0: such a query has no key at that hop.
    """
    hops = hop_matrix(grid)
    k = num_hops(grid)
    return (hops[:, :, None] == np.arange(k)).sum(axis=1).astype(np.int32)


def patch_distances(grid, patch_size=(1, 1)) -> np.ndarray:
    """Euclidean distance between patch centres in pixels, ``[query, key]`` float64.

    Row offsets are scaled by the patch height and column offsets by the patch width, so
    ``patch_size=(1, 1)`` gives the distance in patches.
    """
    gh, gw = _pair(grid, "grid")
    ph, pw = _pair(patch_size, "patch_size")
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    dy = (rows[:, None] - rows[None, :]) * ph
    dx = (cols[:, None] - cols[None, :]) * pw
    return np.sqrt(dy.astype(np.float64) ** 2 + dx.astype(np.float64) ** 2)


@flax.struct.dataclass
class HopRings:
    """Everything the strength kernel needs about one grid, as arrays it multiplies against.

    Attributes:
      weights: ``[query patch, key token, K + 2]`` float32 columns contracted with each query row
        of the attention: columns ``0 .. K-1`` are the ring indicators (1 where the key patch is
        at that hop), column ``K`` the key patch's distance in pixels, column ``K + 1`` the CLS
        key indicator (all 0 without a CLS token). Key tokens include the special tokens (CLS,
        distillation, registers) first.
      strength_weights: ``[query patch, hop]`` float32 ``1 / (count * queries_with_hop)``, 0
        where the query has no key at that hop; summing ``hop mass * strength_weights`` over
        queries gives the strength.
      counts: ``[query patch, hop]`` int32 keys at each hop (:func:`ring_counts`).
      grid: ``(Gh, Gw)``; static.
      patch_size: ``(height, width)`` in pixels; static.
      has_cls_token: whether token 0 is CLS; static.
      num_prefix_tokens: special tokens before the patches (CLS, distillation, registers);
        static.
    """

    weights: Array
    strength_weights: Array
    counts: Array
    grid: tuple[int, int] = flax.struct.field(pytree_node=False)
    patch_size: tuple[int, int] = flax.struct.field(pytree_node=False)
    has_cls_token: bool = flax.struct.field(pytree_node=False)
    num_prefix_tokens: int = flax.struct.field(pytree_node=False)

    @property
    def num_hops(self) -> int:
        return max(self.grid)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens


@functools.lru_cache(maxsize=32)
def _hop_rings_cached(
    grid: tuple[int, int], patch_size: tuple[int, int], has_cls_token: bool, num_prefix_tokens: int
) -> HopRings:
    k = max(grid)
    hops = hop_matrix(grid)
    counts = ring_counts(grid)
    num_patches = grid[0] * grid[1]
    first_patch = num_prefix_tokens

    weights = np.zeros((num_patches, num_patches + first_patch, k + 2), np.float32)
    weights[:, first_patch:, :k] = hops[:, :, None] == np.arange(k)
    weights[:, first_patch:, k] = patch_distances(grid, patch_size)
    if has_cls_token:
        weights[:, 0, k + 1] = 1.0

    # Strength averages (mass / count) only over the queries that have keys at that hop:
    # on a 3x5 grid no query has a key 4 rows away, and a corner query has no hop-1 ring
    # on the far side, so dividing by all P queries would understate far hops.
    queries_with_hop = (counts > 0).sum(axis=0)  # >= 1 for every hop 0 .. K-1
    strength_weights = np.where(
        counts > 0, 1.0 / (np.maximum(counts, 1) * queries_with_hop[None, :]), 0.0
    ).astype(np.float32)
    # NumPy leaves: the cached value may be first asked for inside a trace (a reducer of the
    # attention pass), where a JAX array made here would be a tracer that outlives it.
    return HopRings(
        weights=weights,
        strength_weights=strength_weights,
        counts=np.asarray(counts),
        grid=grid,
        patch_size=patch_size,
        has_cls_token=has_cls_token,
        num_prefix_tokens=num_prefix_tokens,
    )


def prefix_count(has_cls_token: bool, num_prefix_tokens: int | None) -> int:
    """Special tokens before the patches: ``num_prefix_tokens``, by default the CLS token alone;
    checked to include CLS when there is one."""
    count = int(has_cls_token) if num_prefix_tokens is None else num_prefix_tokens
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise InputError(f"num_prefix_tokens must be an int, got {num_prefix_tokens!r}")
    if count < int(has_cls_token):
        raise InputError(
            f"num_prefix_tokens={count} leaves no room for the CLS token; it counts CLS, the "
            "distillation token and registers (config.num_prefix_tokens)"
        )
    return int(count)


def hop_rings(
    grid, *, has_cls_token: bool = True, patch_size=(1, 1), num_prefix_tokens: int | None = None
) -> HopRings:
    """The :class:`HopRings` of a ``(Gh, Gw)`` grid (cached per grid, patch size and special
    tokens); ``num_prefix_tokens`` as in :func:`prefix_count`."""
    return _hop_rings_cached(
        _pair(grid, "grid"),
        _pair(patch_size, "patch_size"),
        bool(has_cls_token),
        prefix_count(has_cls_token, num_prefix_tokens),
    )


def rings_for(config) -> HopRings:
    """The :class:`HopRings` of a model's grid, patch size and special tokens (a
    :class:`~jaxvit_interp.model.config.ViTConfig`)."""
    return hop_rings(
        config.grid,
        has_cls_token=config.has_cls_token,
        patch_size=config.patch_size,
        num_prefix_tokens=config.num_prefix_tokens,
    )
