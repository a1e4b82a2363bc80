"""The batched ablation engine: every single-head ablation of a ViT in a few compiled programs.

How the work is laid out, and why it stays exact:

* One ordinary forward pass of the model gives, for every layer ``l``, the residual stream
  ``x_l`` entering the block, the attention probabilities ``A_l`` and the attention block output
  ``O_l``.  Pruning head ``h`` of layer ``l`` leaves layers ``< l`` untouched, so they are never
  recomputed for an ablation.
* Inside layer ``l`` pruning changes only head ``h``'s term of the output projection:
  ``O'_l = O_l - delta`` with ``delta = (A_lh V_lh) W_out[h]``.  Partial pruning is the same with
  ``A_lh`` replaced by its zeroed entries ``A_lh * (1 - keep)``.  So the pruned stream after the
  attention block is ``x_l + O_l - delta``; attention is not recomputed in the pruned layer, only
  its MLP and the layers above run.  ``||delta|| / ||O_l||`` is the ``layer`` metric.  ``delta``
  has rank ``head_dim``, so the pruned layer's first MLP product is the unpruned one (shared by
  all heads) corrected through a folded ``[head_dim, mlp]`` matrix per head.
* The ablations ("spawns") of a batch of images travel together as streams
  ``[batch, stream, token, hidden]`` through one unrolled sweep over the layers: at layer ``j`` the
  streams spawned below ``j`` run the whole block, and the ones spawned at ``j`` join after it.
  Which head (and which partial-pruning mode) each spawn slot prunes is data, not a static
  argument, so one compiled program serves every group of heads: no retrace and no host round trip
  per head.  On a CPU the streams go through each block a few at a time (a ``lax.map`` of steps).
* With a CLS classifier only the CLS token of the last block reaches the logits (CLS and the
  distillation token with DeiT's two heads), so the last block runs for those queries alone; keys
  and values are reassociated (``(W_k q) . y_j`` and ``W_v sum_j p_j y_j``) so that no other
  token is projected at all.  Mean and attention pooling read every patch, so their last block
  runs in full.  The attention-pooling head itself is part of the readout, not a layer of heads
  that is pruned.
* Images are cut into batches and spawn slots into groups whose estimated working set fits a
  memory budget; over several devices the images of a batch are sharded along the batch axis of a
  ``jax.sharding.Mesh`` and everything else is replicated.

Axis names in shapes: ``batch layer head slot stream token hidden class``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxvit_interp.errors import InputError
from jaxvit_interp.importance.metrics import layer_change
from jaxvit_interp.importance.taylor import taylor_importance
from jaxvit_interp.model import blocks
from jaxvit_interp.model.blocks import BlockParams
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput, VisionTransformer, block_params, readout_params
from jaxvit_interp.parallel import Batcher, to_host
from jaxvit_interp.progress import ProgressArg, start_progress

Array = jax.Array
_F32 = 4  # bytes


# --------------------------------------------------------------------------------------------
# Pure kernels: the engine's shortcuts, built from the model's own pieces (model.blocks).
# --------------------------------------------------------------------------------------------


def _masked_block(
    config: ViTConfig, p: BlockParams, x: Array, head_mask: Array | None = None
) -> Array:
    """The model's block, unpruned or with a ``[head]`` mask. x ``[batch, token, hidden]`` -> same."""
    return blocks.block(config, p, x, head_mask=head_mask, with_probs=False)[0]


