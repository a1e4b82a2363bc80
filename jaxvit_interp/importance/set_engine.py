"""The head-set engine: many head sets ablated exactly, sharing every layer they can share.

A set's ablation only differs from the unpruned pass from its lowest pruned layer up, and two
sets whose head masks agree on every layer below ``b`` have the same residual stream entering
layer ``b``.  So the sets are laid out as a tree of streams:

* Sorted in descending lexicographic order of their masks (layer 0's row first), each set shares
  the longest prefix of layers with the set before it (as in a sorted list of strings), so it
  branches off that set's stream (or an ancestor's) at the first layer where their masks differ.
  A set whose lowest pruned layer comes no earlier branches off the unpruned pass there instead.
  Pairwise interactions: the pair ``(i, j)`` with ``i`` below ``j`` branches off the single
  ``i`` at ``j``'s layer.  A greedy step (the removed heads plus each candidate): every
  candidate branches off a stream carrying the removed heads at its own layer, so a step costs
  what single-head ablations of the pruned model cost.
* Streams are kept in one array ``[stream, batch, token, hidden]`` ordered by branch layer; at
  each layer the streams that branch there are gathered from their source (a stream already
  in flight, or the unpruned pass's stream entering the layer) and appended, and every stream
  runs the block with its own head mask.  Each layer is its own compiled program whose only
  static shapes are the stream counts before and after it.
* Stream counts are rounded up to a few sizes (:func:`stream_bucket`: at most a quarter more),
  so the programs are reused across layers, calls and greedy steps.  The extra positions are
  filled by starting later streams early (exact: a stream's layers before its branch layer are
  its source's) and, at the top, by unpruned dummies whose results are discarded.

Nothing is approximated: every stream is the plain masked forward pass of its set from the
layer it starts at, and its input there is that pass's input.  A mean or resample ablation puts
each masked head's replacement in its place (:meth:`Ablation.masked
<jaxvit_interp.importance.ablation_kinds.Ablation.masked>`): one table ``[batch or 1, layer,
head, token, head_dim]`` of clean head outputs per batch
(:mod:`~jaxvit_interp.importance.replacement`), the same for every stream, of which each
layer's program reads its layer (an index that is data, so the programs stay one per shape).
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
from jaxvit_interp.importance.kernels import Reduce, grouped, masked_block, prefix_block
from jaxvit_interp.importance.metrics import layer_change
from jaxvit_interp.importance.replacement import replacements
from jaxvit_interp.model import blocks
from jaxvit_interp.model.blocks import BlockParams
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput, block_params, readout_params

Array = jax.Array

# --------------------------------------------------------------------------------------------
# The layout: pure host code.
# --------------------------------------------------------------------------------------------


def stream_bucket(count: int, step: int = 1) -> int:
    """The stream count ``count`` is padded to: the smallest multiple of ``step`` among
    ``step * {1, ..., 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...}`` (four sizes per doubling)
    that holds ``count``.  At most a quarter above ``count`` beyond ``8 * step``, and few sizes,
    so the per-layer programs compiled for one call serve the next."""
    if count <= 0:
        return 0
    units = -(-count // step)
    if units > 8:
        grain = 1 << (units.bit_length() - 3)
        units = -(-units // grain) * grain
    return units * step


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """How a chunk of unique head sets run as streams (see the module docstring).

    Attributes:
      masks: ``[position, layer, head]`` float32 head mask of the stream at each array position
        (all ones for a dummy).
      capacity: ``[layer]`` streams in flight leaving each layer (non-decreasing; 0 below the
        first layer that runs).
      sources: per layer, ``[capacity[l] - capacity[l - 1]]`` int: where each stream that
        starts at ``l`` gets its input, a position ``< capacity[l - 1]`` or
        ``capacity[l - 1]`` for the unpruned pass's stream.
      position: ``[set]`` each set's array position.
      branch: ``[set]`` the layer each set branches off at (the layers it needs run from there).
    """

    masks: np.ndarray
    capacity: tuple[int, ...]
    sources: tuple[np.ndarray, ...]
    position: np.ndarray
    branch: np.ndarray

    @property
    def first_layer(self) -> int:
        return int(np.flatnonzero(np.asarray(self.capacity) > 0)[0])


def _branches(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(branch layer, parent)`` of each of ``rows`` ``[set, layer, head]``: unique masks in
    descending lexicographic order; parent -1 is the unpruned pass."""
    count = len(rows)
    lowest = (rows != 1).any(axis=2).argmax(axis=1)
    branch = np.empty(count, np.int64)
    parent = np.full(count, -1, np.int64)
    for k in range(count):
        shared = -1 if k == 0 else int((rows[k] != rows[k - 1]).any(axis=1).argmax())
        if lowest[k] >= shared:  # the unpruned pass: only the set's own heads there
            branch[k] = lowest[k]
            continue
        branch[k] = shared
        # The stream before agrees with this set below ``shared``, and so does each of its
        # ancestors below the layer it branched at: take the nearest that is in flight there.
        t = k - 1
        while branch[t] >= shared:
            t = parent[t]
            assert t >= 0, "a set sharing more with a stream than with the unpruned pass"
        parent[k] = t
    return branch, parent


