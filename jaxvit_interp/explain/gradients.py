"""Gradient explanations of the label logit over the patch grid, a batch of images per call.

Every kernel takes a batch of images ``[batch, height, width, channels]`` and their labels
``[batch]`` and gives maps ``[batch, Gh, Gw]``. The gradient of each image's label logit comes
from one backward pass over the batch: the per-image logits are summed, and since images do not
interact in the model, the gradient of the sum with respect to one image's input (or per-image
attention keep factors) is that image's own gradient.

- :func:`grad_rollout_batch` (Chefer et al. 2021, "Generic Attention-model Explainability"):
  ``R = I``; for each layer in order ``R = R + mean_h max(0, dy/dA_l * A_l) @ R``; the map is the
  row of the token the classifier reads (CLS, or the mean of the patch rows without CLS, as
  attention rollout reads it) over the patch columns. ``dy/dA * A`` is the gradient with respect
  to attention keep factors at 1 (:class:`~jaxvit_interp.model.edits.AttentionEdit` multiplies
  the probabilities by them), one ``[layer, head, N, N]`` keep per image.
- :func:`gradcam_batch`: Grad-CAM on the patch tokens entering the last block (the stream
  leaving the one before it): ``w_c = mean over patches of dy/dt[p, c]``, the map
  ``max(0, sum_c w_c t[p, c])`` per patch ``p``.
- :func:`integrated_gradients_batch` (Sundararajan et al. 2017): per pixel
  ``(x - x0) * mean_k dy/dx(x0 + a_k (x - x0))`` at the midpoints ``a_k = (k + 1/2) / m`` of
  ``m`` equal steps, summed over each patch's pixels and channels.

``y`` is always the label's logit (before the softmax).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxvit_interp.explain.baselines import baseline_images
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import AttentionEdit
from jaxvit_interp.model.vit import forward
from jaxvit_interp.rollout.kernels import rollout_maps

Array = jax.Array

__all__ = [
    "grad_rollout_batch",
    "gradcam_batch",
    "integrated_gradients_batch",
    "at_labels",
    "patch_sums",
    "relevance_rollout",
]


def at_labels(per_class: Array, labels: Array) -> Array:
    """Each row's value at its label: ``[batch, class]``, ``[batch]`` -> ``[batch]``."""
    return jnp.take_along_axis(per_class, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def relevance_rollout(weighted: Array) -> Array:
    """Chefer et al.'s relevance ``R`` ``[..., N, N]`` from ``dy/dA * A`` ``[..., layer, head,
    N, N]``: ``R = I``, then for each layer in order ``R = R + Abar_l @ R`` with ``Abar_l`` the
    mean over heads of the positive part (negative evidence is dropped before heads mix)."""
    mixed = jnp.mean(jnp.maximum(weighted, 0.0), axis=-3)  # [..., layer, N, N]
    n = mixed.shape[-1]

    def one_layer(relevance, layer_mixed):
        step = jnp.matmul(layer_mixed, relevance, precision=jax.lax.Precision.HIGHEST)
        return relevance + step, None

    layers_first = jnp.moveaxis(mixed, -3, 0)  # [layer, ..., N, N]
    eye = jnp.broadcast_to(jnp.eye(n, dtype=mixed.dtype), layers_first.shape[1:])
    relevance, _ = jax.lax.scan(one_layer, eye, layers_first)
    return relevance


def patch_sums(config: ViTConfig, per_pixel: Array) -> Array:
    """``[batch, height, width, channels]`` -> ``[batch, Gh, Gw]``: summed over each patch's
    pixels and channels (pixels past the last whole patch, which the embedding drops, are left
    out)."""
    (gh, gw), (ph, pw) = config.grid, config.patch_size
    inside = per_pixel[:, : gh * ph, : gw * pw]
    return inside.reshape(len(per_pixel), gh, ph, gw, pw, -1).sum(axis=(2, 4, 5))


@functools.partial(jax.jit, static_argnames=("config",))
def grad_rollout_batch(config: ViTConfig, params, images: Array, labels: Array) -> Array:
    """Chefer et al.'s gradient-weighted attention rollout maps ``[batch, Gh, Gw]``."""
    shape = (config.num_layers, config.num_heads, config.num_tokens, config.num_tokens)
    keeps = jnp.ones((len(images), *shape), jnp.float32)
    every_head = jnp.ones(shape[:2], jnp.float32)

    def image_logits(image, keep):
        edit = AttentionEdit(heads=every_head, keep=keep)
        return forward(config, params, image[None], attention_edit=edit).logits[0]

    def summed_label_logits(keeps):
        logits = jax.vmap(image_logits)(images.astype(jnp.float32), keeps)
        return jnp.sum(at_labels(logits, labels))

    # d y / d keep at keep = 1 is (d y / d A) * A: A's entries are multiplied by keep.
    weighted = jax.grad(summed_label_logits)(keeps)
    relevance = relevance_rollout(weighted)
    return rollout_maps(relevance, config.grid, config.num_prefix_tokens, config.has_cls_token)


@functools.partial(jax.jit, static_argnames=("config",))
def gradcam_batch(config: ViTConfig, params, images: Array, labels: Array) -> Array:
    """Grad-CAM maps ``[batch, Gh, Gw]`` on the patch tokens entering the last block.

    Not the stream leaving the last block: with a CLS readout its patch tokens never reach the
    logits, so their gradient is zero. The tokens are the raw residual stream; pytorch-grad-cam's
    ViT example hooks the last block's first LayerNorm, the same tokens normalised.
    """
    last = config.num_layers - 1
    tokens = forward(config, params, images.astype(jnp.float32)).residual[:, last]

    def summed_label_logits(tokens):
        logits = forward(config, params, tokens, start_layer=last).logits
        return jnp.sum(at_labels(logits, labels))

    grads = jax.grad(summed_label_logits)(tokens)
    first = config.num_prefix_tokens
    weights = jnp.mean(grads[:, first:], axis=1)  # [batch, hidden]
    cam = jnp.einsum("bpd,bd->bp", tokens[:, first:], weights, precision="highest")
    return jnp.maximum(cam, 0.0).reshape(len(images), *config.grid)


@functools.partial(jax.jit, static_argnames=("config", "steps", "baseline"))
def integrated_gradients_batch(
    config: ViTConfig,
    params,
    images: Array,
    labels: Array,
    baselines: Array | None = None,
    *,
    steps: int,
    baseline: str = "zero",
) -> tuple[Array, Array]:
    """Integrated-gradients maps ``[batch, Gh, Gw]`` and each image's completeness gap
    ``[batch]``: the attributions' sum minus ``y(x) - y(x0)``, what the ``steps``-point Riemann
    sum misses of the path integral (0 in the limit).

    The path starts at ``baselines`` ``[batch, height, width, channels]``, or where None at the
    ``baseline`` kind of each image (:func:`~jaxvit_interp.explain.baselines.baseline_images`).

    One forward and backward pass of the whole batch per step, the steps in sequence: memory is
    that of one step, whatever ``steps`` is.
    """
    images = images.astype(jnp.float32)
    if baselines is None:
        baselines = baseline_images(config, baseline, images)
    baselines = baselines.astype(jnp.float32)

    def summed_label_logits(x):
        return jnp.sum(at_labels(forward(config, params, x).logits, labels))

    gradient = jax.grad(summed_label_logits)
    path = images - baselines

    def one_step(total, fraction):
        return total + gradient(baselines + fraction * path), None

    fractions = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
    summed, _ = jax.lax.scan(one_step, jnp.zeros_like(images), fractions)
    attribution = path * summed / steps
    ends = forward(config, params, jnp.concatenate([images, baselines])).logits
    end_logits = at_labels(ends, jnp.concatenate([labels, labels]))
    change = end_logits[: len(images)] - end_logits[len(images) :]
    gap = jnp.sum(attribution, axis=(1, 2, 3)) - change
    return patch_sums(config, attribution), gap
