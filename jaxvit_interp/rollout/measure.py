"""Rollout maps of many images, streamed from the model batch by batch."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import VisionTransformer
from jaxvit_interp.parallel import Batcher
from jaxvit_interp.rollout.kernels import RESIDUAL_WEIGHT, attention_rollout, rollout_maps


@functools.partial(jax.jit, static_argnames=("config", "residual_weight"))
def _rollout_batch(config: ViTConfig, params, images, residual_weight: float):
    attention = VisionTransformer(config).apply({"params": params}, images.astype(jnp.float32))
    rollout = attention_rollout(attention.attention, residual_weight=residual_weight)
    return rollout_maps(rollout, config.grid, config.num_tokens - config.num_patches)


def model_rollout_over_images(
    config: ViTConfig,
    params: Any,
    images,
    *,
    batch_size: int = 16,
    mesh: jax.sharding.Mesh | None = None,
    residual_weight: float = RESIDUAL_WEIGHT,
    progress: bool = False,
) -> np.ndarray:
    """Rollout maps ``[image, layer, Gh, Gw]`` float32 of preprocessed ``images``.

    Only the maps leave each batch: the ``[layer, N, N]`` rollout lives inside one compiled
    program per batch. ``batch_size`` images per pass over the devices of ``mesh``.
    """
    batcher = Batcher(batch_size, mesh)
    params = batcher.replicate(params)
    maps = batcher.map(
        lambda x: _rollout_batch(config, params, x, residual_weight),
        images,
        progress=progress,
        desc="rollout",
    )
    return maps.astype(np.float32)
