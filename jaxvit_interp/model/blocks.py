"""The ViT forward pass as pure functions of parameter structs, shared by the model and the engine.

:class:`~jaxvit_interp.model.vit.VisionTransformer` declares the parameter tree and runs
:func:`~jaxvit_interp.model.vit.forward`, which is built from these pieces; the ablation engine
(:mod:`~jaxvit_interp.importance.engine`) builds its exact shortcuts from the same pieces.
Parameters arrive as structs (:class:`BlockParams`, :class:`EmbeddingParams`,
:class:`ReadoutParams`), which :func:`~jaxvit_interp.model.vit.block_params` and its siblings read
from the tree; nothing here knows the tree's names.

The pieces, in the order a forward pass runs them:

- :func:`embed`: patch embedding (a strided convolution), CLS token, position embeddings.
- :func:`block`: one encoder block, ``x + attention(LN_1 x)`` then :func:`mlp_half`.  Inside it
  :func:`layer_norm`, :func:`attention` (query/key/value projections with :func:`linear`,
  :func:`attend` with head masks, attention edits and the fast path without probabilities, the
  output projection), and :func:`mlp_half` (:func:`layer_norm`, :func:`mlp`: :func:`linear`,
  :func:`mlp_activation`, :func:`linear`).
- :func:`readout`: final norm, :func:`pool`, pre-logits and head.

Where architecture variants plug in (each one place here, besides declaring and reading the new
parameters in :mod:`~jaxvit_interp.model.vit`):

- Layer scale (``ls1``, ``ls2`` per block): a per-channel factor right after the output projection
  and after the MLP's second product, so :func:`~jaxvit_interp.model.vit.block_params` folds
  ``ls1`` into ``out`` (kernel and bias) and ``ls2`` into ``mlp_out``; every piece, and every
  engine shortcut that reads ``out`` or the MLP, then sees ordinary projections.
- SwiGLU MLP: :func:`mlp_activation` splits the first product into gate and value halves
  (``silu(gate) * value``), with the two input kernels read side by side into one ``mlp_in``;
  the engine's folding of a pruned head into the first MLP product then covers both halves.
- quick_gelu (``x * sigmoid(1.702 x)``): :func:`mlp_activation`.
- Extra tokens after CLS (distillation, registers): :func:`embed`, from a new
  :class:`EmbeddingParams` field, with ``ViTConfig.num_tokens`` counting them.  Pooling and the
  engine's CLS-only last block read token 0 only.
- A norm before the encoder (CLIP's ``ln_pre``): the end of :func:`embed`.
- Mean pooling with ``fc_norm``: :func:`readout` (``fc_norm`` after pooling instead of the final
  norm before it) and :func:`pool` (the mean of the patch tokens); :func:`pools_cls_only` then
  says False, so the engine runs the last block for every token.
- A MAP attention-pooling head: :func:`readout`, in place of :func:`pool` (a learned probe
  attending over the tokens with :func:`attend`, then :func:`mlp`), with its parameters in
  :class:`ReadoutParams` and :func:`pools_cls_only` False.

Axis names used in shapes: ``batch head query key token hidden head_dim mlp``.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from jaxvit_interp.model.config import ViTConfig

Array = jax.Array


@flax.struct.dataclass
class LinearParams:
    """A linear map: ``kernel`` ``[*in, *out]``, ``bias`` ``[*out]`` or None."""

    kernel: Array
    bias: Array | None


@flax.struct.dataclass
class LayerNormParams:
    """``scale`` and ``bias``, both ``[hidden]``."""

    scale: Array
    bias: Array


@flax.struct.dataclass
class BlockParams:
    """One encoder block.

    Attributes:
      ln1: the norm before attention.
      query, key, value: ``[hidden, head, head_dim]`` kernels, ``[head, head_dim]`` biases (None
        without ``qkv_bias``).
      out: the output projection, ``[head, head_dim, hidden]`` and ``[hidden]``.
      ln2: the norm before the MLP.
      mlp_in: ``[hidden, mlp]`` and ``[mlp]``.
      mlp_out: ``[mlp, hidden]`` and ``[hidden]``.
    """

    ln1: LayerNormParams
    query: LinearParams
    key: LinearParams
    value: LinearParams
    out: LinearParams
    ln2: LayerNormParams
    mlp_in: LinearParams
    mlp_out: LinearParams


@flax.struct.dataclass
class EmbeddingParams:
    """What turns images into the tokens entering block 0.

    Attributes:
      patches: ``[patch_height, patch_width, channels, hidden]`` convolution kernel, ``[hidden]``.
      cls: ``[1, 1, hidden]`` class token, or None without one.
      positions: ``[1, token, hidden]`` position embeddings.
    """

    patches: LinearParams
    cls: Array | None
    positions: Array


@flax.struct.dataclass
class ReadoutParams:
    """What turns the last block's tokens into logits.

    Attributes:
      norm: the final norm.
      pre_logits: ``[hidden, representation]`` tanh layer, or None without one.
      head: ``[hidden or representation, class]`` classifier.
    """

    norm: LayerNormParams
    pre_logits: LinearParams | None
    head: LinearParams


def linear(p: LinearParams, x: Array, in_axes: int = 1) -> Array:
    """``x`` ``[..., *in]`` -> ``[..., *out]``, contracting the last ``in_axes`` axes of ``x``."""
    contract = (tuple(range(x.ndim - in_axes, x.ndim)), tuple(range(in_axes)))
    y = lax.dot_general(x, p.kernel, (contract, ((), ())))
    return y if p.bias is None else y + p.bias


def layer_norm(config: ViTConfig, p: LayerNormParams, x: Array) -> Array:
    """Normalise each token over ``hidden``. x ``[..., hidden]`` -> same.

    Both moments come from one pass over ``x`` (``E[x^2] - E[x]^2``, clipped at 0), as in Flax's
    LayerNorm, so the published checkpoints see the numerics they were trained with.  The steps
    follow Flax's order too, so that gradients (the ``taylor`` metric) round the same way.
    """
    mean, mean_sq = (jnp.mean(a, axis=-1) for a in (x, lax.square(x)))
    var = jnp.maximum(0.0, mean_sq - lax.square(mean))
    mean, var = jnp.expand_dims(mean, -1), jnp.expand_dims(var, -1)
    return (x - mean) * (lax.rsqrt(var + config.layer_norm_eps) * p.scale) + p.bias


def score_scale(head_dim: int, dtype) -> Array:
    """The divisor of query-key products, ``sqrt(head_dim)``."""
    return jnp.sqrt(head_dim).astype(dtype)


def attend(
    q: Array, k: Array, v: Array, keep: Array | None = None, with_probs: bool = True
) -> tuple[Array, Array | None]:
    """Scaled dot-product attention per head.

    Args:
      q: ``[batch, head, query, head_dim]``.
      k, v: ``[batch, head, key, head_dim]``.
      keep: ``[head, query, key]`` factors on the softmax probabilities (no renormalising), or
        None.
      with_probs: False returns None for the probabilities, and runs a little faster, when
        ``keep`` is None.

    Returns:
      ``(mixed values [batch, head, query, head_dim], probs [batch, head, query, key] or None)``.
    """
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / score_scale(q.shape[-1], q.dtype)
    if with_probs or keep is not None:
        probs = jax.nn.softmax(scores, axis=-1)
        if keep is not None:
            probs = probs * keep
        return jnp.einsum("bhqk,bhkd->bhqd", probs, v), probs
    # Normalise after mixing the values: one pass over [query, head_dim] instead of [query, key].
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    mixed = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
    return mixed / jnp.sum(weights, axis=-1)[..., None], None


def attention(
    p: BlockParams,
    y: Array,
    head_mask: Array | None = None,
    keep: Array | None = None,
    with_probs: bool = True,
) -> tuple[Array, Array | None]:
    """Multi-head self-attention of normalised tokens, through the output projection.

    Args:
      y: ``[batch, token, hidden]``, the output of ``ln1``.
      head_mask: ``[head]`` factors on each head's mixed values before the output projection (0
        prunes the head), or None for all ones.
      keep, with_probs: as in :func:`attend`.

    Returns:
      ``(out [batch, token, hidden], probs [batch, head, query, key] or None)``.
    """
    # Heads lead ([batch, head, token, head_dim]) so that both attention products are plain
    # batched matrix products: with the head axis between tokens and features, XLA's CPU backend
    # runs them as a slow loop.
    q, k, v = (jnp.swapaxes(linear(w, y), 1, 2) for w in (p.query, p.key, p.value))
    mixed, probs = attend(q, k, v, keep, with_probs)
    if head_mask is not None:
        mixed = mixed * head_mask[:, None, None]
    return linear(p.out, jnp.swapaxes(mixed, 1, 2), in_axes=2), probs


def gelu(x: Array, approximate: bool) -> Array:
    """GELU: the tanh approximation, or the exact form ``x/2 (1 + erf(x / sqrt 2))``.

    The exact form is written with ``erf`` as PyTorch does; ``jax.nn.gelu`` uses ``erfc``, which
    is more accurate only where GELU is below 1e-6 in magnitude and slower on a CPU.
    """
    if approximate:
        return jax.nn.gelu(x, approximate=True)
    return 0.5 * x * (1.0 + lax.erf(x * jnp.asarray(0.5**0.5, x.dtype)))


def mlp_activation(config: ViTConfig, pre: Array) -> Array:
    """The MLP's nonlinearity, applied to its first product. pre ``[..., mlp]`` -> same."""
    return gelu(pre, config.gelu_approximate)


