"""The ablation engines' pure kernels: exact shortcuts through a block, built from the model's
own pieces (:mod:`jaxvit_interp.model.blocks`), and the unpruned pass every batch starts from.

Both engines use them: the single-head engine (:mod:`~jaxvit_interp.importance.engine`, the
low-rank shortcut) and the set engine (:mod:`~jaxvit_interp.importance.set_engine`, the tree of
streams).  Where a head's output is removed they consult the ablation kind
(:class:`~jaxvit_interp.importance.ablation_kinds.Ablation`).

Axis names in shapes: ``batch layer head slot stream token hidden class``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxvit_interp.importance.ablation_kinds import ZERO, Ablation
from jaxvit_interp.importance.taylor import taylor_importance
from jaxvit_interp.model import blocks
from jaxvit_interp.model.blocks import BlockParams
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import VisionTransformer, block_params

Array = jax.Array

# ``reduce(logits [b, c], z [b, d], targets [b], logits' [b, s, k, c], z' [b, s, k, d])``: the
# pruned outputs of every ablation mapped to arrays ``[b, s, k, ...]`` on the device, so only
# those come back to the host (``s`` spawn layers, ``k`` slots; the set engine has ``s = 1``).
Reduce = Callable[[Array, Array, Array, Array, Array], dict[str, Array]]


def masked_block(
    config: ViTConfig,
    p: BlockParams,
    x: Array,
    head_mask: Array | None = None,
    ablation: Ablation = ZERO,
    replacement: Array | None = None,
) -> Array:
    """The model's block, unpruned or with the heads a ``[head]`` mask zeroes ablated as
    ``ablation`` says. x ``[batch, token, hidden]`` -> same; ``replacement`` ``[batch or 1,
    head, token, head_dim]`` what takes the ablated heads' place (None for zero)."""
    ablate = functools.partial(ablation.masked, replacement=replacement)
    return blocks.block(config, p, x, head_mask=head_mask, with_probs=False, ablate=ablate)[0]


def prefix_block(
    config: ViTConfig,
    p: BlockParams,
    x: Array,
    queries: int,
    head_mask: Array | None = None,
    ablation: Ablation = ZERO,
    replacement: Array | None = None,
) -> Array:
    """The block for the first ``queries`` tokens only: ``[batch, token, hidden] ->
    [batch, queries, hidden]``; ``head_mask`` ``[head]``, ``ablation`` and ``replacement`` (all
    tokens) as in :func:`masked_block` (None: unpruned).

    Exact for those rows, and without projecting any other token to queries, keys or values:
    with ``y`` the normalised tokens, the scores are ``q_h . (W_k,h y_j + b_k,h)``, and the bias
    term is the same for every key so the softmax drops it; ``(W_k,h q_h) . y_j`` costs ``hidden``
    per head and token instead of ``hidden * head_dim``.  Likewise, because the probabilities sum
    to one, ``sum_j p_hj (W_v,h y_j + b_v,h) = W_v,h (sum_j p_hj y_j) + b_v,h``.
    """
    y = blocks.layer_norm(config, p.ln1, x)  # [batch, token, hidden]
    q = blocks.linear(p.query, y[:, :queries])  # [batch, query, head, head_dim]
    scale = blocks.score_scale(config.head_dim, x.dtype)
    key_dirs = jnp.einsum("dhe,bqhe->bqhd", p.key.kernel, q) / scale
    probs = jax.nn.softmax(jnp.einsum("btd,bqhd->bqht", y, key_dirs), axis=-1)
    pooled = jnp.einsum("bqht,btd->bqhd", probs, y)
    heads = jnp.einsum("bqhd,dhe->bqhe", pooled, p.value.kernel)
    if p.value.bias is not None:
        heads = heads + p.value.bias
    if head_mask is not None:
        if replacement is not None:  # its first rows, heads after tokens as ``heads`` has them
            replacement = jnp.swapaxes(replacement[..., :queries, :], -3, -2)
        heads = ablation.masked(heads, head_mask[:, None], replacement)
    out = blocks.linear(p.out, heads, in_axes=2)
    return blocks.mlp_half(config, p, x[:, :queries] + out)


