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
  memory budget (:func:`~jaxvit_interp.budget.plan_batches`); over several devices the images of
  a batch are sharded along the batch axis of a ``jax.sharding.Mesh`` and everything else is
  replicated.  The batch loop is the one both engines share
  (:func:`~jaxvit_interp.importance.driver.drive`), and the pieces through a block are the
  shared kernels (:mod:`~jaxvit_interp.importance.kernels`).
* What ablating a head leaves in its place is a value the engine takes
  (:class:`~jaxvit_interp.importance.ablation_kinds.Ablation`): ``delta`` is what it takes from
  ``A_lh V_lh``, times ``W_out[h]``.  A mean or resample ablation's replacement is a table per
  spawn slot, data beside the batch (:mod:`~jaxvit_interp.importance.replacement`): ``delta``
  is then ``(A_lh V_lh - r) W_out[h]``, the same rank.

Axis names in shapes: ``batch layer head slot stream token hidden class``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.budget import BatchPlan, params_bytes, plan_batches
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.ablation_kinds import ZERO, Ablation
from jaxvit_interp.importance.driver import drive
from jaxvit_interp.importance.kernels import (
    Reduce,
    fold_mlp_inputs,
    grouped,
    masked_block,
    prefix_block,
    pruned_mlp_half,
    shared_mlp_input,
    spawn_mixed,
)
from jaxvit_interp.importance.metrics import layer_change
from jaxvit_interp.importance.replacement import replacements
from jaxvit_interp.model import blocks
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput, block_params, readout_params

Array = jax.Array