def plan_streams(masks: np.ndarray, step: int = 1) -> StreamPlan:
    """The stream layout of head sets ``masks`` ``[set, layer, head]`` (0 prunes; each set prunes
    at least one head), stream counts padded by :func:`stream_bucket` with ``step``."""
    num_sets, L, H = masks.shape
    unique, inverse = np.unique(masks.reshape(num_sets, L * H), axis=0, return_inverse=True)
    unique = unique[::-1].reshape(-1, L, H)  # descending: sets keeping more heads low come first
    inverse = len(unique) - 1 - np.asarray(inverse).reshape(-1)
    branch, parent = _branches(unique)
    order = np.argsort(branch, kind="stable")  # a parent branches below its children
    position = np.empty(len(unique), np.int64)
    position[order] = np.arange(len(unique))
    started = np.searchsorted(branch[order], np.arange(L), side="right")  # [layer]
    capacity = tuple(stream_bucket(int(a), step) for a in started)
    total = capacity[-1]
    start = np.searchsorted(np.asarray(capacity), np.arange(total), side="right")  # [position]
    stream_masks = np.ones((total, L, H), np.float32)
    stream_masks[: len(unique)] = unique[order]

    def source(u: int, layer: int) -> int:
        """Position of set ``u``'s input at ``layer`` (where it starts), or -1: unpruned."""
        t = parent[u]
        while t >= 0 and start[position[t]] >= layer:  # t starts here too: from t's source
            t = parent[t]
        return -1 if t < 0 else int(position[t])

    sources = []
    for layer in range(L):
        before = capacity[layer - 1] if layer else 0
        new = np.full(capacity[layer] - before, before, np.int32)  # dummies: unpruned
        for k in range(before, min(capacity[layer], len(unique))):
            src = source(int(order[k]), layer)
            new[k - before] = before if src < 0 else src
        sources.append(new)
    return StreamPlan(stream_masks, capacity, tuple(sources), position[inverse], branch[inverse])


# --------------------------------------------------------------------------------------------
# Compiled programs: one per layer shape, one for the readout.
# --------------------------------------------------------------------------------------------


def _layer_of(replacement: Array | None, layer: Array | int) -> Array | None:
    """Layer ``layer`` of a replacement table ``[batch or 1, layer, head, token, head_dim]``
    (``layer`` may be traced), or None for zero."""
    if replacement is None:
        return None
    return jax.lax.dynamic_index_in_dim(replacement, layer, axis=1, keepdims=False)


