"""Flax ViT whose parameter names follow the published ``vit_jax`` checkpoints.

Parameter tree (``L`` blocks; entries in brackets exist only with the config option named)::

    embedding/{kernel,(bias)}          patch embedding, a strided convolution (patch_bias)
    (cls)                              [1, 1, D] class token (has_cls_token)
    (distillation)                     [1, 1, D] DeiT's distillation token (distillation_token)
    (registers)                        [1, R, D] register tokens (num_register_tokens)
    Transformer/(posembed_input/pos_embedding)   [1, rows + Gh*Gw, D] (position_embedding learned)
    Transformer/(pre_norm)             CLIP's ln_pre (pre_norm)
    Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
                                 (LayerScale_1/scale), LayerNorm_2, MlpBlock_3/{Dense_0,Dense_1},
                                 (LayerScale_3/scale)   (layer_scale: the scales of modules 1, 3)
    Transformer/encoder_norm  or  fc_norm   the final norm, on tokens or on the pooled vector
    (MAPHead_0)/{probe, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_0,
                 MlpBlock_0/{Dense_0,Dense_1}}   big_vision's attention pooling (classifier "map")
    (pre_logits)/{kernel,bias}         representation_size
    (projection)/kernel                projection_dim
    (head)/{kernel,bias}               num_classes > 0
    (head_dist)/{kernel,bias}          distillation_head

The names without brackets are those of the published ``vit_jax`` checkpoints, and the rest follow
their style (``MAPHead_0`` is big_vision's own); a SwiGLU MLP's ``Dense_0`` holds the gate and
value kernels side by side.

This module is the one place that knows these names: the Flax modules below declare the tree,
and :func:`block_params`, :func:`embedding_params` and :func:`readout_params` read it into the
structs of :mod:`~jaxvit_interp.model.blocks`, whose pure functions do all the arithmetic.
:func:`forward` is the whole model on those structs; :class:`VisionTransformer` declares the tree
and runs it.

Two inputs let analyses reach inside the model without a second pass:

- ``head_mask`` ``[L, H]`` scales each head's output before the output projection (0 prunes it).
- ``attention_edit`` (:class:`~jaxvit_interp.model.edits.AttentionEdit`) multiplies chosen entries of
  chosen heads' attention probabilities, without renormalising (the paper's partial pruning).

Axis names used in shapes: ``batch layer head query key token hidden``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxvit_interp.errors import InputError
from jaxvit_interp.model import blocks
from jaxvit_interp.model.blocks import (
    BlockParams,
    EmbeddingParams,
    LayerNormParams,
    LinearParams,
    MapHeadParams,
    ReadoutParams,
)
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import AttentionEdit

Array = jax.Array


@flax.struct.dataclass
class ModelOutput:
    """Everything one forward pass exposes; leading axis ``batch``.

    Layer axes cover the layers that ran: all of them, or ``start_layer .. L-1``.

    Attributes:
      logits: ``[batch, classes]`` (``[batch, 0]`` for a backbone without a classifier).
      attention: ``[batch, layer, head, query, key]`` softmax probabilities after any edit,
        tokens ordered as the model's: special tokens (CLS, distillation, registers) first, then
        patches row-major.
      block_outputs: ``[batch, layer, token, hidden]`` output of each attention block (after the
        output projection, before the residual add): ``O_l`` of the layer-impact metric.
      residual: ``[batch, layer, token, hidden]`` the residual stream entering each block.
      pre_logits: ``[batch, pooled]`` the pooled vector: what the classifier head reads, or a
        backbone's output (see :func:`~jaxvit_interp.model.blocks.readout`).
      pool_attention: ``[batch, head, 1, patch]`` the attention-pooling head's probabilities
        over the patch tokens (``classifier="map"``), else None.  The analyses treat the
        encoder's heads only; this is the pooling head's attention, for inspection.
    """

    logits: Array
    attention: Array
    block_outputs: Array
    residual: Array
    pre_logits: Array
    pool_attention: Array | None = None


# --------------------------------------------------------------------------------------------
# Declaring the tree.  These modules compute nothing; their initialisers are Flax's own for
# nn.Dense / nn.DenseGeneral / nn.Conv / nn.LayerNorm, so init_params draws what it always drew.
# --------------------------------------------------------------------------------------------


class _Linear(nn.Module):
    """``kernel`` ``[*in_shape, *out_shape]`` and, with ``use_bias``, ``bias`` ``[*out_shape]``."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    use_bias: bool = True

    @nn.compact
    def __call__(self):
        def kernel_init(rng, shape, dtype=jnp.float32):
            # LeCun normal over the flattened [in, out] matrix, as nn.DenseGeneral: the fan-in is
            # the whole input width, not the last input axis.
            flat = (math.prod(self.in_shape), math.prod(self.out_shape))
            if 0 in flat:  # a layer whose heads were all removed: nothing to draw
                return jnp.zeros(shape, dtype)
            return nn.initializers.lecun_normal()(rng, flat, dtype).reshape(shape)

        self.param("kernel", kernel_init, self.in_shape + self.out_shape)
        if self.use_bias:
            self.param("bias", nn.initializers.zeros, self.out_shape)