# --------------------------------------------------------------------------------------------
# The sweep: every spawn slot of a batch, reusing the unpruned pass (pure; kernels.py's pieces).
# --------------------------------------------------------------------------------------------


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
    ablation: Ablation = ZERO,
    replacement: Array | None = None,
) -> tuple[Array | None, Array | None, Array]:
    """Run every spawned ablation of a batch of images to the logits, reusing the unpruned pass.

    Args:
      full: the unpruned ``ModelOutput`` of these images (all layers).
      spawn_layers: static, increasing layers at which ablations start.
      slot_heads: ``[len(spawn_layers), slot]`` int, the head each slot prunes at each layer.
      folded: :func:`~jaxvit_interp.importance.kernels.fold_mlp_inputs` of ``spawn_layers``
        (unused without streams).
      slot_keep: ``[len(spawn_layers), slot, query, key]`` entries each slot zeroes, or None to
        prune whole heads.
      need_streams: False computes only the ``layer`` metric (no pruned forward passes).
      group: static, at most this many streams (each covering the whole batch) per step; None
        for one step per layer.
      ablation: static, what takes an ablated head's place (its ``removed`` part of the mixed
        values is what ``delta`` carries).
      replacement: ``[batch or 1, len(spawn_layers), slot, token, head_dim]`` what takes each
        slot's ablated mixed values' place
        (:func:`~jaxvit_interp.importance.kernels.clean_slot_mixed`), or None for zero.

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
                block = functools.partial(prefix_block, c, p, queries=read)
            else:
                block = functools.partial(masked_block, c, p)
            x = grouped(block, x, group)
        if layer not in spawn_layers:
            continue
        i = spawn_layers.index(layer)
        keep = None if slot_keep is None else slot_keep[i]
        mixed = ablation.removed(
            spawn_mixed(
                c, p, full.residual[:, layer], full.attention[:, layer], slot_heads[i], keep
            ),
            None if replacement is None else replacement[:, i],
        )
        delta = jnp.einsum("bsqd,sdo->bsqo", mixed, p.out.kernel[slot_heads[i]])  # O_l - O'_l
        block_out = full.block_outputs[:, layer]
        changes.append(jax.vmap(jax.vmap(layer_change, (None, 0)))(block_out, delta))
        if not need_streams:
            continue
        u = full.residual[:, layer] + block_out  # the unpruned stream after attention
        if layer == last and read:
            new = u[None, :, :read] - jnp.swapaxes(delta, 0, 1)[:, :, :read]
            new = grouped(functools.partial(blocks.mlp_half, c, p), new, group)
        else:
            pruned_mlp = functools.partial(pruned_mlp_half, c, p, u, shared_mlp_input(p, u))
            streams = (
                jnp.swapaxes(delta, 0, 1),
                jnp.swapaxes(mixed, 0, 1),
                folded[i][slot_heads[i]],
            )
            new = grouped(pruned_mlp, streams, group)
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
# The compiled batch program.
# --------------------------------------------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnames=("config", "spawn_layers", "reduce", "need_streams", "group", "ablation"),
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
    ablation: Ablation = ZERO,
    replacement: Array | None = None,
    slot_start: Array | int = 0,
) -> dict[str, Array]:
    """One group of spawn slots on one batch of images, reduced to per-ablation outputs.

    ``reduce`` (:data:`~jaxvit_interp.importance.kernels.Reduce`) maps the pruned outputs to
    arrays ``[b, s, k, ...]`` on the device, so only those come back.  ``folded``:
    :func:`~jaxvit_interp.importance.kernels.fold_mlp_inputs` of ``spawn_layers`` (None without
    streams).  ``replacement``: the table of every slot of the run ``[batch or 1, spawn_layer,
    slot, token, head_dim]`` (None for zero), of which this group's slots start at
    ``slot_start`` (data: one program serves every group).
    Returns its dict plus ``"layer"`` ``[batch, spawn_layer, slot]``.
    """
    if replacement is not None:
        slots = slot_heads.shape[1]
        replacement = jax.lax.dynamic_slice_in_dim(replacement, slot_start, slots, axis=2)
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
        ablation,
        replacement,
    )
    result = {"layer": changes}
    if need_streams and reduce is not None:
        result.update(reduce(full.logits, full.pre_logits, targets, logits, z))
    return result


# --------------------------------------------------------------------------------------------
# The engine: its plan and its work per batch; the loop is the shared driver's.
# --------------------------------------------------------------------------------------------


def head_importance_plan(
    config: ViTConfig,
    params: Any,
    execution: Execution,
    *,
    num_images: int,
    with_taylor: bool = False,
    ablation: Ablation = ZERO,
) -> BatchPlan:
    """The plan of :func:`~jaxvit_interp.importance.head_importance`'s sweep (every head of
    every layer, all ablation metrics, ``ablation``'s replacement): what it will cut
    ``num_images`` images into, or the :class:`~jaxvit_interp.budget.MemoryBudgetError` it
    would raise."""
    return plan_batches(
        config,
        execution,
        num_images=num_images,
        num_slots=config.num_heads,
        spawn_layers=tuple(range(config.num_layers)),
        with_taylor=with_taylor,
        need_streams=True,
        fixed_bytes=params_bytes(params),
        replacement=ablation.replacement,
        replaced_heads=config.num_layers * config.num_heads,
    )


@dataclasses.dataclass
class EngineOutput:
    """Host arrays from :func:`run_engine`.

    Attributes:
      logits: ``[batch, class]`` unpruned logits.
      targets: ``[batch]`` the class ``y`` used by the metrics.
      taylor: ``[batch, layer, head]`` or None.
      per_slot: ``{name: [batch, spawn_layer, slot, ...]}`` from ``reduce`` plus ``"layer"``.
      plan: the batches and slot groups the work was cut into.
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
    ablation: Ablation = ZERO,
    reference=None,
    execution: Execution,
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
      ablation: what takes an ablated head's place.
      reference: the checked images its replacement comes from
        (:func:`~jaxvit_interp.importance.validate.check_reference`): a mean's, averaged before
        the batches run, or resample's, one per image and batched with them; None for zero.
      execution: batch size, memory budget, devices (images sharded over the mesh's batch axis)
        and progress (the images, a share of a batch as each slot group comes back).
      step_tokens: tokens per step through a block; "auto" for
        :func:`~jaxvit_interp.budget.default_step_tokens`.
    """
    num_images = images.shape[0]
    num_slots = slot_heads.shape[1] if spawn_layers else 0
    plan = plan_batches(
        config,
        execution,
        num_images=num_images,
        num_slots=num_slots,
        spawn_layers=spawn_layers,
        with_taylor=with_taylor,
        need_streams=need_streams,
        fixed_bytes=params_bytes(params),
        step_tokens=step_tokens,
        replacement=ablation.replacement if num_slots else None,
        replaced_heads=len(spawn_layers) * num_slots,
    )
    batcher = execution.batcher(plan.images_per_batch)
    params = batcher.replicate(params)
    folded = fold_mlp_inputs(params, spawn_layers) if num_slots and need_streams else None

    # Slot groups: pad every layer's slot list to a whole number of equal groups.
    table = None if keep_table is None else batcher.replicate(np.asarray(keep_table, np.float32))
    slot_groups = []
    replace = None  # no slots: nothing is ablated, so nothing is replaced
    if num_slots:
        padded = plan.slots_per_group * plan.num_slot_groups
        slots_all = _pad_slots(np.asarray(slot_heads, np.int32), padded)
        modes_all = (
            None if slot_modes is None else _pad_slots(np.asarray(slot_modes, np.int32), padded)
        )
        replace = replacements(
            config,
            params,
            ablation,
            reference,
            batcher=batcher,
            spawn_layers=spawn_layers,
            slot_heads=batcher.replicate(slots_all),
            slot_modes=None if modes_all is None else batcher.replicate(modes_all),
            keep_table=table,
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

    per_slot: dict[str, np.ndarray] = {}

    def store_group(part: slice):
        def store(batch, result):
            for name, value in result.items():
                if name not in per_slot:
                    per_slot[name] = np.zeros(
                        (num_images, len(spawn_layers), num_slots, *value.shape[3:]), value.dtype
                    )
                stop = min(part.stop, num_slots)
                per_slot[name][batch.rows, :, part.start : stop] = value[:, :, : stop - part.start]

        return store

    def work(full: ModelOutput, targets: Array, paired: Array | None):
        replacement = None if replace is None else replace(paired)
        return [
            (
                store_group(part),
                ablation_batch(
                    config,
                    params,
                    full,
                    targets,
                    part_slots,
                    folded,
                    modes,
                    table,
                    spawn_layers,
                    reduce,
                    need_streams,
                    plan.streams_per_step,
                    ablation,
                    replacement,
                    part.start,
                ),
            )
            for part, part_slots, modes in slot_groups
        ]

    unpruned = drive(
        config,
        params,
        images,
        labels,
        batcher=batcher,
        work=work,
        reference=reference if ablation.replacement == "per_image" and num_slots else None,
        with_taylor=with_taylor,
        progress=execution.progress,
        desc=desc,
    )
    return EngineOutput(unpruned.logits, unpruned.targets, unpruned.taylor, per_slot, plan)
