"""``run_model``: the documented entry point for one forward pass."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import AttentionEdit
from jaxvit_interp.model.vit import ModelOutput, VisionTransformer

if TYPE_CHECKING:
    from jaxvit_interp.execution import Execution


@functools.partial(jax.jit, static_argnames=("config",))
def _forward(config: ViTConfig, params, images, head_mask, attention_edit):
    return VisionTransformer(config).apply(
        {"params": params}, images, head_mask=head_mask, attention_edit=attention_edit
    )


def run_model(
    config: ViTConfig,
    params: Any,
    images,
    *,
    head_mask=None,
    attention_edit: AttentionEdit | None = None,
) -> ModelOutput:
    """Run the ViT on preprocessed images and return logits, every head's attention and more.

    Args:
      config: the model's :class:`ViTConfig`.
      params: its parameter tree (as returned by :func:`jaxvit_interp.load_checkpoint`).
      images: ``[batch, height, width, channels]`` already preprocessed (see ``config.preprocessing``).
      head_mask: optional ``[layer, head]`` factors on each head's output before the output
        projection; 0 prunes the head.
      attention_edit: optional :class:`AttentionEdit` zeroing chosen attention entries of chosen
        heads without renormalising.

    Returns:
      :class:`ModelOutput` with ``.logits`` ``[batch, classes]`` and ``.attention``
      ``[batch, layer, head, token, token]`` (the special tokens first: CLS, distillation,
      registers; then patches row-major), plus ``.block_outputs``, ``.residual``,
      ``.pre_logits`` (the pooled vector) and ``.pool_attention`` (attention pooling only).
    """
    images = jnp.asarray(images, jnp.float32)
    expected = (*config.image_size, config.channels)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise InputError(
            f"images have shape {tuple(images.shape)}; this model takes [batch, {expected[0]}, "
            f"{expected[1]}, {expected[2]}]"
        )
    if head_mask is not None:
        head_mask = jnp.asarray(head_mask, jnp.float32)
        if head_mask.shape != (config.num_layers, config.num_heads):
            raise InputError(
                f"head_mask has shape {tuple(head_mask.shape)}; expected "
                f"[{config.num_layers}, {config.num_heads}] (layers, heads)"
            )
    return _forward(config, params, images, head_mask, attention_edit)


@functools.partial(jax.jit, static_argnames=("config",))
def _attention_float16(config: ViTConfig, params, images):
    out = VisionTransformer(config).apply({"params": params}, images.astype(jnp.float32))
    return out.attention.astype(jnp.float16)


def attention_over_images(
    config: ViTConfig, params: Any, images, *, execution: Execution | None = None
) -> np.ndarray:
    """Every head's attention on every image, ``[image, layer, head, N, N]`` float16 on the host.

    float16 keeps 11 significant bits (an absolute error below 2.5e-4 near 1, finer near 0),
    which is what a picture of an attention matrix needs at half the bytes. ``execution``:
    images per pass, the devices that share them and the progress report
    (:class:`~jaxvit_interp.execution.Execution`; None: the defaults).
    """
    from jaxvit_interp.execution import as_execution

    execution = as_execution(execution)
    batcher = execution.pass_batcher(config, params, len(images))
    params = batcher.replicate(params)
    return batcher.map(
        lambda x: _attention_float16(config, params, x),
        images,
        progress=execution.progress,
        desc="attention",
    )