@functools.partial(jax.jit, static_argnames=("layers",))
def fold_mlp_inputs(params, layers: tuple[int, ...]) -> Array:
    """``W_out,h diag(scale_2) W_0`` for every head of ``layers``: ``[layer, head, head_dim, mlp]``.

    A head's pruning delta ``m_h W_out,h`` (``m_h`` its ``[token, head_dim]`` mixed values) reaches
    the first MLP product of its own layer only through this matrix, so that product costs
    ``head_dim`` instead of ``hidden`` per token and pruned head (see :func:`pruned_mlp_half`).
    """
    folded = []
    for layer in layers:
        p = block_params(params, layer)
        folded.append(jnp.einsum("hed,d,df->hef", p.out.kernel, p.ln2.scale, p.mlp_in.kernel))
    return jnp.stack(folded)


def pruned_mlp_half(
    config: ViTConfig,
    p: BlockParams,
    u: Array,
    shared: Array,
    delta: Array,
    mixed: Array,
    folded: Array,
) -> Array:
    """:func:`~jaxvit_interp.model.blocks.mlp_half` of one pruned stream ``x = u - delta``, with
    ``delta = mixed W_out,h``.

    Args:
      u: ``[batch, token, hidden]`` the unpruned stream after the attention block.
      shared: ``[batch, token, mlp]`` ``((u - mean u) * scale_2) W_0``, computed once for all the
        layer's pruned heads.
      delta: ``[batch, token, hidden]`` the pruned head's term of the block output.
      mixed: ``[batch, token, head_dim]`` what the ablation takes from the pruned head's mixed
        values (:meth:`~jaxvit_interp.importance.ablation_kinds.Ablation.removed`).
      folded: ``[head_dim, mlp]`` the head's row of :func:`fold_mlp_inputs`.

    LayerNorm centres and scales each token: ``LN(x) W_0 = ((x - mean x) * scale) W_0 / std x +
    bias W_0``, and ``x - mean x = (u - mean u) - (delta - mean delta)``, so the first MLP
    product is ``shared - mixed folded + mean(delta) (scale W_0)``, over ``std x``: exact, with
    only per-token statistics computed at full width.
    """
    centred_u = u - jnp.mean(u, axis=-1, keepdims=True)
    delta_mean = jnp.mean(delta, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(centred_u - (delta - delta_mean)), axis=-1, keepdims=True)
    w0 = p.mlp_in.kernel
    centred_w0 = shared - mixed @ folded + delta_mean * (p.ln2.scale @ w0)
    pre = centred_w0 * jax.lax.rsqrt(var + config.layer_norm_eps) + (
        p.ln2.bias @ w0 + p.mlp_in.bias
    )
    return u - delta + blocks.mlp_tail(config, p, pre)


def shared_mlp_input(p: BlockParams, u: Array) -> Array:
    """``((u - mean u) * scale_2) W_0`` for :func:`pruned_mlp_half`. u ``[batch, token, hidden]``."""
    centred = u - jnp.mean(u, axis=-1, keepdims=True)
    return (centred * p.ln2.scale) @ p.mlp_in.kernel


def spawn_mixed(
    config: ViTConfig,
    p: BlockParams,
    residual: Array,
    attention: Array,
    heads: Array,
    keep: Array | None,
) -> Array:
    """Each spawn slot's pruned attention entries applied to the values: ``[batch, slot, token, head_dim]``.

    Args:
      p: the block's parameters.
      residual: ``[batch, token, hidden]`` stream entering the block.
      attention: ``[batch, head, query, key]`` its unpruned attention probabilities.
      heads: ``[slot]`` int, the head each slot prunes.
      keep: ``[slot, query, key]`` 0 on the attention entries each slot zeroes and 1 elsewhere
        (as :class:`~jaxvit_interp.model.edits.AttentionEdit` keeps them), or None for the
        whole head.

    What the ablation takes from them
    (:meth:`~jaxvit_interp.importance.ablation_kinds.Ablation.removed`) times ``W_out,h`` is
    ``delta = O_l - O'_l``, the change of the block output.
    """
    v = blocks.linear(p.value, blocks.layer_norm(config, p.ln1, residual))
    probs = attention[:, heads]  # [batch, slot, query, key]
    if keep is not None:
        probs = probs * (1.0 - keep)  # the zeroed entries are what the pruning takes away
    return jnp.einsum("bsqk,bskd->bsqd", probs, jnp.swapaxes(v[:, :, heads], 1, 2))