def _prefix_block(
    config: ViTConfig, p: BlockParams, x: Array, queries: int, head_mask: Array | None = None
) -> Array:
    """The block for the first ``queries`` tokens only: ``[batch, token, hidden] ->
    [batch, queries, hidden]``; ``head_mask`` ``[head]`` as in
    :func:`~jaxvit_interp.model.blocks.attention` (None: unpruned).

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
        heads = heads * head_mask[:, None]
    out = blocks.linear(p.out, heads, in_axes=2)
    return blocks.mlp_half(config, p, x[:, :queries] + out)


@functools.partial(jax.jit, static_argnames=("layers",))
def fold_mlp_inputs(params, layers: tuple[int, ...]) -> Array:
    """``W_out,h diag(scale_2) W_0`` for every head of ``layers``: ``[layer, head, head_dim, mlp]``.

    A head's pruning delta ``m_h W_out,h`` (``m_h`` its ``[token, head_dim]`` mixed values) reaches
    the first MLP product of its own layer only through this matrix, so that product costs
    ``head_dim`` instead of ``hidden`` per token and pruned head (see :func:`_pruned_mlp_half`).
    """
    folded = []
    for layer in layers:
        p = block_params(params, layer)
        folded.append(jnp.einsum("hed,d,df->hef", p.out.kernel, p.ln2.scale, p.mlp_in.kernel))
    return jnp.stack(folded)


def _pruned_mlp_half(
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
      mixed: ``[batch, token, head_dim]`` the pruned head's mixed values.
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


def _shared_mlp_input(p: BlockParams, u: Array) -> Array:
    """``((u - mean u) * scale_2) W_0`` for :func:`_pruned_mlp_half`. u ``[batch, token, hidden]``."""
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

    ``mixed W_out,h`` is ``delta = O_l - O'_l``, the pruned entries' contribution to the block
    output.
    """
    v = blocks.linear(p.value, blocks.layer_norm(config, p.ln1, residual))
    probs = attention[:, heads]  # [batch, slot, query, key]
    if keep is not None:
        probs = probs * (1.0 - keep)  # the zeroed entries are what the pruning takes away
    return jnp.einsum("bsqk,bskd->bsqd", probs, jnp.swapaxes(v[:, :, heads], 1, 2))


def _grouped(fn, xs, group: int | None) -> Array:
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


def ablation_sweep(
    config: ViTConfig,
    params,
    full: ModelOutput,
    spawn_layers: tuple[int, ...],
    slot_heads: Array,
    folded: Array,
    slot_keep: Array | None = None,
    need_streams: bool = True,
    group: int | None = None,
) -> tuple[Array | None, Array | None, Array]:
    """Run every spawned ablation of a batch of images to the logits, reusing the unpruned pass.

    Args:
      full: the unpruned ``ModelOutput`` of these images (all layers).
      spawn_layers: static, increasing layers at which ablations start.
      slot_heads: ``[len(spawn_layers), slot]`` int, the head each slot prunes at each layer.
      folded: :func:`fold_mlp_inputs` of ``spawn_layers`` (unused without streams).
      slot_keep: ``[len(spawn_layers), slot, query, key]`` entries each slot zeroes, or None to
        prune whole heads.
      need_streams: False computes only the ``layer`` metric (no pruned forward passes).
      group: static, at most this many streams (each covering the whole batch) per step; None
        for one step per layer.

    Returns:
      ``(logits [batch, spawn_layer, slot, class], pre_logits [batch, spawn_layer, slot, hidden],
      layer_change [batch, spawn_layer, slot])``; the first two are None without streams.
    """
    c = config
    batch = full.residual.shape[0]
    slots = slot_heads.shape[1]
    read = blocks.readout_tokens(c)  # leading tokens the logits read, or None for all
    last = c.num_layers - 1
    # Ablations in flight, [stream, batch, token, hidden] in spawn order.  Streams lead so that
    # grouping them never splits the (possibly sharded) batch axis.
    x = None
    changes = []
    for layer in range(spawn_layers[0], c.num_layers):
        p = block_params(params, layer)
        if x is not None:
            if layer == last and read:
                block = functools.partial(_prefix_block, c, p, queries=read)
            else:
                block = functools.partial(_masked_block, c, p)
            x = _grouped(block, x, group)
        if layer not in spawn_layers:
            continue
        i = spawn_layers.index(layer)
        keep = None if slot_keep is None else slot_keep[i]
        mixed = spawn_mixed(
            c, p, full.residual[:, layer], full.attention[:, layer], slot_heads[i], keep
        )
        delta = jnp.einsum("bsqd,sdo->bsqo", mixed, p.out.kernel[slot_heads[i]])  # O_l - O'_l
        block_out = full.block_outputs[:, layer]
        changes.append(jax.vmap(jax.vmap(layer_change, (None, 0)))(block_out, delta))
        if not need_streams:
            continue
        u = full.residual[:, layer] + block_out  # the unpruned stream after attention
        if layer == last and read:
            new = u[None, :, :read] - jnp.swapaxes(delta, 0, 1)[:, :, :read]
            new = _grouped(functools.partial(blocks.mlp_half, c, p), new, group)
        else:
            pruned_mlp = functools.partial(_pruned_mlp_half, c, p, u, _shared_mlp_input(p, u))
            streams = (
                jnp.swapaxes(delta, 0, 1),
                jnp.swapaxes(mixed, 0, 1),
                folded[i][slot_heads[i]],
            )
            new = _grouped(pruned_mlp, streams, group)
        x = new if x is None else jnp.concatenate([x, new], axis=0)
    changes = jnp.stack(changes, axis=1)
    if not need_streams:
        return None, None, changes
    readout = functools.partial(blocks.readout, c, readout_params(params))
    logits, z, _ = jax.vmap(readout)(x)  # [stream, batch, ...]
    unstack = lambda a: jnp.moveaxis(  # noqa: E731  -> [batch, spawn_layer, slot, ...]
        a.reshape(len(spawn_layers), slots, batch, -1), 2, 0
    )
    return unstack(logits), unstack(z), changes


