"""``run_model``: the documented entry point for one forward pass."""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class AttentionReducer:
    """Every head's attention of a batch as float16, as a reducer of the attention pass
    (:mod:`jaxvit_interp.attention_pass`): ``attention [batch, layer, head, N, N]``.

    float16 keeps 11 significant bits (an absolute error below 2.5e-4 near 1, finer near 0),
    which is what a picture of an attention matrix needs at half the bytes.
    """

    name: str = "attention"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        return {"attention": out.attention.astype(jnp.float16)}


@dataclasses.dataclass(frozen=True)
class KeptAttentionReducer:
    """The attention of the images ``keep`` (indices among the pass's images), encoded as a
    results bundle keeps it (:func:`~jaxvit_interp.attention_codes.encode_attention`) a batch
    at a time on the host: ``{codes, steps, exponents, special, error, relative_error}`` of
    those images only, so a batch's float attention is never held longer than its encoding.

    Attributes:
      num_special: the model's special tokens (``config.num_prefix_tokens``), whose columns
        the code keeps apart.
      keep: sorted image indices; read only on the host, so they take no part in the reducer's
        equality (one compiled program serves every subset).
    """

    num_special: int
    keep: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int), compare=False)
    name: str = "attention"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        return AttentionReducer()(config, out)

    def finish(self, outputs: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        from jaxvit_interp.attention_codes import encode_attention

        attention = outputs["attention"]
        rows = _local(self.keep, start, start + len(attention))
        return encode_attention(attention[rows], self.num_special)


def _local(indices: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The members of ``indices`` inside ``[start, stop)``, counted from ``start``."""
    indices = np.asarray(indices)
    return indices[(indices >= start) & (indices < stop)] - start


def attention_over_images(
    config: ViTConfig, params: Any, images, *, execution: Execution | None = None
) -> np.ndarray:
    """Every head's attention on every image, ``[image, layer, head, N, N]`` float16 on the host.

    float16 keeps 11 significant bits (an absolute error below 2.5e-4 near 1, finer near 0),
    which is what a picture of an attention matrix needs at half the bytes. ``execution``:
    images per pass, the devices that share them and the progress report
    (:class:`~jaxvit_interp.execution.Execution`; None: the defaults).
    """
    from jaxvit_interp.attention_pass import reduce_over_images

    reducer = AttentionReducer()
    outputs = reduce_over_images(config, params, images, reducer, execution, desc="attention")
    return outputs["attention"]
