"""Accuracy as heads are pruned one after another in a given order.

Pruning the least important heads first should keep accuracy up for longer than a random order if
the importance ranking means something.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.importance import validate
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import VisionTransformer


@functools.partial(jax.jit, static_argnames="config")
def _correct(config: ViTConfig, params, images, labels, head_mask):
    """Number of correct top-1 predictions; only logits are kept, so attention is never stored."""
    logits = VisionTransformer(config).apply({"params": params}, images, head_mask=head_mask).logits
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def cumulative_pruning_accuracy(
    config: ViTConfig,
    params: Any,
    images,
    labels,
    order,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Top-1 accuracy after pruning the first ``k`` heads of ``order``, for ``k = 0 .. len(order)``.

    Args:
      images: ``[image, height, width, channels]``; labels ``[image]`` int.
      order: ``[k, 2]`` ``(layer, head)`` pairs, pruned in this order (e.g. least important first).
      batch_size: images per forward pass.

    Returns:
      ``[len(order) + 1]`` accuracies; entry 0 is the unpruned model's.
    """
    validate.check_unpruned(config, "cumulative_pruning_accuracy")
    images = validate.check_images(config, images)
    labels = validate.check_labels(config, labels, images.shape[0])
    if labels is None:
        raise InputError("cumulative_pruning_accuracy needs labels")
    order = validate.check_heads(config, [tuple(x) for x in np.asarray(order).reshape(-1, 2)])
    mask = np.ones((config.num_layers, config.num_heads), np.float32)
    accuracy = []
    for k in range(len(order) + 1):
        if k:
            mask[order[k - 1]] = 0.0
        correct = sum(
            int(
                _correct(
                    config, params, images[s : s + batch_size], labels[s : s + batch_size], mask
                )
            )
            for s in range(0, images.shape[0], batch_size)
        )
        accuracy.append(correct / images.shape[0])
    return np.asarray(accuracy)
