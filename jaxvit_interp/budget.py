"""The one memory planner: how many images (and ablations) a program takes at once on a device.

Every program that runs the model over many images sizes its batches from one per-device memory
budget (:attr:`~jaxvit_interp.execution.Execution.memory_budget_bytes`, else
:func:`default_memory_budget`), by one rule, :func:`usable_bytes`: a tenth of the budget is held
back for what the estimates leave out (XLA's own buffers), and the parameters every device holds
come off the rest.  What is left is shared out by the estimated bytes an image costs:

- :func:`plan_batches`: the ablation engines (:mod:`jaxvit_interp.importance.engine`,
  :mod:`jaxvit_interp.importance.set_engine`): images per batch, spawn slots per group and
  streams per step through a block (:class:`BatchPlan`), from :func:`full_pass_bytes` and
  :func:`sweep_bytes`, plus the table of ablated head outputs that a mean or resample ablation
  puts in their place (:func:`replacement_bytes`: one table on every device for a mean, one
  per image for resample);
- :func:`pass_images`: a forward pass that reads every layer's attention (hop strength,
  patterns, rollout, the kept attention), from :func:`attention_pass_bytes`, or the pass of
  the direct logit attribution (:mod:`jaxvit_interp.importance.direct`), from
  :func:`direct_attribution_bytes`.

A budget too small for one image is refused with :class:`MemoryBudgetError`, which names the
command line's flag and the Python setting with the least budget that fits.  The default
budget is not refused while the machine can spare more: it grows to the least budget that fits
one image (:func:`spare_host_bytes`), with a :class:`BudgetGrownWarning` saying so.

The estimates are calibrated against XLA's memory analysis of the compiled programs
(``tests/importance/test_engine.py``, ``tests/test_budget.py``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import TYPE_CHECKING

import jax
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.blocks import readout_tokens
from jaxvit_interp.model.config import ViTConfig

if TYPE_CHECKING:
    from jaxvit_interp.execution import Execution

__all__ = [
    "block_work_bytes",
    "CPU_MEMORY_BUDGET",
    "DEFAULT_PASS_IMAGES",
    "BatchPlan",
    "BudgetGrownWarning",
    "MemoryBudgetError",
    "attention_pass_bytes",
    "default_memory_budget",
    "direct_attribution_bytes",
    "default_step_tokens",
    "pass_images",
    "plan_batches",
    "replacement_bytes",
    "spare_host_bytes",
    "usable_bytes",
]

_F32 = 4  # bytes

# The most the engine takes of a CPU host by default (see default_memory_budget): 1.25 GiB.
# With 1.5 GiB, partial pruning of ViT-B/16 (60 slots a layer) took a whole run to 3.8 GiB;
# the smaller budget costs single-head ablations a few percent (benchmarks/RESULTS.md).
CPU_MEMORY_BUDGET = 5 << 28

# The most images per attention-reading pass when the budget allows more: enough to keep an
# accelerator busy.
DEFAULT_PASS_IMAGES = 32


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


def spare_host_bytes() -> int:
    """Bytes per device the default budget may grow to when one image needs more than it: on
    CPU, half of what the kernel reports available (``MemAvailable``; elsewhere a quarter of
    physical memory), split between the process's CPU devices; on an accelerator the default
    already is half its free memory, so there it does not grow.

    A large model (DINOv2 at its native 518 px: 1,374 tokens) needs more for one image than the
    small CPU default; refusing it on a machine with memory to spare would only make the user
    look for a flag.
    """
    if "bytes_limit" in (jax.local_devices()[0].memory_stats() or {}):
        return default_memory_budget()
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError, AttributeError):
            available = 0
    host_devices = max(1, len(jax.local_devices(backend="cpu")))
    return available // 2 // host_devices


def default_step_tokens() -> int | None:
    """Tokens per step through a block on this backend: 4,096 on CPU, None (all at once) otherwise.

    On a CPU a step of a few thousand tokens is fastest: enough rows for efficient matrix
    products, few enough that a step's activations stay in cache.  An accelerator wants the
    largest batch it can hold.
    """
    return 4096 if jax.default_backend() == "cpu" else None


def usable_bytes(budget: int, fixed_bytes: int) -> int:
    """What a per-device ``budget`` leaves for the work once a tenth is held back for what the
    estimates leave out (XLA's own buffers) and ``fixed_bytes`` (the parameters every device
    holds) are taken off: the planner's one rule."""
    return int(0.9 * budget) - fixed_bytes


