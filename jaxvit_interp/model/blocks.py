"""The ViT forward pass as pure functions of parameter structs, shared by the model and the engine.

:class:`~jaxvit_interp.model.vit.VisionTransformer` declares the parameter tree and runs
:func:`~jaxvit_interp.model.vit.forward`, which is built from these pieces; the ablation engines'
kernels (:mod:`~jaxvit_interp.importance.kernels`) build their exact shortcuts from the same pieces.
Parameters arrive as structs (:class:`BlockParams`, :class:`EmbeddingParams`,
:class:`ReadoutParams`), which :func:`~jaxvit_interp.model.vit.block_params` and its siblings read
from the tree; nothing here knows the tree's names.

The pieces, in the order a forward pass runs them:

- :func:`embed`: patch embedding (a strided convolution), the special tokens (CLS, distillation,
  registers, each from :class:`EmbeddingParams` when present), position embeddings (a learned
  table or :func:`sincos_2d`, see :func:`position_table`), and CLIP's pre-norm.
- :func:`block`: one encoder block, ``x + attention(LN_1 x)`` then :func:`mlp_half`.  Inside it
  :func:`layer_norm`, :func:`attention` (query/key/value projections with :func:`linear`,
  :func:`attend` with head masks, attention edits and the fast path without probabilities, the
  output projection), and :func:`mlp_half` (:func:`layer_norm`, :func:`mlp`: :func:`linear`,
  :func:`mlp_activation`, :func:`linear`).
- :func:`readout`: final norm, pooling (:func:`map_head` for attention pooling), pre-logits or
  output projection, and the classifier head(s).

How the architecture variants are written, each in one place:

- Layer scale (a per-channel factor right after the attention output projection and after the
  MLP's second product): :func:`~jaxvit_interp.model.vit.block_params` folds it into ``out``
  (kernel and bias) and ``mlp_out``, so every piece, and every engine shortcut that reads
  ``out`` or the MLP, sees ordinary projections.
- SwiGLU: :func:`mlp_activation` splits the first product into gate and value halves
  (``silu(gate) * value``), the two input kernels stored side by side as one ``mlp_in``; the
  engine's folding of a pruned head into the first MLP product then covers both halves.
- quick_gelu (``x * sigmoid(1.702 x)``): :func:`mlp_activation`.
- Special tokens and CLIP's ``ln_pre``: :func:`embed`.
- CLS, distillation-token, mean or attention pooling, ``fc_norm``, projection and the second
  (distillation) head: :func:`readout`.  :func:`readout_tokens` says which leading tokens alone
  reach the logits, so the engine runs the last block for those queries only.

Axis names used in shapes: ``batch head query key token hidden head_dim mlp``.
"""

from __future__ import annotations

