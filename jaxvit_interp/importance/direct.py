"""Direct logit attribution: what each head writes straight into the label's logit.

The residual stream the readout reads is a sum of terms: the tokens entering block 0 (patch
embedding, special tokens, positions), and for each layer every head's output through its slice
of the output projection (``m_h W_out,h``, ``m_h`` the head's mixed values), the projection's
bias, and the MLP's output.  With the final norm's scale frozen at the value the unpruned pass
gives it (``1 / sqrt(var + eps)`` of each read token, or of the pooled vector with ``fc_norm``),
the readout is linear in the stream, so the label logit is the sum of what each term sends
through it, plus the norm's offset and the classifier's bias, exactly:

    logit_y = embedding + sum_l (attention_bias_l + mlp_l + sum_h direct_lh) + readout_bias

The norm's centring is linear too and applies to every term (a term's part along the all-ones
direction never reaches the logits), so it is no term of its own.  A head's direct term is its
share of the logit with everything else held fixed; zeroing the head (``ablation_drop``) also
changes what the layers above it compute and the final norm's scale, and ``indirect`` is the
difference: what the head does through later layers.

Readouts: the CLS token, DeiT's two heads on CLS and the distillation token (each half of the
logit read from its own token), mean pooling over the patches (each patch token normalised by its
own scale, or the mean normalised once with ``fc_norm``), with or without an output projection
(CLIP) or a linear probe on a backbone.  A readout that is not linear after the norm, the tanh
``pre_logits`` layer or the attention-pooling head, is refused: no frozen scale makes it linear,
and a first-order expansion would not add up to the logit.

Axis names in shapes: ``batch layer head read token hidden head_dim class``; ``read`` the tokens
the readout reads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.budget import direct_attribution_bytes
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation_kinds import Ablation, as_ablation
from jaxvit_interp.importance.engine import head_importance_plan, run_engine
from jaxvit_interp.model import blocks
from jaxvit_interp.model.blocks import ReadoutParams
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import ModelOutput, VisionTransformer, block_params, readout_params
from jaxvit_interp.progress import start_progress
from jaxvit_interp.summary import Summarized, number, sizes, top_heads

Array = jax.Array

__all__ = [
    "DirectLogitAttribution",
    "direct_logit_attribution",
    "direct_terms",
    "has_linear_readout",
]


@dataclasses.dataclass(frozen=True, repr=False)
class DirectLogitAttribution(Summarized):
    """Each head's direct contribution to the label logit, the stream's other terms, and the
    zero-ablation effect beside it, per image.

    ``y`` below is ``labels``.  The terms add up to the label logit to float32 rounding:
    ``embedding + attention_bias.sum(1) + mlp.sum(1) + direct.sum((1, 2)) + readout_bias ==
    label_logit`` (:attr:`total`).

    Attributes:
      direct: ``[image, layer, head]`` the head's output ``m_h W_out,h`` at the tokens the
        readout reads, through the final norm with its scale frozen and the classifier, on
        ``logit_y``.
      embedding: ``[image]`` the same of the tokens entering block 0 (patch embedding, special
        tokens and positions, after the pre-norm where there is one).
      attention_bias: ``[image, layer]`` the same of each output projection's bias.
      mlp: ``[image, layer]`` the same of each block's MLP output.
      readout_bias: ``[image]`` the final norm's offset through the classifier, plus its bias.
      ablation_drop: ``[image, layer, head]`` ``logit_y - logit'_y`` with the head ablated
        (``"zero"``: its output set to zero, ``head_mask[l, h] = 0``), every layer above run
        again; None when the ablations were skipped (``ablation=None``).
      logits: ``[image, class]`` the unpruned logits.
      predictions: ``[image]`` the unpruned top-1 class.
      labels: ``[image]`` the class ``y`` every term refers to.
      labels_are_predictions: True when no labels were given and ``labels == predictions``.
    """

    direct: np.ndarray
    embedding: np.ndarray
    attention_bias: np.ndarray
    mlp: np.ndarray
    readout_bias: np.ndarray
    ablation_drop: np.ndarray | None
    logits: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    labels_are_predictions: bool

    @property
    def indirect(self) -> np.ndarray | None:
        """``[image, layer, head]`` ``ablation_drop - direct``: what ablating the head does to
        ``logit_y`` through the layers above it (their attention and MLPs) and the final norm's
        scale, rather than straight through the readout; None without ablations."""
        return None if self.ablation_drop is None else self.ablation_drop - self.direct

    @property
    def label_logit(self) -> np.ndarray:
        """``[image]`` ``logit_y`` of the unpruned model."""
        return np.take_along_axis(self.logits, self.labels[:, None], axis=1)[:, 0]

    @property
    def total(self) -> np.ndarray:
        """``[image]`` the sum of every direct term: :attr:`label_logit` to float32 rounding."""
        return (
            self.embedding
            + self.attention_bias.sum(axis=1)
            + self.mlp.sum(axis=1)
            + self.direct.sum(axis=(1, 2))
            + self.readout_bias
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(images, layers, heads)``."""
        return self.direct.shape

    def _summary(self):
        images, layers, heads = self.shape
        rows = [
            (
                "labels",
                "its own predictions"
                if self.labels_are_predictions
                else f"given; unpruned accuracy {number((self.predictions == self.labels).mean())}",
            ),
            (
                "mean terms",
                f"heads {number(self.direct.sum(axis=(1, 2)).mean())}, "
                f"MLPs {number(self.mlp.sum(axis=1).mean())}, "
                f"embedding {number(self.embedding.mean())}, "
                f"biases {number((self.attention_bias.sum(axis=1) + self.readout_bias).mean())}; "
                f"logit_y {number(self.label_logit.mean())}",
            ),
            ("top heads", f"by mean direct: {top_heads(self.direct)}"),
        ]
        if self.indirect is not None:
            rows.append(
                ("most indirect", f"by mean ablation_drop - direct: {top_heads(self.indirect)}")
            )
        return sizes(images=images, layers=layers, heads=heads), rows