def mlp_tail(config: ViTConfig, p: BlockParams, pre: Array) -> Array:
    """The MLP from its first product on: ``[..., mlp] -> [..., hidden]``."""
    return linear(p.mlp_out, mlp_activation(config, pre))


def mlp(config: ViTConfig, p: BlockParams, y: Array) -> Array:
    """The block's MLP: ``[..., hidden] -> [..., hidden]``."""
    return mlp_tail(config, p, linear(p.mlp_in, y))


def mlp_half(config: ViTConfig, p: BlockParams, x: Array) -> Array:
    """Second half of a block: ``x + MLP(LN_2(x))``. x ``[..., token, hidden]`` -> same."""
    return x + mlp(config, p, layer_norm(config, p.ln2, x))


def block(
    config: ViTConfig,
    p: BlockParams,
    x: Array,
    head_mask: Array | None = None,
    keep: Array | None = None,
    with_probs: bool = True,
) -> tuple[Array, Array, Array | None]:
    """One encoder block.

    Args:
      x: ``[batch, token, hidden]``, the residual stream entering the block.
      head_mask, keep, with_probs: as in :func:`attention`.

    Returns:
      ``(stream leaving the block [batch, token, hidden], attention output [batch, token,
      hidden] (before the residual add), probs [batch, head, query, key] or None)``.
    """
    out, probs = attention(p, layer_norm(config, p.ln1, x), head_mask, keep, with_probs)
    return mlp_half(config, p, x + out), out, probs