@functools.partial(jax.jit, static_argnames=("config", "group", "read", "ablation"))
def _layer_step(
    config: ViTConfig,
    p: BlockParams,
    x: Array,
    unpruned: Array,
    sources: Array,
    rows: Array,
    group: int | None,
    read: int | None,
    ablation: Ablation = ZERO,
    replacement: Array | None = None,
    layer: Array | int = 0,
) -> Array:
    """One layer for every stream: the streams starting here join, then all run the block.

    Args:
      x: ``[stream, batch, token, hidden]`` streams entering the layer.
      unpruned: ``[batch, token, hidden]`` the unpruned pass's stream entering it.
      sources: ``[new]`` each joining stream's source (a stream, or ``len(x)``: unpruned).
      rows: ``[stream + new, head]`` every stream's head mask at this layer.
      read: the last block of a token classifier: only its first ``read`` tokens are computed.
      ablation: what takes the place of the heads a stream's mask zeroes.
      replacement: ``[batch or 1, layer, head, token, head_dim]`` their replacement at every
        layer, of which ``layer``'s is read (None for zero).
    """
    if sources.shape[0]:
        if x.shape[0]:
            picked = jnp.take(x, jnp.minimum(sources, x.shape[0] - 1), axis=0)
            fresh = (sources == x.shape[0])[:, None, None, None]
            new = jnp.where(fresh, unpruned[None], picked)
        else:
            new = jnp.broadcast_to(unpruned[None], (sources.shape[0], *unpruned.shape))
        x = jnp.concatenate([x, new])
    kind = dict(ablation=ablation, replacement=_layer_of(replacement, layer))
    if read:
        block = functools.partial(prefix_block, config, p, queries=read, **kind)
    else:
        block = functools.partial(masked_block, config, p, **kind)
    return grouped(lambda xs, m: block(xs, head_mask=m), (x, rows), group)


@functools.partial(jax.jit, static_argnames=("config", "reduce"))
def _readout_reduce(config: ViTConfig, rp, x, logits, pre_logits, targets, reduce: Reduce):
    """Every stream's logits reduced to per-stream outputs ``{name: [batch, stream, ...]}``;
    ``reduce`` takes ``[batch, 1, stream, ...]`` pruned outputs as the single-head engine's."""
    lp, zp, _ = jax.vmap(functools.partial(blocks.readout, config, rp))(x)
    out = reduce(
        logits,
        pre_logits,
        targets,
        jnp.moveaxis(lp, 0, 1)[:, None],
        jnp.moveaxis(zp, 0, 1)[:, None],
    )
    return {name: value[:, 0] for name, value in out.items()}


def set_delta(
    config: ViTConfig,
    p: BlockParams,
    residual: Array,
    attention: Array,
    pruned: Array,
    ablation: Ablation = ZERO,
    replacement: Array | None = None,
) -> Array:
    """Each set's pruned heads' summed term of the block output, ``O_l - O'_l``:
    ``[batch, set, token, hidden]``.

    Args:
      residual: ``[batch, token, hidden]`` stream entering the block (unpruned below it).
      attention: ``[batch, head, query, key]`` its unpruned attention probabilities.
      pruned: ``[set, head]`` 1 - head mask: 1 for each head a set prunes in this layer.
      ablation: what takes a pruned head's place (its ``removed`` part of the mixed values is
        what the term carries).
      replacement: ``[batch or 1, head, token, head_dim]`` that place's content at this layer
        (None for zero).

    The heads' terms of the output projection add up, so pruning several heads of one layer
    takes away the sum of their terms.
    """
    v = blocks.linear(p.value, blocks.layer_norm(config, p.ln1, residual))
    mixed = jnp.einsum("bhqk,bkhd->bhqd", attention, v)  # every head's mixed values
    removed = ablation.removed(mixed, replacement)
    return jnp.einsum("bhqd,sh,hdo->bsqo", removed, pruned, p.out.kernel)