# --------------------------------------------------------------------------------------------
# The kernel: one batch's terms from its unpruned pass (pure, traceable).
# --------------------------------------------------------------------------------------------


def read_tokens(config: ViTConfig) -> slice:
    """The tokens of the last block's output the readout reads: the leading ones
    (:func:`~jaxvit_interp.model.blocks.readout_tokens`: CLS, and the distillation token with
    DeiT's two heads), or the patches for mean pooling."""
    leading = blocks.readout_tokens(config)
    return slice(0, leading) if leading is not None else slice(config.num_prefix_tokens, None)


def _check_linear_readout(config: ViTConfig) -> None:
    """Refuse a model whose logits are not a linear map of the stream once the final norm's
    scale is frozen, or that has none, naming what stands in the way."""
    what = "direct_logit_attribution"
    if not config.num_classes:
        raise InputError(
            f"{what} attributes the label logit, and this model is a backbone without a "
            "classifier (num_classes=0); attach a linear probe first "
            "(jaxvit_interp.model.with_probe)"
        )
    if config.classifier == "map":
        raise InputError(
            f'{what}: this model pools with an attention head (classifier="map", SigLIP and '
            "big_vision's MAPHead), whose softmax and MLP sit between the final norm and the "
            "logits, so no frozen scale makes the readout linear and the direct terms would not "
            "add up to the logit"
        )
    if config.representation_size is not None:
        raise InputError(
            f"{what}: this model has a tanh pre-logits layer (representation_size="
            f"{config.representation_size}, as vit_jax's ImageNet-21k checkpoints) between the "
            "final norm and the classifier, so no frozen scale makes the readout linear and the "
            "direct terms would not add up to the logit; analyse a checkpoint fine-tuned "
            "without it"
        )


def has_linear_readout(config: ViTConfig) -> bool:
    """Whether :func:`direct_logit_attribution` takes the model: a classifier whose logits are a
    linear map of the stream once the final norm's scale is frozen."""
    try:
        _check_linear_readout(config)
    except InputError:
        return False
    return True