def embed(config: ViTConfig, p: EmbeddingParams, images: Array) -> Array:
    """Images ``[batch, height, width, channels]`` -> tokens entering block 0 ``[batch, token,
    hidden]``: CLS (when present) first, then patches row-major, position embeddings added."""
    x = lax.conv_general_dilated(
        images,
        p.patches.kernel,
        config.patch_size,
        "VALID",
        lhs_dilation=(1, 1),
        rhs_dilation=(1, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x = x + p.patches.bias
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    if p.cls is not None:
        x = jnp.concatenate([jnp.broadcast_to(p.cls, (b, 1, d)).astype(x.dtype), x], axis=1)
    return x + p.positions


def pools_cls_only(config: ViTConfig) -> bool:
    """Whether :func:`pool` reads the CLS token alone, so no other token of the last block's
    output reaches the logits."""
    return config.has_cls_token


def pool(config: ViTConfig, x: Array) -> Array:
    """The one vector the classifier reads: ``[batch, token, hidden] -> [batch, hidden]``."""
    return x[:, 0] if pools_cls_only(config) else x.mean(axis=1)


def readout(config: ViTConfig, p: ReadoutParams, x: Array) -> tuple[Array, Array]:
    """Final norm, pooling, pre-logits and head.

    x ``[batch, token, hidden]`` -> ``(logits [batch, class], pre_logits [batch, hidden or
    representation])``, ``pre_logits`` being the vector the head reads.
    """
    z = pool(config, layer_norm(config, p.norm, x))
    if p.pre_logits is not None:
        z = jnp.tanh(linear(p.pre_logits, z))
    return linear(p.head, z), z
