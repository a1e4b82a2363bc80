"""The ``taylor`` metric (Michel et al. 2019): ``|dLoss/dm_lh|`` at gates ``m = 1``, every head.

Each image gets its own ``[layer, head]`` gates by running the model under ``vmap`` over
(image, gates); the summed loss then has per-image gradients with respect to the ``[batch, layer,
head]`` gates, so one backward pass yields every head of every image.  The forward half of that
pass is the ordinary model run, returned as well so the ablation engine can reuse it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvit_interp.importance.metrics import cross_entropy
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput, VisionTransformer

Array = jax.Array


def forward_with_gates(config: ViTConfig, params, images: Array, gates: Array) -> ModelOutput:
    """The model with per-image head gates.

    images ``[batch, height, width, channels]``, gates ``[batch, layer, head]``.
    """
    model = VisionTransformer(config)

    def one(image, gate):
        out = model.apply({"params": params}, image[None], head_mask=gate)
        return jax.tree_util.tree_map(lambda a: a[0], out)

    return jax.vmap(one)(images, gates)


def taylor_importance(
    config: ViTConfig, params, images: Array, targets: Array | None = None
) -> tuple[Array, ModelOutput, Array]:
    """``|d CE(p, y) / d m_lh|`` per image and head, from one forward and one backward pass.

    Args:
      images: ``[batch, height, width, channels]``.
      targets: ``[batch]`` class ``y`` per image, or None for the unpruned prediction.

    Returns:
      ``(taylor [batch, layer, head], the unpruned ModelOutput, targets [batch])``.
    """
    gates = jnp.ones((images.shape[0], config.num_layers, config.num_heads), jnp.float32)

    def loss(gates):
        out = forward_with_gates(config, params, images, gates)
        # argmax has no gradient, so predicted targets act as constants in the loss.
        y = jnp.argmax(out.logits, axis=-1) if targets is None else targets
        return jnp.sum(jax.vmap(cross_entropy)(out.logits, y)), (out, y)

    grads, (out, y) = jax.grad(loss, has_aux=True)(gates)
    return jnp.abs(grads), out, y