def _readout_map(
    config: ViTConfig, p: ReadoutParams, read: Array, targets: Array
) -> tuple[Array, Array]:
    """``logit_y`` as a linear map of the read tokens with the final norm's scale frozen.

    Args:
      read: ``[batch, read, hidden]`` the last block's output at :func:`read_tokens`.
      targets: ``[batch]`` the class ``y``.

    Returns:
      ``(weights [batch, read, hidden], offset [batch])`` with ``logit_y = sum_t <weights_t,
      x_t> + offset`` at ``x = read``, and for any term ``c`` of the stream ``sum_t
      <weights_t, c_t>`` its direct share.  The norm is ``LN(x) = (x - mean x) * s * g + b``
      with ``s`` frozen, so ``<LN(x), w> = s <x, centred(g w)> + <b, w>``.
    """
    c = config
    batch, rows = read.shape[:2]

    def reader(column: Array, pool: Array, pooled_scale: bool) -> tuple[Array, Array]:
        # column [batch, hidden]: the classifier's weights of y in the stream's width;
        # pool [read]: each read token's weight in the vector the norm (or the head) sees.
        direction = column * p.norm.scale
        direction = direction - direction.mean(axis=-1, keepdims=True)
        if pooled_scale:  # fc_norm: one scale, of the pooled vector
            _, scale = blocks.layer_norm_moments(c, jnp.einsum("t,btd->bd", pool, read))
            scale = jnp.broadcast_to(scale[:, None], (batch, rows, 1))
        else:  # each token normalised by its own scale before pooling
            _, scale = blocks.layer_norm_moments(c, read)
        weights = pool[None, :, None] * scale * direction[:, None]
        return weights, column @ p.norm.bias

    head_column = p.head.kernel[:, targets].T  # [batch, pooled]
    if p.projection is not None:
        head_column = head_column @ p.projection.kernel.T
    head_bias = p.head.bias[targets]
    if p.head_dist is None:
        pool = jnp.full((rows,), 1.0 / rows, read.dtype)
        weights, offset = reader(head_column, pool, c.fc_norm)
        return weights, offset + head_bias
    # DeiT's distilled inference: the mean of the CLS head and the distillation token's head.
    cls_weights, cls_offset = reader(head_column, jnp.eye(rows, dtype=read.dtype)[0], False)
    dist_column = p.head_dist.kernel[:, targets].T
    dist_weights, dist_offset = reader(dist_column, jnp.eye(rows, dtype=read.dtype)[1], False)
    weights = (cls_weights + dist_weights) / 2
    offset = (cls_offset + head_bias + dist_offset + p.head_dist.bias[targets]) / 2
    return weights, offset


def direct_terms(config: ViTConfig, params, out: ModelOutput, targets: Array) -> dict[str, Array]:
    """Every direct term of ``logit_y`` in one batch's unpruned pass.

    Args:
      out: the unpruned :class:`~jaxvit_interp.model.vit.ModelOutput` (all layers).
      targets: ``[batch]`` the class ``y``.

    Returns:
      ``direct [batch, layer, head]``, ``embedding [batch]``, ``attention_bias [batch,
      layer]``, ``mlp [batch, layer]``, ``readout_bias [batch]`` (see
      :class:`DirectLogitAttribution`).
    """
    c = config
    rows = read_tokens(c)
    batch = out.residual.shape[0]
    # Each block's MLP output at the read tokens, and the stream leaving the last block there.
    mlps, stream = [], None
    for layer in range(c.num_layers):
        p = block_params(params, layer)
        stream = out.residual[:, layer, rows] + out.block_outputs[:, layer, rows]
        mlps.append(blocks.mlp(c, p, blocks.layer_norm(c, p.ln2, stream)))
        stream = stream + mlps[-1]
    weights, offset = _readout_map(c, readout_params(params), stream, targets)
    share = lambda term: jnp.einsum("btd,btd->b", weights, term)  # noqa: E731

    direct, bias = [], []
    for layer in range(c.num_layers):
        p = block_params(params, layer)
        values = blocks.linear(p.value, blocks.layer_norm(c, p.ln1, out.residual[:, layer]))
        attention = out.attention[:, layer, :, rows]  # [batch, head, read, token]
        # Each head's slice of the output projection, read back from the readout's weights:
        # <(A_h V_h W_out,h)_t, w_t> = sum_k A_h[t, k] <V_h[k], W_out,h w_t>.
        back = jnp.einsum("hed,btd->bhte", p.out.kernel, weights)
        direct.append(jnp.einsum("bhtk,bkhe,bhte->bh", attention, values, back))
        bias.append(jnp.zeros(batch) if p.out.bias is None else weights.sum(1) @ p.out.bias)
    return {
        "direct": jnp.stack(direct, axis=1),
        "embedding": share(out.residual[:, 0, rows]),
        "attention_bias": jnp.stack(bias, axis=1),
        "mlp": jnp.stack([share(m) for m in mlps], axis=1),
        "readout_bias": offset,
    }


@functools.partial(jax.jit, static_argnames=("config",))
def _direct_batch(config: ViTConfig, params, images: Array, labels: Array | None):
    """One batch's logits, the class ``y`` (``labels``, else the prediction) and its terms."""
    out = VisionTransformer(config).apply({"params": params}, images)
    targets = jnp.argmax(out.logits, axis=-1).astype(jnp.int32) if labels is None else labels
    return {"logits": out.logits, "labels": targets, **direct_terms(config, params, out, targets)}