from collections.abc import Callable

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
      patches: ``[patch_height, patch_width, channels, hidden]`` convolution kernel, ``[hidden]``
        bias or None.
      cls: ``[1, 1, hidden]`` class token, or None without one.
      distillation: ``[1, 1, hidden]`` distillation token, or None.
      registers: ``[1, register, hidden]`` register tokens, or None.
      positions: ``[1, row, hidden]`` learned position table (``config.num_position_prefix_rows``
        rows for special tokens, then one per patch), or None for sin-cos positions.
      pre_norm: the norm on the tokens entering block 0, or None.
    """

    patches: LinearParams
    cls: Array | None
    positions: Array | None
    distillation: Array | None = None
    registers: Array | None = None
    pre_norm: LayerNormParams | None = None


@flax.struct.dataclass
class MapHeadParams:
    """big_vision's attention-pooling head: a probe query attending over the tokens, then an MLP.

    Attributes:
      probe: ``[1, 1, hidden]`` the learned query token.
      query, key, value, out: as in :class:`BlockParams`.
      ln: the norm before the MLP.
      mlp_in, mlp_out: the MLP, as in :class:`BlockParams`.
    """

    probe: Array
    query: LinearParams
    key: LinearParams
    value: LinearParams
    out: LinearParams
    ln: LayerNormParams
    mlp_in: LinearParams
    mlp_out: LinearParams


@flax.struct.dataclass
class ReadoutParams:
    """What turns the last block's tokens into logits.

    Attributes:
      norm: the final norm (on every token, or on the pooled vector with ``config.fc_norm``).
      map_head: the attention-pooling head (``classifier="map"``), or None.
      pre_logits: ``[hidden, representation]`` tanh layer, or None without one.
      projection: ``[hidden, projection]`` output projection without bias, or None.
      head: ``[pooled, class]`` classifier, or None for a backbone.
      head_dist: ``[hidden, class]`` the distillation token's classifier, or None.
    """

    norm: LayerNormParams
    pre_logits: LinearParams | None
    head: LinearParams | None
    map_head: MapHeadParams | None = None
    projection: LinearParams | None = None
    head_dist: LinearParams | None = None


def linear(p: LinearParams, x: Array, in_axes: int = 1) -> Array:
    """``x`` ``[..., *in]`` -> ``[..., *out]``, contracting the last ``in_axes`` axes of ``x``."""
    contract = (tuple(range(x.ndim - in_axes, x.ndim)), tuple(range(in_axes)))
    y = lax.dot_general(x, p.kernel, (contract, ((), ())))
    return y if p.bias is None else y + p.bias


def layer_norm_moments(config: ViTConfig, x: Array) -> tuple[Array, Array]:
    """What :func:`layer_norm` takes from each token: ``(mean [..., 1], 1 / sqrt(var + eps)
    [..., 1])`` of x ``[..., hidden]``.

    Both moments come from one pass over ``x`` (``E[x^2] - E[x]^2``, clipped at 0), as in Flax's
    LayerNorm, so the published checkpoints see the numerics they were trained with.
    """
    mean, mean_sq = (jnp.mean(a, axis=-1) for a in (x, lax.square(x)))
    var = jnp.maximum(0.0, mean_sq - lax.square(mean))
    mean, var = jnp.expand_dims(mean, -1), jnp.expand_dims(var, -1)
    return mean, lax.rsqrt(var + config.layer_norm_eps)


def layer_norm(config: ViTConfig, p: LayerNormParams, x: Array) -> Array:
    """Normalise each token over ``hidden``. x ``[..., hidden]`` -> same.

    The moments are :func:`layer_norm_moments`; the steps follow Flax's order, so that
    gradients (the ``taylor`` metric) round the same way.
    """
    mean, inverse_std = layer_norm_moments(config, x)
    return (x - mean) * (inverse_std * p.scale) + p.bias


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
    ablate: Callable[[Array, Array], Array] | None = None,
) -> tuple[Array, Array | None]:
    """Multi-head self-attention of normalised tokens, through the output projection.

    Args:
      y: ``[batch, token, hidden]``, the output of ``ln1``.
      head_mask: ``[head]`` factors on each head's mixed values before the output projection (0
        prunes the head), or None for all ones.
      keep, with_probs: as in :func:`attend`.
      ablate: how the mask applies, ``ablate(mixed [batch, head, token, head_dim], mask [head,
        1, 1]) -> mixed`` (the set engine's ablation kind,
        :meth:`~jaxvit_interp.importance.ablation_kinds.Ablation.masked`); None multiplies.

    Returns:
      ``(out [batch, token, hidden], probs [batch, head, query, key] or None)``.
    """
    # Heads lead ([batch, head, token, head_dim]) so that both attention products are plain
    # batched matrix products: with the head axis between tokens and features, XLA's CPU backend
    # runs them as a slow loop.
    q, k, v = (jnp.swapaxes(linear(w, y), 1, 2) for w in (p.query, p.key, p.value))
    mixed, probs = attend(q, k, v, keep, with_probs)
    if head_mask is not None:
        mask = head_mask[:, None, None]
        mixed = mixed * mask if ablate is None else ablate(mixed, mask)
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
    """The MLP's nonlinearity, applied to its first product. pre ``[..., mlp_in]`` -> ``[...,
    mlp]`` (SwiGLU halves the width: gate first, then value)."""
    if config.mlp_activation == "swiglu":
        gate, value = jnp.split(pre, 2, axis=-1)
        return jax.nn.silu(gate) * value
    if config.mlp_activation == "quick_gelu":
        return pre * jax.nn.sigmoid(jnp.asarray(1.702, pre.dtype) * pre)
    return gelu(pre, config.gelu_approximate)


def mlp_tail(config: ViTConfig, p: BlockParams | MapHeadParams, pre: Array) -> Array:
    """The MLP from its first product on: ``[..., mlp_in] -> [..., hidden]``."""
    return linear(p.mlp_out, mlp_activation(config, pre))


def mlp(config: ViTConfig, p: BlockParams | MapHeadParams, y: Array) -> Array:
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
    ablate: Callable[[Array, Array], Array] | None = None,
) -> tuple[Array, Array, Array | None]:
    """One encoder block.

    Args:
      x: ``[batch, token, hidden]``, the residual stream entering the block.
      head_mask, keep, with_probs, ablate: as in :func:`attention`.

    Returns:
      ``(stream leaving the block [batch, token, hidden], attention output [batch, token,
      hidden] (before the residual add), probs [batch, head, query, key] or None)``.
    """
    out, probs = attention(p, layer_norm(config, p.ln1, x), head_mask, keep, with_probs, ablate)
    return mlp_half(config, p, x + out), out, probs


def sincos_2d(grid: tuple[int, int], width: int) -> Array:
    """big_vision's fixed 2-D sin-cos table ``[1, Gh*Gw, width]``, patches row-major.

    Each quarter of the channels holds ``sin x, cos x, sin y, cos y`` (column, then row) at the
    frequencies ``10000 ** -(i / (width/4 - 1))``, as ``posemb_sincos_2d`` computes them.
    """
    y, x = jnp.mgrid[: grid[0], : grid[1]]
    quarter = width // 4
    omega = 1.0 / (10_000.0 ** (jnp.arange(quarter) / (quarter - 1)))
    y = jnp.einsum("m,d->md", y.flatten(), omega)
    x = jnp.einsum("m,d->md", x.flatten(), omega)
    table = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
    return table[None].astype(jnp.float32)


def position_table(config: ViTConfig, positions: Array | None, grid: tuple[int, int]) -> Array:
    """Position embeddings of every token, ``[1, token, hidden]``: the learned table's rows, or
    sin-cos for the patches, with zero rows for the special tokens that have none."""
    covered = 0 if positions is None else config.num_position_prefix_rows
    if positions is None:
        positions = sincos_2d(grid, config.hidden_size)
    missing = config.num_prefix_tokens - covered
    if not missing:
        return positions
    zeros = jnp.zeros((1, missing, positions.shape[-1]), positions.dtype)
    return jnp.concatenate([positions[:, :covered], zeros, positions[:, covered:]], axis=1)


def embed(config: ViTConfig, p: EmbeddingParams, images: Array) -> Array:
    """Images ``[batch, height, width, channels]`` -> tokens entering block 0 ``[batch, token,
    hidden]``: the special tokens (CLS, distillation, registers, when present) first, then patches
    row-major, position embeddings added, then the pre-norm when there is one."""
    x = lax.conv_general_dilated(
        images,
        p.patches.kernel,
        config.patch_size,
        "VALID",
        lhs_dilation=(1, 1),
        rhs_dilation=(1, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if p.patches.bias is not None:
        x = x + p.patches.bias
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    special = [t for t in (p.cls, p.distillation, p.registers) if t is not None]
    if special:
        special = [jnp.broadcast_to(t, (b, *t.shape[1:])).astype(x.dtype) for t in special]
        x = jnp.concatenate([*special, x], axis=1)
    x = x + position_table(config, p.positions, (gh, gw))
    if p.pre_norm is not None:
        x = layer_norm(config, p.pre_norm, x)
    return x


def readout_tokens(config: ViTConfig) -> int | None:
    """How many leading tokens of the last block's output alone reach the logits (1: CLS; 2: CLS
    and the distillation token), or None when the readout reads the patch tokens."""
    if config.classifier != "token":
        return None
    return 2 if config.distillation_head else 1


def map_head(config: ViTConfig, p: MapHeadParams, x: Array) -> tuple[Array, Array]:
    """Attention pooling: x ``[batch, token, hidden]`` -> ``(pooled [batch, hidden], probs
    [batch, head, 1, token])``.

    The probe's attention output has no residual around it; the MLP has one, as in big_vision's
    ``MAPHead``, timm's ``AttentionPoolLatent`` and Hugging Face's SigLIP head.
    """
    b = x.shape[0]
    q = jnp.swapaxes(linear(p.query, p.probe), 1, 2)  # [1, head, 1, head_dim]
    q = jnp.broadcast_to(q, (b, *q.shape[1:])).astype(x.dtype)
    k, v = (jnp.swapaxes(linear(w, x), 1, 2) for w in (p.key, p.value))
    mixed, probs = attend(q, k, v)
    out = linear(p.out, jnp.swapaxes(mixed, 1, 2), in_axes=2)  # [batch, 1, hidden]
    out = out + mlp(config, p, layer_norm(config, p.ln, out))
    return out[:, 0], probs


def readout(config: ViTConfig, p: ReadoutParams, x: Array) -> tuple[Array, Array, Array | None]:
    """Final norm, pooling, pre-logits or projection, and the head(s).

    x ``[batch, token, hidden]`` -> ``(logits [batch, class], pooled [batch, pooled],
    pool_probs [batch, head, 1, patch] or None)``: ``pooled`` is the vector the head reads (for a
    distilled model with two heads, the mean of the CLS and distillation tokens, as timm gives
    it), ``pool_probs`` the attention-pooling head's attention over the patch tokens.
    """
    c = config
    if not c.fc_norm:
        x = layer_norm(c, p.norm, x)
    pool_probs = None
    patches = x[:, c.num_prefix_tokens :]
    if c.classifier == "token":
        z = x[:, 0]
    elif c.classifier == "gap":
        z = patches.mean(axis=1)
    else:
        z, pool_probs = map_head(c, p.map_head, patches)
    if c.fc_norm:
        z = layer_norm(c, p.norm, z)
    if p.pre_logits is not None:
        z = jnp.tanh(linear(p.pre_logits, z))
    if p.projection is not None:
        z = linear(p.projection, z)
    if p.head is None:
        return jnp.zeros((*z.shape[:-1], 0), z.dtype), z, pool_probs
    logits = linear(p.head, z)
    if p.head_dist is not None:
        distilled = x[:, 1]
        logits = (logits + linear(p.head_dist, distilled)) / 2
        z = (z + distilled) / 2
    return logits, z, pool_probs
