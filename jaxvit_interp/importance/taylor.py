"""The ``taylor`` metric (Michel et al. 2019): ``|dLoss/dm_lh|`` at head mask ``m = 1``, every head.

Each image gets its own ``[layer, head]`` head mask by running the model under ``vmap`` over
(image, mask); the summed loss then has per-image gradients with respect to the ``[batch, layer,
head]`` masks, so one backward pass yields every head of every image.  The forward half of that
pass is the ordinary model run, returned as well so the ablation engine can reuse it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvit_interp.importance.metrics import cross_entropy
from jaxvit_interp.importance.validate import check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput, VisionTransformer

Array = jax.Array


def forward_with_head_masks(
    config: ViTConfig, params, images: Array, head_masks: Array
) -> ModelOutput:
    """The model with a head mask per image.

    images ``[batch, height, width, channels]``, head_masks ``[batch, layer, head]``.
    """
    model = VisionTransformer(config)

    def one(image, head_mask):
        out = model.apply({"params": params}, image[None], head_mask=head_mask)
        return jax.tree_util.tree_map(lambda a: a[0], out)

    return jax.vmap(one)(images, head_masks)


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
    check_unpruned(config, "taylor_importance")
    masks = jnp.ones((images.shape[0], config.num_layers, config.num_heads), jnp.float32)

    def loss(masks):
        out = forward_with_head_masks(config, params, images, masks)
        # argmax has no gradient, so predicted targets act as constants in the loss.
        y = jnp.argmax(out.logits, axis=-1) if targets is None else targets
        return jnp.sum(jax.vmap(cross_entropy)(out.logits, y)), (out, y)

    grads, (out, y) = jax.grad(loss, has_aux=True)(masks)
    return jnp.abs(grads), out, y
