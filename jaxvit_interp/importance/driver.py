"""The one batch driver of the ablation engines, for single heads and head sets alike.

Each batch of images gets the unpruned pass (:func:`~jaxvit_interp.importance.kernels.full_pass`,
with the ``taylor`` metric when asked), then the engine's own work on it; the loop itself
(sharding, padding, progress, placing the next batch while one computes, fetching results) is
:meth:`~jaxvit_interp.parallel.Batcher.run`.  The engines only say what a batch's work is:
:func:`~jaxvit_interp.importance.engine.run_engine` its spawn-slot groups,
:func:`~jaxvit_interp.importance.set_engine.run_sets` its chunks of streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxvit_interp.importance.kernels import full_pass
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput
from jaxvit_interp.parallel import Batch, Batcher
from jaxvit_interp.progress import ProgressArg

# A batch's work, given its unpruned pass, targets and reference images (None without):
# parts ``(store, device outputs)`` as :meth:`~jaxvit_interp.parallel.Batcher.run` takes them.
Work = Callable[
    [ModelOutput, jax.Array, jax.Array | None], list[tuple[Callable[[Batch, Any], None], Any]]
]


@dataclasses.dataclass
class Unpruned:
    """Host arrays of the unpruned pass over all images.

    Attributes:
      logits: ``[image, class]`` unpruned logits.
      targets: ``[image]`` the class ``y`` the metrics refer to (the labels, else the
        predictions).
      taylor: ``[image, layer, head]`` or None.
    """

    logits: np.ndarray
    targets: np.ndarray
    taylor: np.ndarray | None


def drive(
    config: ViTConfig,
    params: Any,
    images,
    labels: np.ndarray | None,
    *,
    batcher: Batcher,
    work: Work,
    reference=None,
    with_taylor: bool = False,
    progress: ProgressArg = True,
    desc: str,
) -> Unpruned:
    """The unpruned pass and ``work`` on every batch of ``images`` (``params`` already placed by
    ``batcher``); ``work``'s parts are stored as they come back, and the unpruned pass's
    outputs are returned.

    ``reference``: images ``[image, ...]`` paired one to one with ``images`` (a resample
    ablation's), cut, padded and sharded over the devices with them, each batch's handed to
    ``work``; None hands it None.
    """
    num_images = images.shape[0]
    out = Unpruned(
        logits=np.zeros((num_images, config.num_classes), np.float32),
        targets=np.zeros((num_images,), np.int32),
        taylor=np.zeros((num_images, config.num_layers, config.num_heads), np.float32)
        if with_taylor
        else None,
    )

    def store(batch: Batch, host) -> None:
        logits, targets, taylor = host
        out.logits[batch.rows] = logits
        out.targets[batch.rows] = targets
        if taylor is not None:
            out.taylor[batch.rows] = taylor

    def one_batch(pixels, targets, paired):
        full, y, taylor = full_pass(config, params, pixels, targets, with_taylor)
        # Only what is fetched stays referenced: the rest of the pass is freed once the
        # batch's work has read it.
        return [(store, (full.logits, y, taylor)), *work(full, y, paired)]

    batcher.run(one_batch, images, labels, reference, progress=progress, desc=desc)
    return out