def _label_logit_drop(logits, z, targets, logits_pruned, z_pruned) -> dict[str, Array]:
    """The engine's reduction (:data:`~jaxvit_interp.importance.kernels.Reduce`): ``logit_y -
    logit'_y`` of every ablation, ``[batch, spawn_layer, slot]``."""
    del z, z_pruned
    y = targets[:, None]
    label_logit = jnp.take_along_axis(logits, y, axis=-1)[:, :, None]  # [batch, 1, 1]
    pruned = jnp.take_along_axis(logits_pruned, y[:, :, None, None], axis=-1)[..., 0]
    return {"ablation_drop": label_logit - pruned}


# --------------------------------------------------------------------------------------------
# The analysis.
# --------------------------------------------------------------------------------------------


def direct_logit_attribution(
    config: ViTConfig,
    params: Any,
    images,
    labels=None,
    *,
    ablation: str | Ablation | None = "zero",
    reference=None,
    execution: Execution | None = None,
) -> DirectLogitAttribution:
    """Each head's direct contribution to the label logit, per image, beside its zero-ablation
    effect.

    A head's direct term is its output at the tokens the classifier reads (the CLS token, CLS
    and the distillation token for DeiT's two heads, or every patch for mean pooling) through
    its slice of the output projection, the final norm with the scale the unpruned pass gives
    it, and the classifier (see :mod:`~jaxvit_interp.importance.direct`).  The stream's other
    terms come with it, so that every term adds up to the label logit, and so does the label
    logit's drop when the head is zeroed, computed by the single-head ablation engine
    (:mod:`~jaxvit_interp.importance.engine`), whose difference from the direct term is what the
    head does through the layers above it.

    Args:
      config, params: the model: a classifier whose readout after the final norm is linear (no
        tanh pre-logits layer, no attention pooling; a backbone needs a linear probe,
        :func:`~jaxvit_interp.model.probe.with_probe`).
      images: ``[image, height, width, channels]`` preprocessed pixels.
      labels: ``[image]`` int class ids, or None for the unpruned prediction.
      ablation: what takes a head's place for ``ablation_drop``, as in
        :func:`~jaxvit_interp.importance.head_importance` (``"zero"``, the paper's); None skips
        the ablations (``L * H`` of them, most of the work), leaving ``ablation_drop`` and
        ``indirect`` None.
      reference: the reference images of a ``"mean"`` or ``"resample"`` ablation, as in
        :func:`~jaxvit_interp.importance.head_importance`.
      execution: how the work runs (:class:`~jaxvit_interp.execution.Execution`); its progress
        is one report over the ablations and the pass of the direct terms.

    Returns:
      :class:`DirectLogitAttribution`: ``direct``, ``ablation_drop`` and ``indirect`` ``[image,
      layer, head]``, the other terms, logits and labels.

    Raises:
      InputError: before any model work, for a model whose readout is not linear or that has
        no classifier, a model with heads removed, bad images or labels, a bad execution, or a
        memory budget too small for the ablations
        (:class:`~jaxvit_interp.budget.MemoryBudgetError`).
    """
    validate.check_unpruned(config, "direct_logit_attribution")
    _check_linear_readout(config)
    ablation = None if ablation is None else as_ablation(ablation)
    execution = as_execution(execution)
    images = validate.check_images(config, images)
    labels = validate.check_labels(config, labels, images.shape[0])
    if ablation is not None:
        reference = validate.check_reference(config, ablation, reference, images)
    if ablation is not None:  # a budget too small for the ablations is refused before any work
        head_importance_plan(config, params, execution, num_images=len(images))

    L, H = config.num_layers, config.num_heads
    sweep = 0 if ablation is None else L * H
    bar = start_progress(
        execution.progress, total=sweep + 1, desc="direct logit attribution", unit="pass"
    )
    batcher = execution.pass_batcher(
        config, params, len(images), image_bytes=direct_attribution_bytes(config)
    )
    placed = batcher.replicate(params)
    terms = batcher.map(
        lambda x, y: _direct_batch(config, placed, x, y),
        images,
        labels,
        progress=bar.share(1),
        desc="direct terms",
    )
    drop = None
    if ablation is not None:
        swept = run_engine(
            config,
            params,
            images,
            terms["labels"],
            spawn_layers=tuple(range(L)),
            slot_heads=np.tile(np.arange(H, dtype=np.int32), (L, 1)),
            reduce=_label_logit_drop,
            ablation=ablation,
            reference=reference,
            execution=execution.with_progress(bar.share(sweep)),
            desc="ablations",
        )
        drop = swept.per_slot["ablation_drop"]
    bar.close()
    return DirectLogitAttribution(
        **terms,
        ablation_drop=drop,
        predictions=terms["logits"].argmax(axis=-1).astype(np.int32),
        labels_are_predictions=labels is None,
    )