class _LayerNorm(nn.Module):
    features: int

    @nn.compact
    def __call__(self):
        self.param("scale", nn.initializers.ones, (self.features,))
        self.param("bias", nn.initializers.zeros, (self.features,))


class _PositionEmbedding(nn.Module):
    shape: tuple[int, ...]

    @nn.compact
    def __call__(self):
        self.param("pos_embedding", nn.initializers.normal(stddev=0.02), self.shape)


class _LayerScale(nn.Module):
    features: int

    @nn.compact
    def __call__(self):
        self.param("scale", nn.initializers.ones, (self.features,))


class _Attention(nn.Module):
    config: ViTConfig
    num_heads: int

    @nn.compact
    def __call__(self):
        c = self.config
        heads = (self.num_heads, c.head_dim)
        for name in ("query", "key", "value"):
            _Linear((c.hidden_size,), heads, c.qkv_bias, name=name)()
        _Linear(heads, (c.hidden_size,), name="out")()


class _Mlp(nn.Module):
    config: ViTConfig
    in_dim: int

    @nn.compact
    def __call__(self):
        c = self.config
        _Linear((c.hidden_size,), (self.in_dim,), name="Dense_0")()
        _Linear((c.mlp_dim,), (c.hidden_size,), name="Dense_1")()


class _EncoderBlock(nn.Module):
    config: ViTConfig
    num_heads: int

    @nn.compact
    def __call__(self):
        c = self.config
        _LayerNorm(c.hidden_size, name="LayerNorm_0")()
        _Attention(c, self.num_heads, name="MultiHeadDotProductAttention_1")()
        _LayerNorm(c.hidden_size, name="LayerNorm_2")()
        _Mlp(c, c.mlp_in_dim, name="MlpBlock_3")()
        if c.layer_scale:
            _LayerScale(c.hidden_size, name="LayerScale_1")()
            _LayerScale(c.hidden_size, name="LayerScale_3")()


class _Encoder(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self):
        c = self.config
        if c.position_embedding == "learned":
            rows = c.num_position_prefix_rows + c.num_patches
            _PositionEmbedding((1, rows, c.hidden_size), name="posembed_input")()
        if c.pre_norm:
            _LayerNorm(c.hidden_size, name="pre_norm")()
        for layer in range(c.num_layers):
            _EncoderBlock(c, c.heads_in_layer(layer), name=f"encoderblock_{layer}")()
        if not c.fc_norm:
            _LayerNorm(c.hidden_size, name="encoder_norm")()


class _MapHead(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self):
        c = self.config
        self.param("probe", nn.initializers.xavier_uniform(), (1, 1, c.hidden_size))
        _Attention(c.replace(qkv_bias=True), c.num_heads, name="MultiHeadDotProductAttention_0")()
        _LayerNorm(c.hidden_size, name="LayerNorm_0")()
        _Mlp(c, c.mlp_dim, name="MlpBlock_0")()


# --------------------------------------------------------------------------------------------
# Reading the tree (the parameters under "params") into the structs the pure functions take.
# --------------------------------------------------------------------------------------------


def _linear(p) -> LinearParams:
    return LinearParams(kernel=p["kernel"], bias=p.get("bias"))


def _layer_norm(p) -> LayerNormParams:
    return LayerNormParams(scale=p["scale"], bias=p["bias"])


def _scaled(p: LinearParams, scale) -> LinearParams:
    """A linear map followed by a per-output-channel ``scale`` ``[out]``, as one linear map."""
    if scale is None:
        return p
    return LinearParams(kernel=p.kernel * scale, bias=None if p.bias is None else p.bias * scale)


def _optional(p, make):
    return None if p is None else make(p)


def block_params(params, layer: int) -> BlockParams:
    """Encoder block ``layer``, layer scale (when present) folded into ``out`` and ``mlp_out``."""
    p = params["Transformer"][f"encoderblock_{layer}"]
    attention, mlp = p["MultiHeadDotProductAttention_1"], p["MlpBlock_3"]
    scale = lambda name: p[name]["scale"] if name in p else None  # noqa: E731
    return BlockParams(
        ln1=_layer_norm(p["LayerNorm_0"]),
        query=_linear(attention["query"]),
        key=_linear(attention["key"]),
        value=_linear(attention["value"]),
        out=_scaled(_linear(attention["out"]), scale("LayerScale_1")),
        ln2=_layer_norm(p["LayerNorm_2"]),
        mlp_in=_linear(mlp["Dense_0"]),
        mlp_out=_scaled(_linear(mlp["Dense_1"]), scale("LayerScale_3")),
    )


def embedding_params(params) -> EmbeddingParams:
    """Patch embedding, special tokens, position embeddings and pre-norm."""
    encoder = params["Transformer"]
    return EmbeddingParams(
        patches=_linear(params["embedding"]),
        cls=params.get("cls"),
        distillation=params.get("distillation"),
        registers=params.get("registers"),
        positions=encoder.get("posembed_input", {}).get("pos_embedding"),
        pre_norm=_optional(encoder.get("pre_norm"), _layer_norm),
    )


