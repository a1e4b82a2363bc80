"""Flax ViT whose parameter names follow the published ``vit_jax`` checkpoints.

Parameter tree (``L`` blocks)::

    embedding/{kernel,bias}            patch embedding, a strided convolution
    cls                                [1, 1, D] class token (classifier="token" only)
    Transformer/posembed_input/pos_embedding   [1, N, D]
    Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
                                 LayerNorm_2, MlpBlock_3/{Dense_0,Dense_1}
    Transformer/encoder_norm
    pre_logits/{kernel,bias}           only when representation_size is set
    head/{kernel,bias}

Two inputs let analyses reach inside the model without a second pass:

- ``head_mask`` ``[L, H]`` scales each head's output before the output projection (0 prunes it).
- ``attention_edit`` (:class:`~jaxvit_interp.model.edits.AttentionEdit`) multiplies chosen entries of
  chosen heads' attention probabilities, without renormalising (the paper's partial pruning).

Axis names used in shapes: ``batch layer head query key token hidden``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import AttentionEdit

Array = jax.Array


@flax.struct.dataclass
class ModelOutput:
    """Everything one forward pass exposes; leading axis ``batch``.

    Layer axes cover the layers that ran: all of them, or ``start_layer .. L-1``.

    Attributes:
      logits: ``[batch, classes]``.
      attention: ``[batch, layer, head, query, key]`` softmax probabilities after any edit,
        tokens ordered CLS first (when present) then patches row-major.
      block_outputs: ``[batch, layer, token, hidden]`` output of each attention block (after the
        output projection, before the residual add): ``O_l`` of the layer-impact metric.
      residual: ``[batch, layer, token, hidden]`` the residual stream entering each block.
      pre_logits: ``[batch, hidden or representation]`` the vector the classifier head reads.
    """

    logits: Array
    attention: Array
    block_outputs: Array
    residual: Array
    pre_logits: Array


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention that reports its probabilities and takes head gates and entry edits."""

    num_heads: int
    qkv_bias: bool = True
    # False: return None for the probabilities (and run a little faster) when no edit needs them.
    with_probs: bool = True

    @nn.compact
    def __call__(self, x, head_gate, keep):
        """x ``[batch, token, hidden]``; head_gate ``[head]``; keep ``[head, query, key]`` or None."""
        hidden = x.shape[-1]
        head_dim = hidden // self.num_heads
        dense = lambda name, bias: nn.DenseGeneral(  # noqa: E731
            (self.num_heads, head_dim), use_bias=bias, name=name
        )
        # Heads lead ([batch, head, token, head_dim]) so that both attention products are plain
        # batched matrix products: with the head axis between tokens and features, XLA's CPU
        # backend runs them as a slow loop.
        q = jnp.swapaxes(dense("query", self.qkv_bias)(x), 1, 2)
        k = jnp.swapaxes(dense("key", self.qkv_bias)(x), 1, 2)
        v = jnp.swapaxes(dense("value", self.qkv_bias)(x), 1, 2)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(head_dim).astype(x.dtype)
        if self.with_probs or keep is not None:
            probs = jax.nn.softmax(scores, axis=-1)
            if keep is not None:
                probs = probs * keep
            heads = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
        else:
            # Normalise after mixing the values: one pass over [query, head_dim] instead of
            # [query, key].
            weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
            heads = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
            heads = heads / jnp.sum(weights, axis=-1)[..., None]
            probs = None
        heads = jnp.swapaxes(heads * head_gate[:, None, None], 1, 2)  # [batch, token, head, d]
        out = nn.DenseGeneral(hidden, axis=(-2, -1), name="out")(heads)
        return out, probs


def gelu(x: Array, approximate: bool) -> Array:
    """GELU: the tanh approximation, or the exact form ``x/2 (1 + erf(x / sqrt 2))``.

    The exact form is written with ``erf`` as PyTorch does; ``jax.nn.gelu`` uses ``erfc``, which
    is more accurate only where GELU is below 1e-6 in magnitude and slower on a CPU.
    """
    if approximate:
        return nn.gelu(x, approximate=True)
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.5**0.5, x.dtype)))


