"""What takes an ablated head's place in a mean or resample ablation, and how it reaches each batch.

The replacement ``r`` of a head is data, not part of the hashable
:class:`~jaxvit_interp.importance.ablation_kinds.Ablation`, so a new reference set compiles
nothing new.  It is a table of what every spawn slot of the engine ablates, taken from clean
(unpruned) forward passes of the reference images
(:func:`~jaxvit_interp.importance.kernels.clean_slot_mixed`), ``[batch or 1, spawn_layer, slot,
token, head_dim]``; for the set engine the slots are every head of every layer, ``[..., layer,
head, token, head_dim]``:

- ``mean``: the table averaged over the reference images, computed before the engine's batches
  run (one clean pass per reference image, a batch at a time: only the running sum is kept),
  then placed once on every device with a leading axis of 1, so it broadcasts over each batch;
- ``resample``: the table of the batch's own reference images, computed on the devices from
  them right where the batch's work starts; the reference images are cut, padded and sharded
  over the mesh with the images (:func:`~jaxvit_interp.importance.driver.drive`), so
  ``reference[i]`` sits on the device of image ``i`` and no reference's table outlives its
  batch.

The memory planner counts the table (:func:`~jaxvit_interp.budget.replacement_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxvit_interp.importance.ablation_kinds import Ablation
from jaxvit_interp.importance.kernels import clean_slot_mixed
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.parallel import Batch, Batcher

Array = jax.Array

# A batch's replacement table from its reference images (None where there are none).
Replace = Callable[[Array | None], Array | None]


def mean_over_images(table: Callable[[Array], Array], images, batcher: Batcher) -> np.ndarray:
    """``table``'s mean over ``images``, ``[1, ...]`` float32: a batch at a time, summed in
    float64 on the host with the padding left out, so no more than one batch's tables are
    held."""
    total = None

    def store(batch: Batch, host: np.ndarray) -> None:
        nonlocal total
        part = host.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part

    batcher.run(lambda pixels: [(store, table(pixels))], images)
    return (total / len(images)).astype(np.float32)[None]


def replacements(
    config: ViTConfig,
    params: Any,
    ablation: Ablation,
    reference,
    *,
    batcher: Batcher,
    spawn_layers: tuple[int, ...],
    slot_heads: Array,
    slot_modes: Array | None = None,
    keep_table: Array | None = None,
) -> Replace:
    """How each batch of an engine run gets its replacement table.

    Args:
      params, slot_heads, slot_modes, keep_table: placed by ``batcher`` (``replicate``); the
        slots as :func:`~jaxvit_interp.importance.kernels.clean_slot_mixed` takes them, padded
        as the engine pads them.
      reference: the checked reference images
        (:func:`~jaxvit_interp.importance.validate.check_reference`), None for zero.

    Returns:
      ``replace(reference_batch)``: None for zero; for mean the shared table ``[1,
      spawn_layer, slot, token, head_dim]`` (computed here, before any batch); for resample
      the table of the batch's reference images ``[batch, ...]``.
    """
    if ablation.replacement is None or not spawn_layers:
        return lambda _: None

    def table(pixels):
        return clean_slot_mixed(
            config, params, pixels, spawn_layers, slot_heads, slot_modes, keep_table
        )

    if ablation.replacement == "per_image":
        return table
    shared = batcher.replicate(mean_over_images(table, reference, batcher))
    return lambda _: shared