# --------------------------------------------------------------------------------------------
# Compiled batch programs.
# --------------------------------------------------------------------------------------------


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


Reduce = Callable[[Array, Array, Array, Array, Array], dict[str, Array]]


@functools.partial(
    jax.jit, static_argnames=("config", "spawn_layers", "reduce", "need_streams", "group")
)
def ablation_batch(
    config: ViTConfig,
    params,
    full: ModelOutput,
    targets: Array,
    slot_heads: Array,
    folded: Array | None,
    slot_modes: Array | None,
    keep_table: Array | None,
    spawn_layers: tuple[int, ...],
    reduce: Reduce | None,
    need_streams: bool,
    group: int | None = None,
) -> dict[str, Array]:
    """One group of spawn slots on one batch of images, reduced to per-ablation outputs.

    ``reduce(logits [b, c], z [b, d], targets [b], logits' [b, s, k, c], z' [b, s, k, d])`` maps the
    pruned outputs to arrays ``[b, s, k, ...]`` on the device, so only those come back.
    ``folded``: :func:`fold_mlp_inputs` of ``spawn_layers`` (None without streams).
    Returns its dict plus ``"layer"`` ``[batch, spawn_layer, slot]``.
    """
    keep = None if keep_table is None else keep_table[slot_modes]
    logits, z, changes = ablation_sweep(
        config,
        params,
        full,
        spawn_layers,
        slot_heads,
        folded,
        keep,
        need_streams,
        group,
    )
    result = {"layer": changes}
    if need_streams and reduce is not None:
        result.update(reduce(full.logits, full.pre_logits, targets, logits, z))
    return result


# --------------------------------------------------------------------------------------------
# Chunk planning under a memory budget.
# --------------------------------------------------------------------------------------------


# The most the engine takes of a CPU host by default (see default_memory_budget): 1.25 GiB.
# With 1.5 GiB, partial pruning of ViT-B/16 (60 slots a layer) took a whole run to 3.8 GiB;
# the smaller budget costs single-head ablations a few percent (benchmarks/RESULTS.md).
CPU_MEMORY_BUDGET = 5 << 28