# --------------------------------------------------------------------------------------------
# Byte estimates, per image unless said otherwise.
# --------------------------------------------------------------------------------------------


def params_bytes(params) -> int:
    """Bytes of a parameter tree; every device holds a full copy."""
    return int(
        sum(np.dtype(a.dtype).itemsize * np.size(a) for a in jax.tree_util.tree_leaves(params))
    )


def block_work_bytes(config: ViTConfig) -> int:
    """Live bytes of one sequence inside one block (activations, scores, MLP hidden)."""
    n, d, h, f = config.num_tokens, config.hidden_size, config.num_heads, config.mlp_in_dim
    return _F32 * (8 * n * d + 3 * h * n * n + 2 * n * f)


def full_pass_bytes(config: ViTConfig, with_taylor: bool) -> int:
    """Estimated bytes per image of :func:`~jaxvit_interp.importance.kernels.full_pass`, outputs
    included."""
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
            outputs + _F32 * L * (10 * n * d + 3 * h * n * n + 3 * n * f) + block_work_bytes(config)
        )
    return outputs + block_work_bytes(config)


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
    """Estimated bytes per image of :func:`~jaxvit_interp.importance.engine.ablation_batch`, the
    unpruned pass it reads included.

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


def folded_bytes(config: ViTConfig, spawn_layers: tuple[int, ...]) -> int:
    """Bytes of :func:`~jaxvit_interp.importance.kernels.fold_mlp_inputs`; every device holds a
    full copy."""
    return _F32 * len(spawn_layers) * config.hidden_size * config.mlp_in_dim


def replacement_bytes(config: ViTConfig, heads: int) -> int:
    """Bytes of a replacement table of ``heads`` ablated head outputs, ``[head, token,
    head_dim]`` float32 (:mod:`jaxvit_interp.importance.replacement`): a mean ablation's whole
    table, which every device holds, or a resample ablation's for one image."""
    return _F32 * heads * config.num_tokens * config.head_dim


def attention_pass_bytes(config: ViTConfig) -> int:
    """Estimated live bytes per image of the attention pass with every analysis's reducer.

    Four arrays of the ``[layer, head, N, N]`` float32 attention of every layer: the attention
    itself and what XLA keeps beside it (a softmax's scores, rollout's products, the patterns'
    and the kept attention's copies); calibrated against XLA's memory analysis of the whole pass,
    kept attention included: 2.8 such arrays an image for ViT-B/16 (61 MiB), 3.3 for a
    257-token model of 2 layers.
    """
    n = config.num_tokens
    return 4 * _F32 * config.num_layers * config.num_heads * n * n


def direct_attribution_bytes(config: ViTConfig) -> int:
    """Estimated live bytes per image of the direct logit attribution's pass
    (:func:`~jaxvit_interp.importance.direct.direct_terms` on a forward pass).

    One block's working set while the forward runs (activations, twice the ``[head, N, N]``
    scores, the MLP's hidden activations), and what each layer keeps for the terms: its stream,
    block output and values ``[N, hidden]`` and the attention rows of the tokens the readout
    reads; calibrated against XLA's memory analysis of the whole pass
    (``tests/importance/test_direct.py``): 1.4x to 2.5x what XLA allocates, the most where the
    attention dominates.
    """
    n, d, h = config.num_tokens, config.hidden_size, config.num_heads
    block = 8 * n * d + 2 * h * n * n + 2 * n * config.mlp_in_dim
    leading = readout_tokens(config)
    read = config.num_patches if leading is None else leading
    return _F32 * (block + config.num_layers * (3 * n * d + h * read * n))