def _map_head_params(p) -> MapHeadParams:
    attention, mlp = p["MultiHeadDotProductAttention_0"], p["MlpBlock_0"]
    return MapHeadParams(
        probe=p["probe"],
        query=_linear(attention["query"]),
        key=_linear(attention["key"]),
        value=_linear(attention["value"]),
        out=_linear(attention["out"]),
        ln=_layer_norm(p["LayerNorm_0"]),
        mlp_in=_linear(mlp["Dense_0"]),
        mlp_out=_linear(mlp["Dense_1"]),
    )


def readout_params(params) -> ReadoutParams:
    """Final norm, attention pooling, pre-logits, projection and head(s)."""
    norm = params["fc_norm"] if "fc_norm" in params else params["Transformer"]["encoder_norm"]
    return ReadoutParams(
        norm=_layer_norm(norm),
        map_head=_optional(params.get("MAPHead_0"), _map_head_params),
        pre_logits=_optional(params.get("pre_logits"), _linear),
        projection=_optional(params.get("projection"), _linear),
        head=_optional(params.get("head"), _linear),
        head_dist=_optional(params.get("head_dist"), _linear),
    )


def with_position_embeddings(params, positions: Array) -> dict[str, Any]:
    """A copy of ``params`` with position embeddings ``[1, token, hidden]`` replaced."""
    encoder = {**params["Transformer"], "posembed_input": {"pos_embedding": positions}}
    return {**params, "Transformer": encoder}


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------


def forward(
    config: ViTConfig,
    params,
    x: Array,
    *,
    head_mask: Array | None = None,
    attention_edit: AttentionEdit | None = None,
    start_layer: int = 0,
) -> ModelOutput:
    """The whole model on the parameter tree ``params``; see :class:`VisionTransformer`."""
    if config.heads_per_layer is not None and (head_mask is not None or attention_edit is not None):
        raise InputError(
            "head masks and attention edits index the heads of the unpruned model; this model "
            f"has heads removed (heads_per_layer={config.heads_per_layer})"
        )
    if start_layer == 0:
        x = blocks.embed(config, embedding_params(params), x)
    residuals, block_outputs, attentions = [], [], []
    for layer in range(start_layer, config.num_layers):
        mask = None if head_mask is None else head_mask[layer]
        keep = None if attention_edit is None else attention_edit.keep_for_layer(layer)
        residuals.append(x)
        x, out, probs = blocks.block(config, block_params(params, layer), x, mask, keep)
        block_outputs.append(out)
        if probs.shape[1] < config.num_heads:
            # Heads removed physically: the kept heads first, zeros for the rest, so that every
            # layer's attention has the same shape.
            missing = config.num_heads - probs.shape[1]
            probs = jnp.pad(probs, ((0, 0), (0, missing), (0, 0), (0, 0)))
        attentions.append(probs)
    logits, pooled, pool_probs = blocks.readout(config, readout_params(params), x)
    stack = lambda xs: jnp.stack(xs, axis=1)  # noqa: E731  [batch, layer, ...]
    return ModelOutput(
        logits=logits,
        attention=stack(attentions),
        block_outputs=stack(block_outputs),
        residual=stack(residuals),
        pre_logits=pooled,
        pool_attention=pool_probs,
    )


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
        d = c.hidden_size
        _Linear((*c.patch_size, c.channels), (d,), c.patch_bias, name="embedding")()
        if c.has_cls_token:
            self.param("cls", nn.initializers.zeros, (1, 1, d))
        if c.distillation_token:
            self.param("distillation", nn.initializers.zeros, (1, 1, d))
        if c.num_register_tokens:
            self.param("registers", nn.initializers.zeros, (1, c.num_register_tokens, d))
        _Encoder(c, name="Transformer")()
        if c.fc_norm:
            _LayerNorm(d, name="fc_norm")()
        if c.classifier == "map":
            _MapHead(c, name="MAPHead_0")()
        width = d
        if c.representation_size is not None:
            _Linear((width,), (c.representation_size,), name="pre_logits")()
            width = c.representation_size
        if c.projection_dim is not None:
            _Linear((width,), (c.projection_dim,), use_bias=False, name="projection")()
            width = c.projection_dim
        if c.num_classes:
            _Linear((width,), (c.num_classes,), name="head")()
        if c.distillation_head:
            _Linear((d,), (c.num_classes,), name="head_dist")()
        return forward(
            c,
            self.variables["params"],
            x,
            head_mask=head_mask,
            attention_edit=attention_edit,
            start_layer=start_layer,
        )


def init_params(config: ViTConfig, rng: Array | int = 0) -> dict[str, Any]:
    """Random parameters for ``config`` (the tree under ``"params"``)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    images = jnp.zeros((1, *config.image_size, config.channels), jnp.float32)
    # Compiled: run eagerly, initialising every layer op by op takes seconds even for tiny models.
    return jax.jit(VisionTransformer(config).init)(rng, images)["params"]