def default_memory_budget() -> int:
    """Bytes per device the engine may use when the caller sets no budget.

    Half the free memory of an accelerator; on CPU a sixteenth of physical memory, at most
    1.25 GiB (:data:`CPU_MEMORY_BUDGET`), split evenly between the process's CPU devices (XLA's
    host device count), which all draw on that memory.  The CPU share is small because a CPU host
    is shared with everything else running on it, and because the whole process must fit
    beside the engine: on ViT-B/16 the runtime, compiled programs and parameters take about
    1.5 GB, and XLA's CPU buffers come to about twice the engine's estimate, so this budget keeps
    a whole ``analyze`` run under 4 GB however many images it has (``benchmarks/memory.py``).
    """
    # This process's own device: across processes the others' devices cannot be queried.
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 << 30
    host_devices = max(1, len(jax.local_devices(backend="cpu")))
    return int(min(CPU_MEMORY_BUDGET, physical // 16)) // host_devices


def _block_work_bytes(config: ViTConfig) -> int:
    """Live bytes of one sequence inside one block (activations, scores, MLP hidden)."""
    n, d, h, f = config.num_tokens, config.hidden_size, config.num_heads, config.mlp_in_dim
    return _F32 * (8 * n * d + 3 * h * n * n + 2 * n * f)


def full_pass_bytes(config: ViTConfig, with_taylor: bool) -> int:
    """Estimated bytes per image of :func:`full_pass`, outputs included."""
    n, d, h, f, L = (
        config.num_tokens,
        config.hidden_size,
        config.num_heads,
        config.mlp_in_dim,
        config.num_layers,
    )
    outputs = _F32 * L * (2 * n * d + h * n * n)
    if with_taylor:
        # Reverse mode keeps each block's activations for the backward pass.
        return (
            outputs
            + _F32 * L * (10 * n * d + 3 * h * n * n + 3 * n * f)
            + _block_work_bytes(config)
        )
    return outputs + _block_work_bytes(config)


def _stream_state_bytes(config: ViTConfig) -> int:
    """Bytes of one ablation stream's residual between blocks (input, output, and the copy made
    when new spawns join)."""
    return _F32 * 3 * config.num_tokens * config.hidden_size


def _stream_work_bytes(config: ViTConfig) -> int:
    """Bytes of one sequence's activations inside a block that XLA keeps live at once (MLP hidden
    activations and attention scores dominate); calibrated against XLA's memory analysis."""
    n, h, f = config.num_tokens, config.num_heads, config.mlp_in_dim
    return _F32 * ((3 * n * f) // 2 + h * n * n)


def sweep_bytes(
    config: ViTConfig,
    spawn_layers: tuple[int, ...],
    slots: int,
    need_streams: bool,
    stepped: bool = False,
) -> int:
    """Estimated bytes per image of :func:`ablation_batch`, the unpruned pass it reads included.

    ``stepped``: streams go through each block a few at a time, so the block working set is a
    fixed cost per step (see :func:`plan_batches`) rather than a cost per stream.
    """
    n, d, h, L = config.num_tokens, config.hidden_size, config.num_heads, config.num_layers
    inputs = _F32 * L * (2 * n * d + h * n * n)
    spawn = _F32 * slots * (3 * n * d + 2 * n * n)
    if not need_streams:
        return inputs + spawn
    streams = len(spawn_layers) * slots
    per_stream = _stream_state_bytes(config) + (0 if stepped else _stream_work_bytes(config))
    return inputs + spawn + streams * per_stream


def default_step_tokens() -> int | None:
    """Tokens per step through a block on this backend: 4,096 on CPU, None (all at once) otherwise.

    On a CPU a step of a few thousand tokens is fastest: enough rows for efficient matrix
    products, few enough that a step's activations stay in cache.  An accelerator wants the
    largest batch it can hold.
    """
    return 4096 if jax.default_backend() == "cpu" else None


def folded_bytes(config: ViTConfig, spawn_layers: tuple[int, ...]) -> int:
    """Bytes of :func:`fold_mlp_inputs`; every device holds a full copy."""
    return _F32 * len(spawn_layers) * config.hidden_size * config.mlp_in_dim


def params_bytes(params) -> int:
    """Bytes of a parameter tree; every device holds a full copy."""
    return int(
        sum(np.dtype(a.dtype).itemsize * np.size(a) for a in jax.tree_util.tree_leaves(params))
    )


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How the images and spawn slots are cut.

    Attributes:
      images_per_batch: images in one batch, over all devices (the last batch is padded).
      num_batches: number of image batches.
      slots_per_group: spawn slots per layer in one group (the last group is padded).
      num_slot_groups: number of slot groups.
      streams_per_step: ablation streams (each covering the batch's images) per step through a
        block, or None for all at once.
      estimated_bytes: estimated peak bytes per device of one batch with one slot group.
    """

    images_per_batch: int
    num_batches: int
    slots_per_group: int
    num_slot_groups: int
    streams_per_step: int | None
    estimated_bytes: int


class MemoryBudgetError(InputError):
    """A per-device memory budget too small for one image with one ablation at a time.

    Attributes:
      least_bytes: the least budget that fits, in whole MiB (as ``--memory-budget-mb`` takes it).
    """

    def __init__(self, message: str, least_bytes: int):
        super().__init__(message)
        self.least_bytes = least_bytes


def _even_split(total: int, most: int, multiple: int = 1) -> tuple[int, int]:
    """``(size, count)`` with ``size <= most`` (a multiple of ``multiple``) and the least padding.

    Among sizes of at least half the largest allowed one, the one whose padded total
    ``size * ceil(total / size)`` is smallest wins (ties go to the larger size), so a remainder
    batch wastes little work and no second program shape is compiled.
    """
    most = max(multiple, (most // multiple) * multiple)
    most = min(most, -(-total // multiple) * multiple)
    best = None
    for size in range(most, 0, -multiple):
        if 2 * size < most:
            break
        count = -(-total // size)
        if best is None or size * count < best[0] * best[1]:
            best = (size, count)
    return best


def plan_batches(
    config: ViTConfig,
    *,
    num_images: int,
    num_slots: int,
    spawn_layers: tuple[int, ...],
    with_taylor: bool,
    need_streams: bool,
    memory_budget_bytes: int | None = None,
    batch_size: int | None = None,
    num_devices: int = 1,
    fixed_bytes: int = 0,
    step_tokens: int | None = None,
) -> BatchPlan:
    """Largest batches and slot groups whose estimated per-device working set fits the budget;
    a :class:`MemoryBudgetError` naming the least budget that fits when one image does not.

    ``fixed_bytes`` (the parameters) and, with streams, the :func:`fold_mlp_inputs` matrices are
    taken off the budget first.  All spawn slots of a layer in
    one group is preferred (the most work per program launch); slots are split only when a single
    image per device would not fit otherwise.  With ``step_tokens`` (see
    :func:`default_step_tokens`) streams pass through each block in steps of about that many
    tokens, and a batch holds at most that many tokens' worth of images per device.
    """
    total_budget = memory_budget_bytes or default_memory_budget()
    n = config.num_tokens
    step_images = None if step_tokens is None else max(1, step_tokens // n)
    # A tenth of the budget is held back for what the estimates leave out (XLA's own buffers).
    budget = int(0.9 * total_budget) - fixed_bytes
    if need_streams and num_slots:
        budget -= folded_bytes(config, spawn_layers)
    if step_images is not None and need_streams and num_slots:
        budget -= step_images * _stream_work_bytes(config)
    per_image = lambda k: max(  # noqa: E731
        full_pass_bytes(config, with_taylor),
        sweep_bytes(config, spawn_layers, k, need_streams, step_images is not None)
        if num_slots
        else 0,
    )
    slots = num_slots
    while slots > 1 and per_image(slots) > budget:
        slots = -(-slots // 2)
    if per_image(slots) > budget:
        _refuse_budget(config, total_budget, memory_budget_bytes is None, budget, per_image(slots))
    slot_size, slot_count = _even_split(num_slots, slots) if num_slots else (0, 0)
    per_device = max(1, budget // per_image(slot_size or 1))
    if step_images is not None:
        per_device = min(per_device, step_images)
    most_images = per_device * num_devices
    if batch_size is not None:
        most_images = min(most_images, batch_size)
    image_size, image_count = _even_split(num_images, most_images, num_devices)
    local = image_size // num_devices
    group = None if step_images is None else max(1, step_images // local)
    estimate = (int(0.9 * total_budget) - budget) + per_image(slot_size or 1) * local
    return BatchPlan(image_size, image_count, slot_size, slot_count, group, int(estimate))


def _refuse_budget(
    config: ViTConfig, total: int, is_default: bool, left: int, per_image: int
) -> None:
    """Raise :class:`MemoryBudgetError` for a budget of ``total`` bytes that leaves ``left``
    after its fixed costs where one image needs ``per_image``: naming the model's tokens per
    image, and the least budget that fits (the fixed costs do not depend on the budget)."""
    fixed = int(0.9 * total) - left
    least = -(-10 * (fixed + per_image) // 9)
    while int(0.9 * least) < fixed + per_image:  # the tenth held back, as int() rounds it
        least += 1
    mib = -(-least // 2**20)
    given = "the default memory budget" if is_default else "the memory budget"
    height, width = config.image_size
    raise MemoryBudgetError(
        f"{given} of {total:,} bytes ({total / 2**20:,.1f} MiB) per device is too small for one "
        f"image of this model ({config.num_tokens:,} tokens at {height}x{width} px): the "
        f"parameters and one step through a block take {fixed:,} bytes and one image with one "
        f"ablation at a time needs about {per_image:,} more (a tenth of the budget is held "
        f"back)\na budget of {mib:,} MiB fits: --memory-budget-mb {mib} on the command line, "
        f"memory_budget_bytes={mib * 2**20} in Python",
        mib * 2**20,
    )


# --------------------------------------------------------------------------------------------
# The driver: batches, devices, progress. Host code only; the work is in the programs above.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EngineOutput:
    """Host arrays from :func:`run_engine`.

    Attributes:
      logits: ``[batch, class]`` unpruned logits.
      targets: ``[batch]`` the class ``y`` used by the metrics.
      taylor: ``[batch, layer, head]`` or None.
      per_slot: ``{name: [batch, spawn_layer, slot, ...]}`` from ``reduce`` plus ``"layer"``.
    """

    logits: np.ndarray
    targets: np.ndarray
    taylor: np.ndarray | None
    per_slot: dict[str, np.ndarray]
    plan: BatchPlan


def _pad_slots(a: np.ndarray, slots: int) -> np.ndarray:
    """Pad axis 1 by repeating the last slot; padded results are discarded."""
    if a.shape[1] == slots:
        return a
    return np.concatenate([a, np.repeat(a[:, -1:], slots - a.shape[1], axis=1)], axis=1)


def run_engine(
    config: ViTConfig,
    params: Any,
    images,
    labels: np.ndarray | None,
    *,
    spawn_layers: tuple[int, ...],
    slot_heads: np.ndarray | None = None,
    slot_modes: np.ndarray | None = None,
    keep_table: np.ndarray | None = None,
    reduce: Reduce | None = None,
    with_taylor: bool = False,
    need_streams: bool = True,
    memory_budget_bytes: int | None = None,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
    progress: ProgressArg = True,
    desc: str = "ablations",
    step_tokens: int | None | str = "auto",
) -> EngineOutput:
    """Run the unpruned pass and every spawn slot over all images, batch by batch.

    Args:
      images: validated ``[batch, h, w, c]`` float32.
      labels: validated ``[batch]`` int32, or None to use predictions.
      spawn_layers: increasing layers at which ablations start (empty: unpruned pass only).
      slot_heads: ``[len(spawn_layers), slot]`` int head pruned by each slot.
      slot_modes, keep_table: ``[len(spawn_layers), slot]`` int index into ``keep_table``
        ``[mode, query, key]`` (0 = zeroed, 1 = kept) for partial pruning; both None for whole
        heads.
      reduce: maps pruned logits to per-slot outputs on the device (see :func:`ablation_batch`).
      mesh: shard image batches over all of this mesh's devices (batch axis); None: one device.
      progress: a step for each batch's unpruned pass and each of its slot groups
        (:func:`~jaxvit_interp.progress.start_progress`).
      step_tokens: tokens per step through a block; "auto" for :func:`default_step_tokens`.
    """
    num_images = images.shape[0]
    num_slots = slot_heads.shape[1] if spawn_layers else 0
    devices = mesh.devices.size if mesh is not None else 1
    plan = plan_batches(
        config,
        num_images=num_images,
        num_slots=num_slots,
        spawn_layers=spawn_layers,
        with_taylor=with_taylor,
        need_streams=need_streams,
        memory_budget_bytes=memory_budget_bytes,
        batch_size=batch_size,
        num_devices=devices,
        fixed_bytes=params_bytes(params),
        step_tokens=default_step_tokens() if step_tokens == "auto" else step_tokens,
    )
    batcher = Batcher(plan.images_per_batch, mesh)
    params = batcher.replicate(params)
    folded = fold_mlp_inputs(params, spawn_layers) if num_slots and need_streams else None

    # Slot groups: pad every layer's slot list to a whole number of equal groups.
    table = None if keep_table is None else batcher.replicate(np.asarray(keep_table, np.float32))
    slot_groups = []
    if num_slots:
        padded = plan.slots_per_group * plan.num_slot_groups
        slots_all = _pad_slots(np.asarray(slot_heads, np.int32), padded)
        modes_all = (
            None if slot_modes is None else _pad_slots(np.asarray(slot_modes, np.int32), padded)
        )
        for k in range(plan.num_slot_groups):
            part = slice(k * plan.slots_per_group, (k + 1) * plan.slots_per_group)
            slot_groups.append(
                (
                    part,
                    batcher.replicate(slots_all[:, part]),
                    None if modes_all is None else batcher.replicate(modes_all[:, part]),
                )
            )

    logits_out = np.zeros((num_images, config.num_classes), np.float32)
    targets_out = np.zeros((num_images,), np.int32)
    taylor_out = (
        np.zeros((num_images, config.num_layers, config.num_heads), np.float32)
        if with_taylor
        else None
    )
    per_slot: dict[str, np.ndarray] = {}
    steps = plan.num_batches * (1 + len(slot_groups))
    bar = start_progress(progress, total=steps, desc=desc, leave=False)

    def collect(rows, full_logits, y, taylor, parts):
        n = rows.stop - rows.start
        logits_out[rows] = to_host(full_logits)[:n]
        targets_out[rows] = to_host(y)[:n]
        if taylor is not None:
            taylor_out[rows] = to_host(taylor)[:n]
        for part, result in parts:
            for name, value in result.items():
                value = to_host(value)[:n]
                if name not in per_slot:
                    per_slot[name] = np.zeros(
                        (num_images, len(spawn_layers), num_slots, *value.shape[3:]), value.dtype
                    )
                stop = min(part.stop, num_slots)
                per_slot[name][rows, :, part.start : stop] = value[:, :, : stop - part.start]
            bar.update(1)
        bar.update(1)

    pending = None  # the previous batch's device results
    # Batcher.batches places the next images while the previous batch still computes; its
    # results are fetched before this batch starts, so one batch's activations are live at a time.
    for batch in batcher.batches(images, labels):
        pixels, targets = batch.arrays
        if pending is not None:
            collect(*pending)
        full, y, taylor = full_pass(config, params, pixels, targets, with_taylor)
        parts = [
            (
                part,
                ablation_batch(
                    config,
                    params,
                    full,
                    y,
                    part_slots,
                    folded,
                    modes,
                    table,
                    spawn_layers,
                    reduce,
                    need_streams,
                    plan.streams_per_step,
                ),
            )
            for part, part_slots, modes in slot_groups
        ]
        pending = (batch.rows, full.logits, y, taylor, parts)
        del full
    collect(*pending)
    bar.close()
    return EngineOutput(logits_out, targets_out, taylor_out, per_slot, plan)
