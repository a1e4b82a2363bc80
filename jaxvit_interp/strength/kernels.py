"""Pure kernels: hop strength of attention matrices, and its summary over images.

Everything here is a pure function of arrays, safe under ``jit`` and ``vmap``; checks, streaming and
progress live in :mod:`.measure` and :mod:`.aggregate`.

Definitions (after Li et al. 2023 §5.3), for one head's attention ``A`` ``[N, N]``
(rows queries, columns keys; the special tokens first (CLS when present, then distillation and
register tokens), then ``P = Gh*Gw`` patches row-major), hop ``d(i, j)`` the Chebyshev distance
between patches and ``K = max(Gh, Gw)`` hops:

- ``m_i[k] = sum_{j: d(i,j)=k} A[i, j]``: query patch ``i``'s attention mass at hop ``k``.
- ``mass[k] = mean_i m_i[k]`` over all ``P`` query patches; ``sum_k mass[k]`` is the mean
  patch-to-patch mass of a query patch (1 minus its mass on special tokens when rows are
  stochastic).
- ``strength[k] = mean_{i in Q_k} m_i[k] / n_i[k]`` with ``n_i[k]`` the number of keys at hop
  ``k`` from ``i`` and ``Q_k`` the query patches that have at least one (every hop has one, but
  on non-square grids and at edges some queries have none; they are left out of that hop's mean
  rather than counted as 0). It is the attention a patch pays one neighbour at that hop.
- ``head_entropy = -sum_k p_k ln p_k`` with ``p = strength / sum(strength)``, in nats, from 0
  (all strength at one hop) to ``ln K`` (equal strength at every hop); NaN if strength is all 0.
- ``distance``: Dosovitskiy et al.'s mean attention distance, in pixels. CLS is excluded as a key
  and as a query, and each query row is renormalised over its patch keys:
  ``mean_i sum_j A[i, j] dist(i, j) / sum_j A[i, j]``, so it is the expected distance of the
  attended patch and does not shrink when a head parks mass on CLS. Queries whose patch mass is 0
  (possible after pruning) are left out; NaN if every query is.
- ``patch_to_cls = mean_i A[i, CLS]`` over query patches; ``cls_to_patch = sum_j A[CLS, j]`` over
  key patches. Both are NaN for models without a CLS token, so results keep one shape whatever the
  classifier and a missing quantity cannot be mistaken for a zero one.  The other special tokens'
  masses are :mod:`.special`'s.

All of these follow from the per-query column sums ``A[i] @ W_i`` against the precomputed
:class:`~.hops.HopRings` weights (ring indicators, distances, CLS indicator), so one batched matrix
product per block of heads does the work, whatever the leading axes.

Axis names: ``image layer head query key hop``.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from jaxvit_interp.quantities import ENTROPY_BINS
from jaxvit_interp.strength.hops import HopRings

Array = jax.Array

# The default matmul precision on GPU/TPU rounds inputs to TF32 or bf16 (10 or 8 mantissa bits);
# the hop sums should be as exact as the float32 attention they come from.
_PRECISION = jax.lax.Precision.HIGHEST


@flax.struct.dataclass
class HopStrength:
    """Attention strength of heads; ``...`` is the attention's leading axes (e.g. image layer head).

    Attributes:
      strength: ``[..., hop]`` mean attention per key patch at each Chebyshev hop.
      mass: ``[..., hop]`` attention mass at each hop, mean over query patches.
      patch_to_cls: ``[...]`` attention a query patch pays CLS, mean over query patches (NaN
        without a CLS token).
      cls_to_patch: ``[...]`` attention CLS pays all patches together (NaN without a CLS token).
      distance: ``[...]`` mean attention distance in pixels (patch keys only, rows renormalised).
      head_entropy: ``[...]`` Shannon entropy in nats of ``strength`` normalised to sum 1.
    """

    strength: Array
    mass: Array
    patch_to_cls: Array
    cls_to_patch: Array
    distance: Array
    head_entropy: Array


def _query_columns(attention: Array, rings: HopRings) -> Array:
    """Per query row, its hop masses, distance sum and CLS mass: ``[query patch, head, K + 2]``.

    ``attention`` is ``[head, N, N]`` (leading axes flattened). The result is query-major on
    purpose: the contraction ``'hij,ijc->ihc'`` is one small matrix product per query row with
    every head as its rows, which XLA runs as a single batched GEMM; writing it per head and
    lifting with ``vmap`` gave a head-major product about 2x slower on CPU.
    """
    patch_rows = attention[:, rings.num_prefix_tokens :]  # [head, P, N]
    return jnp.einsum("hij,ijc->ihc", patch_rows, rings.weights, precision=_PRECISION)


def _as_float(attention) -> Array:
    attention = jnp.asarray(attention)
    return attention.astype(jnp.promote_types(attention.dtype, jnp.float32))


@jax.jit
def hop_mass_per_query(attention: Array, rings: HopRings) -> Array:
    """Attention mass of each query patch at each hop.

    Args:
      attention: ``[..., N, N]`` attention (the special tokens first, see :class:`~.hops.HopRings`).
      rings: :func:`~.hops.hop_rings` of the grid.

    Returns:
      ``[..., query patch, hop]``; each row sums to that query's attention on patch keys.
    """
    attention = _as_float(attention)
    lead, n = attention.shape[:-2], attention.shape[-1]
    cols = _query_columns(attention.reshape(-1, n, n), rings)[..., : rings.num_hops]
    return jnp.moveaxis(cols, 0, 1).reshape(*lead, rings.num_patches, rings.num_hops)


# Heads per step on CPU: a block's attention (16 x 155 KB at N = 197) and its query-major copy stay
# in the core caches; one GEMM over a whole batch of ~1,000 heads ran about 3x slower on CPU.
_CPU_HEAD_BLOCK = 16


@functools.partial(jax.jit, static_argnames=("head_block",))
def hop_strength_kernel(
    attention: Array, rings: HopRings, *, head_block: int | None = None
) -> tuple[HopStrength, Array, Array]:
    """Hop strength of every head in ``attention``; no input checks (see :func:`.hop_strength`).

    Args:
      attention: ``[..., N, N]`` softmax attention, ``N = rings.num_tokens``.
      rings: :func:`~.hops.hop_rings` of the grid.
      head_block: heads computed per step (a ``lax.map`` over blocks); ``None`` picks 16 on CPU,
        where that keeps each step in cache, and all heads at once on accelerators; 0 computes
        all heads at once anywhere. Results do not depend on it.

    Returns:
      ``(result, row_sums, row_min)``: :class:`HopStrength` with leading axes ``...``;
      ``row_sums`` ``[..., N]`` (non-finite where a row holds NaN or inf) and ``row_min``
      ``[..., N]``, the smallest entry of each row, for the row-stochastic check.
    """
    attention = _as_float(attention)
    lead, n = attention.shape[:-2], attention.shape[-1]
    flat = attention.reshape(-1, n, n)  # [head, N, N]
    if head_block is None:
        head_block = _CPU_HEAD_BLOCK if jax.default_backend() == "cpu" else flat.shape[0]
    if 0 < head_block < flat.shape[0]:
        one = lambda a: jax.tree.map(lambda x: x[0], _head_block(a[None], rings))  # noqa: E731
        outputs = jax.lax.map(one, flat, batch_size=head_block)
    else:
        outputs = _head_block(flat, rings)
    unflatten = lambda x: x.reshape(*lead, *x.shape[1:])  # noqa: E731
    return jax.tree.map(unflatten, outputs)


def _head_block(flat: Array, rings: HopRings) -> tuple[HopStrength, Array, Array]:
    """:func:`hop_strength_kernel` on ``[head, N, N]``."""
    k = rings.num_hops
    cols = _query_columns(flat, rings)  # [P, head, K + 2]
    hop_mass = cols[..., :k]  # [P, head, K]
    patch_mass = hop_mass.sum(axis=-1)  # [P, head]
    cls_mass = cols[..., k + 1]  # [P, head], zeros without CLS

    strength = (hop_mass * rings.strength_weights[:, None, :]).sum(axis=0)  # [head, K]
    mass = hop_mass.mean(axis=0)

    total = strength.sum(axis=-1, keepdims=True)
    p = strength / jnp.where(total > 0, total, 1.0)
    head_entropy = jnp.where(total[:, 0] > 0, -xlogy(p, p).sum(axis=-1), jnp.nan)

    has_patch_mass = patch_mass > 0
    per_query = jnp.where(
        has_patch_mass, cols[..., k] / jnp.where(has_patch_mass, patch_mass, 1), 0
    )
    counted = has_patch_mass.sum(axis=0)
    distance = jnp.where(counted > 0, per_query.sum(axis=0) / jnp.maximum(counted, 1), jnp.nan)

    # A NaN or inf anywhere in a patch row reaches its column sums (NaN * 0 is NaN), so the row
    # sums also flag non-finite entries without another pass over the matrix.  Keys that are
    # special tokens other than CLS are in no column: their mass is summed here.
    first, cls = rings.num_prefix_tokens, int(rings.has_cls_token)
    patch_row_sums = (patch_mass + cls_mass).T  # [head, P]
    if first > cls:
        patch_row_sums = patch_row_sums + flat[:, first:, cls:first].sum(axis=-1)
    row_sums = jnp.concatenate([flat[:, :first].sum(axis=-1), patch_row_sums], -1)
    if rings.has_cls_token:
        patch_to_cls = cls_mass.mean(axis=0)
        cls_to_patch = flat[:, 0, first:].sum(axis=-1)
    else:
        patch_to_cls = cls_to_patch = jnp.full(flat.shape[:1], jnp.nan, flat.dtype)
    row_min = flat.min(axis=-1)

    result = HopStrength(
        strength=strength,
        mass=mass,
        patch_to_cls=patch_to_cls,
        cls_to_patch=cls_to_patch,
        distance=distance,
        head_entropy=head_entropy,
    )
    return result, row_sums, row_min


@flax.struct.dataclass
class StrengthSummary:
    """Hop strength over a set of images (the "global" results); ``layer head`` axes follow.

    NaN values (heads whose strength is all 0, e.g. pruned) are left out of every statistic.

    Attributes:
      num_images: ``[]`` images summarised.
      strength_mean: ``[layer, head, hop]`` mean strength over images.
      mass_mean: ``[layer, head, hop]`` mean hop mass over images.
      distance_mean: ``[layer, head]`` mean attention distance (pixels) over images.
      patch_to_cls_mean, cls_to_patch_mean: ``[layer, head]`` mean CLS masses over images (NaN
        without a CLS token).
      head_entropy_mean: ``[layer, head]`` mean head entropy over images.
      head_entropy_std: ``[layer, head]`` its standard deviation over images (population, ddof 0).
      entropy_histogram: ``[layer, head, bin]`` number of images whose head entropy falls in each
        bin of ``entropy_bin_edges`` (the last bin includes its right edge).
      entropy_bin_edges: ``[bin + 1]`` fixed edges ``linspace(0, ln K, bins + 1)``, so histograms
        of different heads, layers and models on the same grid are comparable.
      layer_head_entropy_mean: ``[layer]`` mean entropy over heads and images: the trend across
        depth.
      layer_distance_mean: ``[layer]`` mean attention distance over heads and images.
    """

    num_images: Array
    strength_mean: Array
    mass_mean: Array
    distance_mean: Array
    patch_to_cls_mean: Array
    cls_to_patch_mean: Array
    head_entropy_mean: Array
    head_entropy_std: Array
    entropy_histogram: Array
    entropy_bin_edges: Array
    layer_head_entropy_mean: Array
    layer_distance_mean: Array


@functools.partial(jax.jit, static_argnames=("num_bins",))
def summarize_kernel(local: HopStrength, *, num_bins: int = ENTROPY_BINS) -> StrengthSummary:
    """Global results from per-image results ``local`` with axes ``[image, layer, head, ...]``."""
    num_hops = local.strength.shape[-1]
    max_entropy = math.log(num_hops)
    entropy = local.head_entropy  # [image, layer, head]
    finite = jnp.isfinite(entropy)

    edges = jnp.linspace(0.0, max_entropy, num_bins + 1)
    # With a single hop every entropy is 0; put them all in the first bin.
    scale = num_bins / max_entropy if max_entropy > 0 else 0.0
    bins = jnp.clip(jnp.floor(jnp.where(finite, entropy, 0.0) * scale), 0, num_bins - 1)
    one_hot = jax.nn.one_hot(bins.astype(jnp.int32), num_bins, dtype=jnp.int32)
    histogram = (one_hot * finite[..., None]).sum(axis=0)

    # nanmean over an all-NaN slice warns at trace time in NumPy but is silent here; it gives NaN.
    return StrengthSummary(
        num_images=jnp.asarray(entropy.shape[0], jnp.int32),
        strength_mean=jnp.nanmean(local.strength, axis=0),
        mass_mean=jnp.nanmean(local.mass, axis=0),
        distance_mean=jnp.nanmean(local.distance, axis=0),
        patch_to_cls_mean=jnp.nanmean(local.patch_to_cls, axis=0),
        cls_to_patch_mean=jnp.nanmean(local.cls_to_patch, axis=0),
        head_entropy_mean=jnp.nanmean(entropy, axis=0),
        head_entropy_std=jnp.nanstd(entropy, axis=0),
        entropy_histogram=histogram,
        entropy_bin_edges=edges,
        layer_head_entropy_mean=jnp.nanmean(entropy, axis=(0, 2)),
        layer_distance_mean=jnp.nanmean(local.distance, axis=(0, 2)),
    )