# --------------------------------------------------------------------------------------------
# Plans.
# --------------------------------------------------------------------------------------------


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


class BudgetGrownWarning(UserWarning):
    """The default memory budget was too small for one image and grew to the least that fits."""


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
    execution: Execution,
    *,
    num_images: int,
    num_slots: int,
    spawn_layers: tuple[int, ...],
    with_taylor: bool,
    need_streams: bool,
    fixed_bytes: int = 0,
    step_tokens: int | None | str = "auto",
    replacement: str | None = None,
    replaced_heads: int = 0,
) -> BatchPlan:
    """Largest batches and slot groups whose estimated per-device working set fits the budget of
    ``execution`` (over its devices, at most its ``batch_size`` images a batch); a
    :class:`MemoryBudgetError` naming the least budget that fits when one image does not.

    ``fixed_bytes`` (the parameters) and, with streams, the
    :func:`~jaxvit_interp.importance.kernels.fold_mlp_inputs` matrices are taken off the budget
    first (:func:`usable_bytes`).  ``replacement``
    (:attr:`~jaxvit_interp.importance.ablation_kinds.Ablation.replacement`) says where the
    table of ``replaced_heads`` ablated head outputs (:func:`replacement_bytes`) goes: ``"shared"``
    (mean) is one table every device holds, taken off the budget with the fixed costs;
    ``"per_image"`` (resample) costs one table per image for the whole of the batch's work.  All spawn slots of a layer in one group is preferred (the most
    work per program launch); slots are split only when a single image per device would not fit
    otherwise.  With ``step_tokens`` ("auto": :func:`default_step_tokens`) streams pass through
    each block in steps of about that many tokens, and a batch holds at most that many tokens'
    worth of images per device.
    """
    if step_tokens == "auto":
        step_tokens = default_step_tokens()
    total_budget = execution.budget_bytes()
    n = config.num_tokens
    step_images = None if step_tokens is None else max(1, step_tokens // n)
    budget = usable_bytes(total_budget, fixed_bytes)
    if need_streams and num_slots:
        budget -= folded_bytes(config, spawn_layers)
    if step_images is not None and need_streams and num_slots:
        budget -= step_images * _stream_work_bytes(config)
    table = replacement_bytes(config, replaced_heads) if replacement else 0
    if replacement == "shared":
        budget -= table
    held = table if replacement == "per_image" else 0  # an image's table, the whole batch long

    def per_image(k: int) -> int:
        stepped = step_images is not None
        sweep = sweep_bytes(config, spawn_layers, k, need_streams, stepped) if num_slots else 0
        return max(full_pass_bytes(config, with_taylor), sweep) + held

    def most_slots(budget: int) -> int:
        slots = num_slots
        while slots > 1 and per_image(slots) > budget:
            slots = -(-slots // 2)
        return slots

    slots = most_slots(budget)
    if per_image(slots) > budget:
        fixed = int(0.9 * total_budget) - budget  # costs that do not depend on the budget
        least = _least_budget(fixed, per_image(slots))
        is_default = execution.memory_budget_bytes is None
        spare = spare_host_bytes() if is_default else 0
        if least > spare:
            _refuse_budget(config, total_budget, is_default, fixed, per_image(slots), spare)
        _warn_grown(config, total_budget, least, spare)
        total_budget = least
        budget = int(0.9 * least) - fixed
        slots = most_slots(budget)
    slot_size, slot_count = _even_split(num_slots, slots) if num_slots else (0, 0)
    per_device = max(1, budget // per_image(slot_size or 1))
    if step_images is not None:
        per_device = min(per_device, step_images)
    devices = execution.num_devices
    most_images = per_device * devices
    if execution.batch_size is not None:
        most_images = min(most_images, execution.batch_size)
    image_size, image_count = _even_split(num_images, most_images, devices)
    local = image_size // devices
    group = None if step_images is None else max(1, step_images // local)
    estimate = (int(0.9 * total_budget) - budget) + per_image(slot_size or 1) * local
    return BatchPlan(image_size, image_count, slot_size, slot_count, group, int(estimate))


def _least_budget(fixed: int, per_image: int) -> int:
    """The least budget in whole MiB (as ``--memory-budget-mb`` takes it) that leaves
    ``per_image`` bytes after ``fixed`` and the tenth held back."""
    least = -(-10 * (fixed + per_image) // 9)
    while usable_bytes(least, fixed) < per_image:  # the tenth held back, as int() rounds it
        least += 1
    return -(-least // 2**20) * 2**20


def _warn_grown(config: ViTConfig, total: int, least: int, spare: int) -> None:
    warnings.warn(
        f"the default memory budget of {total / 2**20:,.0f} MiB per device is too small for one "
        f"image of this model ({config.num_tokens:,} tokens); using {least // 2**20:,} MiB, "
        f"the least that fits (this machine can spare about {spare / 2**20:,.0f} MiB); "
        "--memory-budget-mb (memory_budget_bytes in Python) sets it",
        BudgetGrownWarning,
        stacklevel=3,
    )


def _refuse_budget(
    config: ViTConfig, total: int, is_default: bool, fixed: int, per_image: int, spare: int
) -> None:
    """Raise :class:`MemoryBudgetError` for a budget of ``total`` bytes whose fixed costs take
    ``fixed`` where one image needs ``per_image`` more: naming the model's tokens per image, the
    least budget that fits (the fixed costs do not depend on the budget) and, for the default
    budget, what this machine could spare."""
    least = _least_budget(fixed, per_image)
    mib = least // 2**20
    given = "the default memory budget" if is_default else "the memory budget"
    height, width = config.image_size
    spare_note = (
        f"; this machine can spare only about {spare / 2**20:,.0f} MiB (half its free "
        "memory), so a smaller image size or a machine with more memory is needed"
        if is_default
        else ""
    )
    raise MemoryBudgetError(
        f"{given} of {total:,} bytes ({total / 2**20:,.1f} MiB) per device is too small for one "
        f"image of this model ({config.num_tokens:,} tokens at {height}x{width} px): the "
        f"parameters, one step through a block and any shared table take {fixed:,} bytes and "
        f"one image with one "
        f"ablation at a time needs about {per_image:,} more (a tenth of the budget is held "
        f"back)\na budget of {mib:,} MiB fits: --memory-budget-mb {mib} on the command line, "
        f"memory_budget_bytes={mib * 2**20} in Python{spare_note}",
        mib * 2**20,
    )


def pass_images(
    config: ViTConfig,
    execution: Execution,
    *,
    num_images: int,
    fixed_bytes: int = 0,
    most: int = DEFAULT_PASS_IMAGES,
    image_bytes: int | None = None,
) -> int:
    """Images per attention-reading forward pass over the devices of ``execution``.

    As many as fit each device's budget by :func:`usable_bytes` (``fixed_bytes``: the
    parameters every device holds) at ``image_bytes`` an image (None:
    :func:`attention_pass_bytes`), at least one per device, at most ``most`` and at most
    ``num_images`` rounded up to whole devices.
    """
    devices = execution.num_devices
    budget = usable_bytes(execution.budget_bytes(), fixed_bytes)
    if image_bytes is None:
        image_bytes = attention_pass_bytes(config)
    per_device = max(1, budget // image_bytes)
    images = min(per_device * devices, most, num_images)
    return max(devices, -(-images // devices) * devices)