class MlpBlock(nn.Module):
    mlp_dim: int
    gelu_approximate: bool = True

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.mlp_dim, name="Dense_0")(x)
        y = gelu(y, approximate=self.gelu_approximate)
        return nn.Dense(x.shape[-1], name="Dense_1")(y)


class Encoder1DBlock(nn.Module):
    config: ViTConfig
    with_probs: bool = True  # see MultiHeadDotProductAttention

    @nn.compact
    def __call__(self, x, head_gate, keep):
        c = self.config
        y = nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm_0")(x)
        attn_out, probs = MultiHeadDotProductAttention(
            c.num_heads, c.qkv_bias, self.with_probs, name="MultiHeadDotProductAttention_1"
        )(y, head_gate, keep)
        x = x + attn_out
        y = nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm_2")(x)
        y = MlpBlock(c.mlp_dim, c.gelu_approximate, name="MlpBlock_3")(y)
        return x + y, attn_out, probs


class AddPositionEmbs(nn.Module):
    @nn.compact
    def __call__(self, x):
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:])
        return x + pe


class Encoder(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x, head_mask, attention_edit: AttentionEdit | None, start_layer: int = 0):
        c = self.config
        if start_layer == 0:
            x = AddPositionEmbs(name="posembed_input")(x)
        residuals, block_outputs, attentions = [], [], []
        for layer in range(start_layer, c.num_layers):
            keep = None if attention_edit is None else attention_edit.keep_for_layer(layer)
            residuals.append(x)
            x, attn_out, probs = Encoder1DBlock(c, name=f"encoderblock_{layer}")(
                x, head_mask[layer], keep
            )
            block_outputs.append(attn_out)
            attentions.append(probs)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="encoder_norm")(x)
        stack = lambda xs: jnp.stack(xs, axis=1)  # noqa: E731  [batch, layer, ...]
        return x, stack(residuals), stack(block_outputs), stack(attentions)


class VisionTransformer(nn.Module):
    """ViT classifier. Call with images ``[batch, height, width, channels]``.

    With ``start_layer > 0`` the input is instead the residual stream ``[batch, token, hidden]``
    entering block ``start_layer`` (as returned in :attr:`ModelOutput.residual`), so an analysis
    that changes only layers ``>= start_layer`` can reuse the layers below.
    """

    config: ViTConfig

    @nn.compact
    def __call__(
        self,
        x,
        *,
        head_mask: Array | None = None,
        attention_edit: AttentionEdit | None = None,
        start_layer: int = 0,
    ) -> ModelOutput:
        c = self.config
        if head_mask is None:
            head_mask = jnp.ones((c.num_layers, c.num_heads), x.dtype)
        if start_layer == 0:
            x = nn.Conv(
                c.hidden_size, c.patch_size, strides=c.patch_size, padding="VALID", name="embedding"
            )(x)
            b, gh, gw, d = x.shape
            x = x.reshape(b, gh * gw, d)
            if c.has_cls_token:
                cls = self.param("cls", nn.initializers.zeros, (1, 1, d))
                x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
        x, residual, block_outputs, attention = Encoder(c, name="Transformer")(
            x, head_mask, attention_edit, start_layer
        )
        pooled = x[:, 0] if c.has_cls_token else x.mean(axis=1)
        if c.representation_size is not None:
            pooled = jnp.tanh(nn.Dense(c.representation_size, name="pre_logits")(pooled))
        logits = nn.Dense(c.num_classes, name="head")(pooled)
        return ModelOutput(
            logits=logits,
            attention=attention,
            block_outputs=block_outputs,
            residual=residual,
            pre_logits=pooled,
        )


def init_params(config: ViTConfig, rng: Array | int = 0) -> dict[str, Any]:
    """Random parameters for ``config`` (the tree under ``"params"``)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    images = jnp.zeros((1, *config.image_size, config.channels), jnp.float32)
    # Compiled: run eagerly, initialising every layer op by op takes seconds even for tiny models.
    return jax.jit(VisionTransformer(config).init)(rng, images)["params"]
