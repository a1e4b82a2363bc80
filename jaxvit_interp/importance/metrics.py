"""Per-example head-importance kernels, written for one image, lifted with ``vmap``.

``p`` is the unpruned model's softmax output, ``p'`` the pruned one's, ``y`` the target class (the
label, or the unpruned prediction when there are no labels), ``z`` the vector the classifier head
reads (``pre_logits``), ``O_l`` the output of the pruned head's own attention block on all tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Guards a cosine or a ratio against an all-zero vector (never hit by a trained model).
_TINY = 1e-30


def probability(logits_pruned: Array, target: Array) -> Array:
    """``prob = p'_y``. logits_pruned ``[classes]``, target ``[]`` -> ``[]``."""
    return jax.nn.softmax(logits_pruned)[target]


def kl_divergence(logits: Array, logits_pruned: Array) -> Array:
    """``kl = KL(p || p') = sum_c p_c (log p_c - log p'_c)`` in nats. ``[classes]`` x2 -> ``[]``."""
    log_p = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(logits_pruned)))


def representation_change(z: Array, z_pruned: Array) -> Array:
    """``repr = 1 - cos(z, z')``. ``[hidden]`` x2 -> ``[]``."""
    norms = jnp.maximum(jnp.linalg.norm(z) * jnp.linalg.norm(z_pruned), _TINY)
    return 1.0 - jnp.dot(z, z_pruned) / norms


def prediction_flip(prediction: Array, logits_pruned: Array) -> Array:
    """``flip``: True where the pruned model's top-1 class differs from the unpruned one's."""
    return jnp.argmax(logits_pruned) != prediction


def layer_change(block_output: Array, delta: Array) -> Array:
    """``layer = ||O_l - O'_l|| / ||O_l||`` (Frobenius norm over all tokens).

    Takes ``delta = O_l - O'_l`` rather than ``O'_l``.

    block_output and delta ``[token, hidden]``. Pruning head ``h`` changes its own block's output
    only through that head's term of the output projection, so ``delta`` is exactly that term.
    """
    return jnp.linalg.norm(delta) / jnp.maximum(jnp.linalg.norm(block_output), _TINY)


def ablation_metrics(
    logits: Array, z: Array, target: Array, logits_pruned: Array, z_pruned: Array
) -> dict[str, Array]:
    """Every output-side metric of one pruned run of one image.

    Args:
      logits, z: the unpruned model's ``[classes]`` logits and ``[hidden]`` pre-logits.
      target: ``[]`` class ``y``.
      logits_pruned, z_pruned: the same after pruning one head.

    Returns:
      ``prob``, ``prob_drop``, ``kl``, ``repr`` (float32 ``[]``) and ``flip`` (bool ``[]``).
    """
    prob_pruned = probability(logits_pruned, target)
    return {
        "prob": prob_pruned,
        "prob_drop": jax.nn.softmax(logits)[target] - prob_pruned,
        "kl": kl_divergence(logits, logits_pruned),
        "repr": representation_change(z, z_pruned),
        "flip": prediction_flip(jnp.argmax(logits), logits_pruned),
    }


def backbone_metrics(
    logits: Array, z: Array, target: Array, logits_pruned: Array, z_pruned: Array
) -> dict[str, Array]:
    """:func:`ablation_metrics` of a backbone without classes: ``repr`` alone."""
    del logits, target, logits_pruned
    return {"repr": representation_change(z, z_pruned)}


def cross_entropy(logits: Array, target: Array) -> Array:
    """``-log p_y``, the loss whose head-mask gradient is ``taylor``. ``[classes]`` -> ``[]``."""
    return -jax.nn.log_softmax(logits)[target]