@functools.partial(jax.jit, static_argnames=("config", "ablation"))
def _layer_changes(
    config,
    p,
    residual,
    attention,
    block_output,
    pruned,
    ablation: Ablation = ZERO,
    replacement: Array | None = None,
    layer: Array | int = 0,
) -> Array:
    """``||O_l - O'_l|| / ||O_l||`` of each set's heads of this layer: ``[batch, set]``;
    ``replacement`` as :func:`_layer_step` takes it."""
    replaced = _layer_of(replacement, layer)
    delta = set_delta(config, p, residual, attention, pruned, ablation, replaced)
    return jax.vmap(jax.vmap(layer_change, (None, 0)))(block_output, delta)


# --------------------------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------------------------


def plan_sets(
    config: ViTConfig,
    masks: np.ndarray,
    execution: Execution,
    *,
    num_images: int,
    fixed_bytes: int,
    step_tokens: int | None | str = "auto",
    ablation: Ablation = ZERO,
) -> tuple[BatchPlan, list[np.ndarray], list[StreamPlan]]:
    """``(image batches, set chunks [set, layer, head], their layouts)`` for :func:`run_sets`.

    :func:`~jaxvit_interp.budget.plan_batches` with one stream per unique set (and
    ``ablation``'s replacement table, every head of every layer) sizes the image
    batches and the number of streams a chunk may hold; the unique sets, in the layout's order,
    are cut into chunks of that many and each is laid out by :func:`plan_streams` with streams
    counted in steps of ``streams_per_step``.
    """
    unique = np.unique(masks.reshape(len(masks), -1).astype(np.float32), axis=0)[::-1]
    unique = unique.reshape(-1, *masks.shape[1:])
    plan = plan_batches(
        config,
        execution,
        num_images=num_images,
        num_slots=stream_bucket(len(unique)),
        spawn_layers=(0,),
        with_taylor=False,
        need_streams=True,
        fixed_bytes=fixed_bytes,
        step_tokens=step_tokens,
        replacement=ablation.replacement,
        replaced_heads=config.num_layers * config.num_heads,
    )
    # The budget holds ``slots_per_group`` streams; padding adds up to a quarter.
    per_chunk = max(1, (plan.slots_per_group * 4) // 5)
    chunks = [unique[i : i + per_chunk] for i in range(0, len(unique), per_chunk)]
    return plan, chunks, [plan_streams(chunk, plan.streams_per_step or 1) for chunk in chunks]


@dataclasses.dataclass
class SetEngineOutput:
    """Host arrays from :func:`run_sets`: the unpruned ``logits`` ``[image, class]`` and
    ``targets`` ``[image]``, ``per_set`` ``{name: [image, set, ...]}`` (``reduce``'s outputs,
    plus ``"layer"`` when asked), and the ``plans`` of the set chunks."""

    logits: np.ndarray
    targets: np.ndarray
    per_set: dict[str, np.ndarray]
    plans: list[StreamPlan]


def run_sets(
    config: ViTConfig,
    params: Any,
    images,
    labels: np.ndarray | None,
    masks: np.ndarray,
    reduce: Reduce,
    *,
    with_layer: bool = True,
    ablation: Ablation = ZERO,
    reference=None,
    execution: Execution,
    desc: str = "head sets",
    step_tokens: int | None | str = "auto",
) -> SetEngineOutput:
    """Ablate each head set ``masks`` ``[set, layer, head]`` on all images, batch by batch.

    Images are cut into batches and the sets, in the layout's order, into chunks whose streams
    fit the memory budget of ``execution`` (:func:`~jaxvit_interp.budget.plan_batches` with one
    stream per set); each chunk is laid out by :func:`plan_streams`.  ``ablation``: what takes
    a pruned head's place; ``reference``: the checked images its replacement comes from
    (:func:`~jaxvit_interp.importance.validate.check_reference`; None for zero).  The batches run through the engines' shared driver
    (:func:`~jaxvit_interp.importance.driver.drive`); ``execution.progress`` counts the images,
    a share of a batch as each chunk comes back.
    """
    c = config
    num_images = images.shape[0]
    plan, chunks, plans = plan_sets(
        c,
        masks,
        execution,
        num_images=num_images,
        fixed_bytes=params_bytes(params),
        step_tokens=step_tokens,
        ablation=ablation,
    )
    group = plan.streams_per_step
    # Which chunk and position each input set's result comes from.
    key = {
        m.tobytes(): (ci, pl.position[k])
        for ci, (chunk, pl) in enumerate(zip(chunks, plans))
        for k, m in enumerate(chunk)
    }
    where = np.asarray([key[m.tobytes()] for m in masks.astype(np.float32)])

    batcher = execution.batcher(plan.images_per_batch)
    params = batcher.replicate(params)
    layers = [block_params(params, layer) for layer in range(c.num_layers)]
    rp = readout_params(params)
    read = blocks.readout_tokens(c)
    every_head = np.tile(np.arange(c.num_heads, dtype=np.int32), (c.num_layers, 1))
    replace = replacements(
        c,
        params,
        ablation,
        reference,
        batcher=batcher,
        spawn_layers=tuple(range(c.num_layers)),
        slot_heads=batcher.replicate(every_head),
    )
    tables = [
        (
            [batcher.replicate(s) for s in pl.sources],
            [batcher.replicate(pl.masks[: pl.capacity[j], j]) for j in range(c.num_layers)],
        )
        for pl in plans
    ]
    lowest = (masks != 1).any(axis=2).argmax(axis=1)
    # The ``layer`` metric of each set is read at its lowest pruned layer: per such layer, its
    # sets (padded to a bucket size, so few programs compile) and the heads they prune there.
    changed = []
    for layer in np.unique(lowest) if with_layer else ():
        members = np.flatnonzero(lowest == layer)
        padded = np.resize(members, stream_bucket(len(members)))
        pruned = batcher.replicate(1.0 - masks[padded, layer].astype(np.float32))
        changed.append((members, pruned, int(layer)))

    per_chunk_out: list[dict[str, list[np.ndarray]]] = [{} for _ in plans]
    layer_out = np.zeros((num_images, len(masks)), np.float32) if with_layer else None

    def store_chunk(out: dict[str, list[np.ndarray]]):
        def store(batch, result):
            for name, value in result.items():
                out.setdefault(name, []).append(value)

        return store

    def store_changes(members: np.ndarray):
        def store(batch, change):
            layer_out[batch.rows, members] = change[:, : len(members)]

        return store

    def work(full: ModelOutput, targets: Array, paired: Array | None):
        replacement = replace(paired)
        parts = []
        for out, pl, (sources, rows) in zip(per_chunk_out, plans, tables):
            x = jnp.zeros((0, *full.residual[:, 0].shape), full.residual.dtype)
            for layer in range(pl.first_layer, c.num_layers):
                x = _layer_step(
                    c,
                    layers[layer],
                    x,
                    full.residual[:, layer],
                    sources[layer],
                    rows[layer],
                    group,
                    read if layer == c.num_layers - 1 else None,
                    ablation,
                    replacement,
                    layer,
                )
            result = _readout_reduce(c, rp, x, full.logits, full.pre_logits, targets, reduce)
            parts.append((store_chunk(out), result))
        for members, pruned, layer in changed:
            change = _layer_changes(
                c,
                layers[layer],
                full.residual[:, layer],
                full.attention[:, layer],
                full.block_outputs[:, layer],
                pruned,
                ablation,
                replacement,
                layer,
            )
            parts.append((store_changes(members), change))
        return parts

    unpruned = drive(
        c,
        params,
        images,
        labels,
        batcher=batcher,
        work=work,
        reference=reference if ablation.replacement == "per_image" else None,
        progress=execution.progress,
        desc=desc,
    )
    gathered = [{name: np.concatenate(v) for name, v in out.items()} for out in per_chunk_out]
    per_set = {
        name: np.stack([gathered[ci][name][:, pos] for ci, pos in where], axis=1)
        for name in gathered[0]
    }
    if with_layer:
        per_set["layer"] = layer_out
    return SetEngineOutput(unpruned.logits, unpruned.targets, per_set, plans)
