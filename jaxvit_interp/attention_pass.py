"""One forward pass per batch of images for every analysis that reads the model's attention.

An analysis that reads attention (hop strength, special-token mass, patterns, rollout, the
attention kept for the site, and whatever comes next) declares a *reducer*: a pure function of
one batch's :class:`~jaxvit_interp.model.vit.ModelOutput` that reduces it, inside the compiled
program, to a few arrays per image. The pass runs the model once per batch with every reducer
asked for, so the ``[batch, layer, head, N, N]`` attention lives only inside that program and
``k`` reducers cost one forward pass, not ``k``. The ablation engine's unpruned pass takes the
same reducers (:func:`~jaxvit_interp.importance.kernels.full_pass`), so a chunk of ``analyze``
runs the model over its images once per batch for everything.

A reducer is a hashable value (a frozen dataclass: it is a static argument of the compiled
program, so two equal reducers share one compilation) with

- ``name``: its outputs come back under this key;
- ``__call__(config, out) -> {key: [batch, ...]}``: the reduction, pure and traceable;
- ``finish(outputs, start) -> outputs``: optional, on the host, of one batch's fetched outputs
  (padding dropped; ``start`` the index of its first image among all images): it checks them,
  raising :class:`~jaxvit_interp.errors.InputError` for what the analysis cannot take
  (attention rows that are not distributions: non-finite pixels or weights), and gives what is
  kept of them (a compact encoding, or the rows of a subset of the images), so that no more than
  one batch's full outputs are ever held. Fields that only ``finish`` reads (which images to
  keep) are left out of the reducer's equality (``dataclasses.field(compare=False)``), so they
  do not cost a compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput, VisionTransformer

Array = jax.Array

__all__ = ["Reducer", "finish_outputs", "reduce_output", "reduce_over_images", "run_pass"]


class Reducer(Protocol):
    """One analysis's reduction of a batch's forward pass (see the module docstring)."""

    name: str

    def __call__(self, config: ViTConfig, out: ModelOutput) -> dict[str, Array]: ...


def reduce_output(
    config: ViTConfig, out: ModelOutput, reducers: Sequence[Reducer]
) -> dict[str, dict[str, Array]]:
    """Every reducer's outputs of one batch, ``{reducer name: {key: [batch, ...]}}`` (traced)."""
    names = [r.name for r in reducers]
    if len(set(names)) != len(names):
        raise ValueError(f"reducers must have distinct names, got {names}")
    return {r.name: r(config, out) for r in reducers}


def finish_outputs(
    reducers: Sequence[Reducer], outputs: dict[str, dict[str, np.ndarray]], start: int
) -> dict[str, dict[str, np.ndarray]]:
    """Each reducer's host step (``finish``) on one batch's fetched ``outputs`` (images from
    ``start``): what is kept of the batch."""
    kept = dict(outputs)
    for r in reducers:
        finish = getattr(r, "finish", None)
        if finish is not None:
            kept[r.name] = finish(outputs[r.name], start)
    return kept


@functools.partial(jax.jit, static_argnames=("config", "reducers"))
def _pass_batch(config: ViTConfig, params, images, reducers: tuple[Reducer, ...]):
    # Outputs no reducer reads (logits, the residual stream) are pruned by XLA.
    out = VisionTransformer(config).apply({"params": params}, images.astype(jnp.float32))
    return reduce_output(config, out, reducers)


def run_pass(
    config: ViTConfig,
    params: Any,
    images,
    reducers: Sequence[Reducer],
    *,
    batcher,
    progress=False,
    desc: str = "attention pass",
) -> dict[str, dict[str, np.ndarray]]:
    """Run the model over ``images`` once per batch and reduce each batch with ``reducers``.

    Args:
      config, params: the model (``params`` already placed by ``batcher.replicate``).
      images: ``[image, height, width, channels]`` preprocessed, any sliceable array.
      reducers: what to compute (see the module docstring); their names must differ.
      batcher: the :class:`~jaxvit_interp.parallel.Batcher` that cuts, pads, shards and gathers.
      progress: a :mod:`jaxvit_interp.progress` argument.

    Returns:
      ``{reducer name: {key: [image, ...] NumPy}}``.
    """
    reducers = tuple(reducers)

    return batcher.map(
        lambda x: _pass_batch(config, params, x, reducers),
        images,
        finish=lambda outputs, batch: finish_outputs(reducers, outputs, batch.start),
        progress=progress,
        desc=desc,
    )


def reduce_over_images(
    config: ViTConfig, params: Any, images, reducer: Reducer, execution=None, *, desc: str
) -> dict[str, np.ndarray]:
    """``reducer``'s outputs over ``images`` from a pass of its own, batched as ``execution``
    (:class:`~jaxvit_interp.execution.Execution`; None: the defaults) says: what each public
    ``*_over_images`` function is, over the same reducer the chunk's shared pass carries."""
    from jaxvit_interp.execution import as_execution

    execution = as_execution(execution)
    batcher = execution.pass_batcher(config, params, len(images))
    outputs = run_pass(
        config,
        batcher.replicate(params),
        images,
        (reducer,),
        batcher=batcher,
        progress=execution.progress,
        desc=desc,
    )
    return outputs[reducer.name]
