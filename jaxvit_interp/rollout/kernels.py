"""Attention rollout (Abnar & Zuidema 2020): attention followed through every layer at once.

A block's output token ``i`` is its input token ``i`` (the residual) plus what its heads gathered,
so one layer moves information by ``R_l = w I + (1 - w) mean_h A[l, h]`` (``w = 1/2``): rows
still sum to 1 when the attention rows do. Followed through the layers, ``rollout[l] = R_l R_{l-1} ... R_0`` says how
much each input token feeds each token after layer ``l``. The map over the image reads the row of
the token the classifier reads: CLS, or for a model without one the mean of the patch rows (it
pools the patches), over the patch columns; each layer's contribution is how much of that row
its attention moves (:func:`layer_contributions`).

Pure kernels, any leading axes (``image`` typically); axis names ``layer query key``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array

# Abnar & Zuidema mix the identity and the attention half and half.
RESIDUAL_WEIGHT = 0.5


@functools.partial(jax.jit, static_argnames=("residual_weight",))
def attention_rollout(attention: Array, *, residual_weight: float = RESIDUAL_WEIGHT) -> Array:
    """Cumulative rollout after each layer: ``[..., layer, head, N, N]`` -> ``[..., layer, N, N]``.

    ``rollout[..., l]`` is ``R_l @ ... @ R_0`` with ``R_l = w I + (1 - w) mean_h A[l, h]`` and
    ``w = residual_weight``.
    """
    mixed = jnp.mean(attention, axis=-3)  # [..., layer, N, N]
    n = mixed.shape[-1]
    step = residual_weight * jnp.eye(n, dtype=mixed.dtype) + (1.0 - residual_weight) * mixed

    def one_layer(carry, r):
        out = jnp.matmul(r, carry, precision=jax.lax.Precision.HIGHEST)
        return out, out

    layers_first = jnp.moveaxis(step, -3, 0)  # [layer, ..., N, N]
    eye = jnp.broadcast_to(jnp.eye(n, dtype=mixed.dtype), layers_first.shape[1:])
    _, stacked = jax.lax.scan(one_layer, eye, layers_first)
    return jnp.moveaxis(stacked, 0, -3)


def read_rows(rollout: Array, num_prefix: int, has_cls_token: bool | None = None) -> Array:
    """The rollout row of the token the classifier reads, over every token.

    ``rollout`` ``[..., layer, N, N]`` with ``num_prefix`` special tokens (CLS, distillation,
    registers) before the patches -> ``[..., layer, N]``: the CLS row (the first token) for a model
    with a CLS token, else the mean of the patch rows (the pooled patches). ``has_cls_token``
    ``None`` takes any special token to mean CLS (models without CLS and without registers).
    """
    if has_cls_token is None:
        has_cls_token = num_prefix > 0
    return rollout[..., 0, :] if has_cls_token else jnp.mean(rollout[..., num_prefix:, :], axis=-2)


def rollout_maps(
    rollout: Array, grid: tuple[int, int], num_prefix: int, has_cls_token: bool | None = None
) -> Array:
    """The rollout of the token the classifier reads, over the patch grid.

    ``rollout`` ``[..., layer, N, N]`` with ``num_prefix`` tokens (CLS and any others) before
    the ``Gh*Gw`` patches -> ``[..., layer, Gh, Gw]``: the row of :func:`read_rows` (CLS, or the
    mean of the patch rows), its patch columns only.
    """
    rows = read_rows(rollout, num_prefix, has_cls_token)
    return rows[..., num_prefix:].reshape(*rows.shape[:-1], *grid)


def layer_contributions(rows: Array, num_prefix: int, has_cls_token: bool) -> Array:
    """How much each layer changes the read row: ``[..., layer, N]`` -> ``[..., layer]``.

    ``contribution[l] = 1/2 sum_t |r_l[t] - r_{l-1}[t]|`` over every token ``t`` (special tokens
    included), with ``r_l`` the read row after layer ``l`` (:func:`read_rows`) and ``r_{-1}`` the
    row before any layer: the one-hot row of CLS, or uniform over the patches for a model without
    CLS. Rows are distributions, so this is the total variation distance between them: the share
    of the read token's attribution that layer ``l``'s attention moves. It is at most
    ``1 - residual_weight`` (1/2): the identity part of each layer's step moves nothing, since
    ``r_l - r_{l-1} = (1 - w) (r_{l-1} mean_h A[l] - r_{l-1})``. As the row spreads over many
    tokens it changes less, so on trained models the contributions tend to fall with depth.
    """
    n = rows.shape[-1]
    if has_cls_token:
        start = jnp.zeros(n, rows.dtype).at[0].set(1.0)
    else:
        start = jnp.zeros(n, rows.dtype).at[num_prefix:].set(1.0 / (n - num_prefix))
    before = jnp.concatenate(
        [jnp.broadcast_to(start, (*rows.shape[:-2], 1, n)), rows[..., :-1, :]], axis=-2
    )
    return 0.5 * jnp.sum(jnp.abs(rows - before), axis=-1)
