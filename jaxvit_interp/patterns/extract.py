"""Attention patterns of one head on one image, as small images (paper §5.4).

Two pattern kinds come out of an attention matrix ``A`` ``[query, key]`` whose tokens are the
special tokens first (CLS when the model has one, then distillation and register tokens:
``num_prefix_tokens`` of them, by default CLS alone) then a ``Gh x Gw`` patch grid row-major:

- ``"cls"``: the CLS query row over the patches, ``A[0, T:]`` reshaped to ``[Gh, Gw]`` (``T``
  special tokens): where the token the classifier reads looks. Only models with a CLS token have
  it.
- ``"patch"``: the relative-offset map ``[2*Gh - 1, 2*Gw - 1]``. Entry ``(dr, dc)`` (stored at
  ``[dr + Gh - 1, dc + Gw - 1]``) is the mean attention a query patch pays the key patch at offset
  ``(dr, dc)`` from it, over the query patches where that key exists. It drops *which* patch is
  looking and keeps *where relative to itself* it looks, so one head gives one map per image however
  its pattern moves with content. The centre is self-attention; a map that is ``1/P`` everywhere is
  uniform attention over the ``P`` patches; a map near 0 everywhere sends its mass to the special
  tokens.

Kernels here are pure and jitted and take any leading axes (``image layer head`` typically);
:func:`check_attention` is the input check the orchestration runs before them, and
:func:`normalize_patterns` brings patterns to the scale the autoencoder trains on.

Axis names used in shapes: ``image layer head query key row col``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.quantities import PATTERN_KINDS
from jaxvit_interp.strength.hops import prefix_count

Array = jax.Array

NORMALIZATIONS: tuple[str, ...] = ("log", "max", "sum")


def pattern_shape(kind: str, grid: tuple[int, int]) -> tuple[int, int]:
    """Height and width of one pattern of ``kind`` on a ``(Gh, Gw)`` patch grid."""
    gh, gw = grid
    if kind == "cls":
        return (gh, gw)
    if kind == "patch":
        return (2 * gh - 1, 2 * gw - 1)
    raise InputError(f"unknown pattern kind {kind!r}; expected one of {', '.join(PATTERN_KINDS)}")


def check_attention(
    attention,
    grid: tuple[int, int],
    has_cls_token: bool,
    *,
    atol: float = 1e-3,
    num_prefix_tokens: int | None = None,
):
    """Raise ``ValueError`` unless ``attention`` ``[..., N, N]`` is softmax attention on ``grid``.

    Checks: at least two axes, square last two, ``N = Gh*Gw + T`` (``T`` special tokens:
    ``num_prefix_tokens``, by default ``has_cls_token``), no NaN, and every row summing to 1 within
    ``atol`` (softmax output; edited attention that dropped entries without renormalising is not a
    pattern source). Reductions run where the array lives; only scalars come back.
    """
    shape = tuple(attention.shape)
    gh, gw = grid
    first = prefix_count(has_cls_token, num_prefix_tokens)
    expected = gh * gw + first
    what = f"{gh}x{gw} patches" + (" + CLS" if has_cls_token else ", no CLS")
    if first > int(has_cls_token):
        what += f" + {first - int(has_cls_token)} other special token(s)"
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise InputError(
            f"attention has shape {shape}; expected [..., query, key] with query == key"
        )
    if shape[-1] != expected:
        raise InputError(
            f"attention has shape {shape}: {shape[-1]} tokens, but a {what} grid has {expected}"
        )
    nan, first_nan, worst, worst_row, worst_sum = (
        v.item() for v in _attention_stats(jnp.asarray(attention))
    )
    if nan:
        first = tuple(int(i) for i in np.unravel_index(first_nan, shape))
        raise InputError(
            f"attention of shape {shape} has {nan} NaN value(s), first at index {first}"
        )
    if worst > atol:
        row = tuple(int(i) for i in np.unravel_index(worst_row, shape[:-1]))
        raise InputError(
            f"attention of shape {shape} is not row-stochastic: row {row} sums to {worst_sum:.6g} "
            f"(tolerance {atol:g})"
        )


@jax.jit
def _attention_stats(a: Array):
    """NaN count, first NaN (flat index), worst |row sum - 1|, its row (flat index) and sum."""
    isnan = jnp.isnan(a).ravel()
    sums = a.sum(-1, dtype=jnp.float32).ravel()
    deviation = jnp.abs(sums - 1.0)
    worst = jnp.argmax(deviation)
    return isnan.sum(), jnp.argmax(isnan), deviation[worst], worst, sums[worst]


@functools.partial(jax.jit, static_argnames=("grid", "has_cls_token", "num_prefix_tokens"))
def cls_pattern(
    attention: Array,
    grid: tuple[int, int],
    has_cls_token: bool = True,
    num_prefix_tokens: int | None = None,
) -> Array:
    """CLS pattern ``[..., Gh, Gw]`` of attention ``[..., N, N]``: the CLS query row on patches."""
    if not has_cls_token:
        raise InputError("this model has no CLS token, so it has no CLS pattern; use kind='patch'")
    first = prefix_count(has_cls_token, num_prefix_tokens)
    return attention[..., 0, first:].reshape(*attention.shape[:-2], *grid)


def _offset_onehot(size: int) -> np.ndarray:
    """``[size, size, 2*size - 1]``: 1 where key index - query index + size - 1 == offset slot."""
    q = np.arange(size)[:, None]
    k = np.arange(size)[None, :]
    return (np.arange(2 * size - 1) == (k - q + size - 1)[..., None]).astype(np.float32)


def offset_counts(grid: tuple[int, int]) -> np.ndarray:
    """``[2*Gh - 1, 2*Gw - 1]``: how many query patches have a key at each offset."""
    gh, gw = grid
    rows = gh - np.abs(np.arange(-(gh - 1), gh))
    cols = gw - np.abs(np.arange(-(gw - 1), gw))
    return np.outer(rows, cols).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("grid", "has_cls_token", "num_prefix_tokens"))
def patch_pattern(
    attention: Array,
    grid: tuple[int, int],
    has_cls_token: bool = True,
    num_prefix_tokens: int | None = None,
) -> Array:
    """Relative-offset patch pattern ``[..., 2*Gh - 1, 2*Gw - 1]`` from attention ``[..., N, N]``.

    Entry ``[dr + Gh - 1, dc + Gw - 1]`` is the mean over query patches ``(r, c)`` with a key at
    ``(r + dr, c + dc)`` on the grid of ``A[(r, c), (r + dr, c + dc)]``.
    """
    gh, gw = grid
    first = prefix_count(has_cls_token, num_prefix_tokens)
    block = attention[..., first:, first:].reshape(*attention.shape[:-2], gh, gw, gh, gw)
    # The offset of a (query, key) pair separates into a row offset and a column offset, so two
    # small one-hot contractions ([Gh, Gh, 2Gh-1] and [Gw, Gw, 2Gw-1]) sum each diagonal of the
    # block: dense matmul work instead of a scatter, and nothing of size P*P*(2Gh-1)(2Gw-1).
    sums = jnp.einsum(
        "...abcd,acx,bdy->...xy",
        block,
        jnp.asarray(_offset_onehot(gh), attention.dtype),
        jnp.asarray(_offset_onehot(gw), attention.dtype),
        precision=jax.lax.Precision.HIGHEST,
    )
    return sums / jnp.asarray(offset_counts(grid), sums.dtype)


def extract_patterns(
    attention: Array,
    grid: tuple[int, int],
    has_cls_token: bool,
    kind: str,
    *,
    check: bool = True,
    num_prefix_tokens: int | None = None,
) -> Array:
    """Patterns of ``kind`` (``"cls"`` or ``"patch"``) from attention ``[..., N, N]``.

    Returns ``[..., Gh, Gw]`` for ``"cls"`` and ``[..., 2Gh-1, 2Gw-1]`` for ``"patch"``; with
    ``check`` the attention goes through :func:`check_attention` first.  ``num_prefix_tokens``:
    the special tokens before the patches (``config.num_prefix_tokens``), by default CLS alone.
    """
    grid = (int(grid[0]), int(grid[1]))
    pattern_shape(kind, grid)  # validates kind
    first = prefix_count(has_cls_token, num_prefix_tokens)
    if check:
        check_attention(attention, grid, has_cls_token, num_prefix_tokens=first)
    if kind == "cls":
        return cls_pattern(attention, grid, has_cls_token, first)
    return patch_pattern(attention, grid, has_cls_token, first)


@functools.partial(jax.jit, static_argnames=("num_patches", "method"))
def normalize_patterns(patterns: Array, num_patches: int, method: str = "log") -> Array:
    """Bring patterns ``[..., h, w]`` (attention values) to the autoencoder's ``[0, 1]`` scale.

    ``method``:

    - ``"log"`` (default): ``max(0, log(2 P a)) / log(2 P)``: a log scale of attention
      relative to uniform over the ``P`` patches, from 0 at half the uniform level (and below) to 1
      for all attention on one key, with uniform at ``log 2 / log(2 P)``. It keeps how *much*
      attention a map holds, which is what tells "uniform over patches" from "everything to CLS"
      once the patch block is all that is left, and it is a fixed function, so maps of different
      images and heads stay comparable. The floor makes every key a head pays less than half the
      uniform share "not looked at": without it the faint background, which covers most of a
      map and shifts with how sharp the head is, outweighs where the head actually looks.
    - ``"max"``: each map divided by its maximum (shape only; a map of zeros stays zero).
    - ``"sum"``: each map divided by its sum (shape only; a map of zeros stays zero).
    """
    if method == "log":
        floor = 1.0 / (2 * num_patches)
        return jnp.log(jnp.maximum(patterns, floor) / floor) / np.log(2 * num_patches)
    if method in ("max", "sum"):
        reduce = jnp.max if method == "max" else jnp.sum
        scale = reduce(patterns, axis=(-2, -1), keepdims=True)
        return jnp.where(scale > 0, patterns / jnp.where(scale > 0, scale, 1.0), 0.0)
    raise InputError(
        f"unknown pattern normalisation {method!r}; expected one of {', '.join(NORMALIZATIONS)}"
    )