@functools.partial(jax.jit, static_argnames=("config", "spawn_layers"))
def clean_slot_mixed(
    config: ViTConfig,
    params,
    images: Array,
    spawn_layers: tuple[int, ...],
    slot_heads: Array,
    slot_modes: Array | None = None,
    keep_table: Array | None = None,
) -> Array:
    """What each spawn slot ablates, on a clean (unpruned) pass of ``images``: ``[batch,
    spawn_layer, slot, token, head_dim]``, the replacement table of a mean or resample ablation
    (:mod:`~jaxvit_interp.importance.replacement`).

    ``slot_heads`` ``[spawn_layer, slot]``; ``slot_modes`` ``[spawn_layer, slot]`` into
    ``keep_table`` ``[mode, query, key]`` for partial pruning (both None for whole heads).  Each
    slot's entry is :func:`spawn_mixed` of the clean pass: the whole head's mixed values, or the
    share of them that the slot's zeroed attention entries carry.  Only the table leaves the
    program, so no image's attention is kept.
    """
    out = VisionTransformer(config).apply({"params": params}, images)
    tables = []
    for i, layer in enumerate(spawn_layers):
        keep = None if keep_table is None else keep_table[slot_modes[i]]
        p = block_params(params, layer)
        residual, attention = out.residual[:, layer], out.attention[:, layer]
        tables.append(spawn_mixed(config, p, residual, attention, slot_heads[i], keep))
    return jnp.stack(tables, axis=1)


def grouped(fn, xs, group: int | None) -> Array:
    """``fn`` over streams, at most ``group`` streams per step.

    ``xs``: an array ``[stream, batch, token, hidden]``, or a tuple of arrays with the same leading
    stream axis whose per-stream slices are ``fn``'s arguments; ``fn`` returns
    ``[batch, token', hidden]``.  Steps run one after another (``lax.map``) so that on a CPU each
    step's activations stay in cache; one step over all streams (``group=None``) suits an
    accelerator.  The group is the largest divisor of the stream count not above ``group``, so no
    stream is padded.

    Within a step of an even number of streams, each half is its own computation.  XLA's CPU
    runtime runs independent operations side by side, while it gives an elementwise pass or a
    batch of small attention products one thread: two halves keep two cores busy through those.
    """
    xs = xs if isinstance(xs, tuple) else (xs,)
    streams = xs[0].shape[0]
    if group is None or streams <= group:
        return jax.vmap(fn)(*xs)
    g = max(d for d in range(1, group + 1) if streams % d == 0)

    def step(part):
        if g % 2:
            return jax.vmap(fn)(*part)
        halves = [jax.vmap(fn)(*(a[i * g // 2 : (i + 1) * g // 2] for a in part)) for i in (0, 1)]
        return jnp.concatenate(halves)

    steps = jax.lax.map(step, tuple(a.reshape(streams // g, g, *a.shape[1:]) for a in xs))
    return steps.reshape(streams, *steps.shape[2:])


@functools.partial(jax.jit, static_argnames=("config", "with_taylor"))
def full_pass(config: ViTConfig, params, images: Array, targets: Array | None, with_taylor: bool):
    """The unpruned pass of one batch, plus the ``taylor`` metric when asked.

    Returns ``(ModelOutput, targets [batch], taylor [batch, layer, head] or None)``; targets are
    the given labels or, when None, the unpruned predictions.
    """
    if with_taylor:
        taylor, out, y = taylor_importance(config, params, images, targets)
        return out, y, taylor
    out = VisionTransformer(config).apply({"params": params}, images)
    if targets is not None:
        y = targets
    elif config.num_classes:
        y = jnp.argmax(out.logits, axis=-1)
    else:  # a backbone: no class to refer to; the metrics that need one are refused upstream
        y = jnp.zeros(images.shape[:1], jnp.int32)
    return out, y, None
