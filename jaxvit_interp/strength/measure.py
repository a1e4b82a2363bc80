"""``hop_strength``: the checked entry point for attention arrays already in memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.strength.hops import HopRings, hop_rings
from jaxvit_interp.strength.kernels import HopStrength, hop_strength_kernel

# Softmax rows sum to 1 up to float32 rounding (~1e-6 for N in the hundreds); 1e-3 still catches
# a pruned or truncated row. Stored in a narrower float, each entry of a stochastic row moves by at
# most eps/2 of itself, so the row sum by at most eps/2: the tolerance widens to eps for those.
DEFAULT_ATOL = 1e-3


def default_atol(dtype) -> float:
    """Row-sum tolerance for attention stored as ``dtype``: ``max(1e-3, eps(dtype))``."""
    if not jnp.issubdtype(dtype, jnp.floating):  # NumPy does not count bfloat16 as floating
        return DEFAULT_ATOL
    return max(DEFAULT_ATOL, float(jnp.finfo(dtype).eps))


def check_attention_shape(shape: tuple[int, ...], rings: HopRings) -> None:
    """Raise ``ValueError`` unless ``shape`` ends in ``[N, N]``, ``N`` the grid's token count."""
    shape = tuple(int(s) for s in shape)
    gh, gw = rings.grid
    others = rings.num_prefix_tokens - int(rings.has_cls_token)
    cls = "a CLS token plus " if rings.has_cls_token else "no CLS token, "
    if others:
        cls += f"{others} other special token(s) plus "
    expected = f"{cls}{gh}x{gw} patches = {rings.num_tokens} tokens"
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise InputError(
            f"attention has shape {shape}; its last two axes must be [query, key] of equal "
            f"length ({expected})"
        )
    if shape[-1] != rings.num_tokens:
        hint = ""
        if shape[-1] == rings.num_tokens + 1 and not rings.has_cls_token:
            hint = " (one extra token: pass has_cls_token=True?)"
        elif shape[-1] == rings.num_tokens - 1 and rings.has_cls_token:
            hint = " (one token short: pass has_cls_token=False for a model without CLS?)"
        raise InputError(
            f"attention has shape {shape} with {shape[-1]} tokens, but grid {rings.grid} with "
            f"{expected}{hint}"
        )


def check_rows(
    row_sums,
    row_min,
    shape: tuple[int, ...],
    *,
    check_stochastic: bool = True,
    atol: float = DEFAULT_ATOL,
    axis_names: str = "",
    index_offset: int = 0,
) -> None:
    """Raise ``ValueError`` for non-finite rows, and for rows that are not stochastic.

    Args:
      row_sums: ``[..., N]`` sum of each attention row, as returned by the kernel (non-finite
        wherever the row holds NaN or inf).
      row_min: ``[..., N]`` smallest entry of each row.
      shape: shape of the attention checked, named in messages.
      check_stochastic: also require entries ``>= -atol`` and row sums within ``atol`` of 1.
        Turn off for edited or pruned attention, which is legitimately not stochastic.
      atol: absolute tolerance of the stochastic check.
      axis_names: optional names of the index axes for messages, e.g. ``"image layer head query"``.
      index_offset: added to the first index in messages (the batch's first image when
        checking one batch of many).
    """
    row_sums = np.asarray(row_sums)
    row_min = np.asarray(row_min)
    where = f" (axes: {axis_names})" if axis_names else ""

    def name(index) -> tuple[int, ...]:
        index = [int(i) for i in index]
        index[0] += index_offset
        return tuple(index)

    bad = ~np.isfinite(row_sums) | ~np.isfinite(row_min)
    if bad.any():
        index = tuple(np.argwhere(bad)[0])
        raise InputError(
            f"attention of shape {tuple(shape)} contains NaN or inf: {int(bad.sum())} row(s), "
            f"the first at row index {name(index)}{where}, which sums to {row_sums[index]}"
        )
    if not check_stochastic:
        return
    if (row_min < -atol).any():
        index = np.unravel_index(np.argmin(row_min), row_min.shape)
        raise InputError(
            f"attention of shape {tuple(shape)} is not row-stochastic: row {name(index)}{where} "
            f"has a negative entry {row_min[index]:.6g}; pass check_stochastic=False to skip "
            f"this check"
        )
    deviation = np.abs(row_sums - 1.0)
    if (deviation > atol).any():
        index = np.unravel_index(np.argmax(deviation), deviation.shape)
        raise InputError(
            f"attention of shape {tuple(shape)} is not row-stochastic: row {name(index)}{where} "
            f"sums to "
            f"{row_sums[index]:.6g} (tolerance {atol:g}, {int((deviation > atol).sum())} row(s) "
            f"off); edited or pruned attention is legitimately not stochastic: pass "
            f"check_stochastic=False"
        )


def hop_strength(
    attention,
    grid,
    *,
    has_cls_token: bool = True,
    patch_size=(1, 1),
    check_stochastic: bool = True,
    atol: float | None = None,
    num_prefix_tokens: int | None = None,
) -> HopStrength:
    """Attention strength per Chebyshev hop, CLS masses, attention distance and head entropy.

    See :mod:`jaxvit_interp.strength.kernels` for the exact definitions.

    Args:
      attention: ``[..., N, N]`` attention probabilities (rows queries, columns keys), any leading
        axes (e.g. ``[image, layer, head]``), the special tokens first (CLS first when
        ``has_cls_token``), then the patches row-major.
      grid: patch grid ``(Gh, Gw)`` (an int for a square grid), e.g. ``config.grid``.
      has_cls_token: whether token 0 is CLS (``config.has_cls_token``; False for
        ``classifier="gap"`` models, whose ``patch_to_cls`` and ``cls_to_patch`` are then NaN).
      patch_size: patch ``(height, width)`` in pixels, the unit of ``distance``; the default
        ``(1, 1)`` measures it in patches.
      check_stochastic: require rows to be stochastic (entries ``>= -atol``, sums within ``atol``
        of 1). NaN and inf are always rejected.
      atol: tolerance of that check; by default 1e-3, or the dtype's eps if that is larger
        (bfloat16: 0.0078), see :func:`default_atol`.
      num_prefix_tokens: special tokens before the patches, ``config.num_prefix_tokens`` (CLS,
        distillation, registers); by default the CLS token alone.  They are not on the grid: only
        CLS has masses of its own here (see :mod:`~jaxvit_interp.strength.special` for all).

    Returns:
      :class:`~jaxvit_interp.strength.kernels.HopStrength` with leading axes ``...`` and
      ``max(Gh, Gw)`` hops.

    Raises:
      ValueError: the token count does not match the grid, the attention holds NaN or inf, or
        (with ``check_stochastic``) a row is not stochastic; the message names the shape, row
        and value.
    """
    rings = hop_rings(
        grid,
        has_cls_token=has_cls_token,
        patch_size=patch_size,
        num_prefix_tokens=num_prefix_tokens,
    )
    shape = tuple(np.shape(attention))
    check_attention_shape(shape, rings)
    result, row_sums, row_min = hop_strength_kernel(attention, rings)
    row_sums, row_min = jax.device_get((row_sums, row_min))
    if atol is None:
        atol = default_atol(getattr(attention, "dtype", np.float32))
    check_rows(row_sums, row_min, shape, check_stochastic=check_stochastic, atol=atol)
    return result
