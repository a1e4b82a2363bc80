"""Rollout maps of many images, streamed from the model batch by batch."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance.validate import check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import VisionTransformer
from jaxvit_interp.rollout.kernels import (
    RESIDUAL_WEIGHT,
    attention_rollout,
    layer_contributions,
    read_rows,
    rollout_maps,
)
from jaxvit_interp.summary import Summarized, listed, number, sizes


def _rollout(config: ViTConfig, params, images, residual_weight: float):
    attention = VisionTransformer(config).apply({"params": params}, images.astype(jnp.float32))
    return attention_rollout(attention.attention, residual_weight=residual_weight)


@functools.partial(jax.jit, static_argnames=("config", "residual_weight"))
def _rollout_batch(config: ViTConfig, params, images, residual_weight: float):
    rollout = _rollout(config, params, images, residual_weight)
    return rollout_maps(rollout, config.grid, config.num_prefix_tokens, config.has_cls_token)


@functools.partial(jax.jit, static_argnames=("config", "residual_weight"))
def _final_batch(config: ViTConfig, params, images, residual_weight: float):
    rows = read_rows(
        _rollout(config, params, images, residual_weight),
        config.num_prefix_tokens,
        config.has_cls_token,
    )  # [image, layer, N]
    first = config.num_prefix_tokens
    grid = rows[:, -1, first:].reshape(len(rows), *config.grid)
    return grid, layer_contributions(rows, first, config.has_cls_token)


class FinalRollout(NamedTuple):
    """The rollout after the last layer of each image, and what each layer added to it.

    Attributes:
      map: ``[image, Gh, Gw]`` the read row (CLS, or the mean of the patch rows without CLS)
        over the patches, after the last layer.
      contribution: ``[image, layer]`` the share of the read row each layer's attention moves
        (:func:`~jaxvit_interp.rollout.kernels.layer_contributions`).
    """

    map: np.ndarray
    contribution: np.ndarray

    # A NamedTuple takes no other base class: Summarized's methods, named here.
    _rows = Summarized._rows
    __repr__ = Summarized.__repr__
    _repr_html_ = Summarized._repr_html_

    def _summary(self):
        images, height, width = self.map.shape
        mean = self.contribution.mean(axis=0)
        rows = [
            ("map", f"{height}x{width} patches, the read row after the last layer"),
            ("contribution", "mean by layer: " + listed(number(v) for v in mean)),
        ]
        return sizes(images=images, layers=len(mean)), rows


def model_rollout_over_images(
    config: ViTConfig,
    params: Any,
    images,
    *,
    residual_weight: float = RESIDUAL_WEIGHT,
    execution: Execution | None = None,
) -> np.ndarray:
    """Rollout maps ``[image, layer, Gh, Gw]`` float32 of preprocessed ``images``.

    Only the maps leave each batch: the ``[layer, N, N]`` rollout lives inside one compiled
    program per batch. ``execution``: images per pass, the devices that share them and the
    progress report (:class:`~jaxvit_interp.execution.Execution`; None: the defaults).
    """
    check_unpruned(config, "model_rollout_over_images")
    execution = as_execution(execution)
    batcher = execution.pass_batcher(config, params, len(images))
    params = batcher.replicate(params)
    maps = batcher.map(
        lambda x: _rollout_batch(config, params, x, residual_weight),
        images,
        progress=execution.progress,
        desc="rollout",
    )
    return maps.astype(np.float32)


def final_rollout_over_images(
    config: ViTConfig,
    params: Any,
    images,
    *,
    residual_weight: float = RESIDUAL_WEIGHT,
    execution: Execution | None = None,
) -> FinalRollout:
    """The final rollout map and the per-layer contributions of preprocessed ``images``, float32.

    One model pass per batch, as :func:`model_rollout_over_images` (``execution`` too); only
    ``[Gh, Gw]`` and ``[layer]`` values leave it for each image.
    """
    check_unpruned(config, "final_rollout_over_images")
    execution = as_execution(execution)
    batcher = execution.pass_batcher(config, params, len(images))
    params = batcher.replicate(params)
    maps, contributions = batcher.map(
        lambda x: _final_batch(config, params, x, residual_weight),
        images,
        progress=execution.progress,
        desc="rollout",
    )
    return FinalRollout(maps.astype(np.float32), contributions.astype(np.float32))
