"""The PyTorch families: timm and Hugging Face transformers ViT names.

timm (``timm.models.vision_transformer``)::

    cls_token [1,1,D]  pos_embed [1,N,D]  patch_embed.proj.{weight [D,C,ph,pw], bias}
    blocks.{i}.norm1  blocks.{i}.attn.qkv.{weight [3D,D], bias [3D]}  blocks.{i}.attn.proj
    blocks.{i}.norm2  blocks.{i}.mlp.fc1  blocks.{i}.mlp.fc2  norm  head  (pre_logits.fc)

Hugging Face ``ViTForImageClassification``::

    vit.embeddings.{cls_token, position_embeddings, patch_embeddings.projection}
    vit.encoder.layer.{i}.{layernorm_before, attention.attention.{query,key,value},
        attention.output.dense, layernorm_after, intermediate.dense, output.dense}
    vit.layernorm  classifier  (vit.pooler.* unused by the classifier, ignored)

Neither file shows the number of heads: timm fuses query/key/value into one matrix and Hugging
Face keeps each as a flat ``[D, D]`` matrix. A Hugging Face ``config.json`` beside the weights
states it (``num_attention_heads``), as does a timm hub ``config.json`` with ``model_args``;
otherwise it is guessed (:func:`~jaxvit_interp.model.checkpoint.facts.guess_num_heads`) with a
warning, and a ``config`` passed by the caller settles it.

timm models pooled with ``fc_norm`` (LayerNorm after average pooling instead of before) are
refused: this model normalises tokens before pooling, which is not the same function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.facts import Facts, ShapeReader, SideFiles, class_names_fact
from jaxvit_interp.model.checkpoint.rules import Rule, expected_targets
from jaxvit_interp.model.config import INCEPTION_PREPROCESSING, Preprocessing, ViTConfig

MHA = "MultiHeadDotProductAttention_1"

# (source, targets, kind) with "{i}" for the block index; targets are below encoderblock_{i}.
HF_TOP = [
    ("vit.embeddings.patch_embeddings.projection.weight", ("embedding/kernel",), "conv"),
    ("vit.embeddings.patch_embeddings.projection.bias", ("embedding/bias",), "same"),
    ("vit.embeddings.cls_token", ("cls",), "same"),
    ("vit.embeddings.position_embeddings", ("Transformer/posembed_input/pos_embedding",), "same"),
    ("vit.layernorm.weight", ("Transformer/encoder_norm/scale",), "same"),
    ("vit.layernorm.bias", ("Transformer/encoder_norm/bias",), "same"),
    ("classifier.weight", ("head/kernel",), "linear"),
    ("classifier.bias", ("head/bias",), "same"),
]
_HF = "vit.encoder.layer.{i}."
HF_BLOCK = [
    (_HF + "layernorm_before.weight", ("LayerNorm_0/scale",), "same"),
    (_HF + "layernorm_before.bias", ("LayerNorm_0/bias",), "same"),
    *[
        entry
        for name in ("query", "key", "value")
        for entry in (
            (_HF + f"attention.attention.{name}.weight", (f"{MHA}/{name}/kernel",), "heads_in"),
            (_HF + f"attention.attention.{name}.bias", (f"{MHA}/{name}/bias",), "heads_bias"),
        )
    ],
    (_HF + "attention.output.dense.weight", (f"{MHA}/out/kernel",), "heads_out"),
    (_HF + "attention.output.dense.bias", (f"{MHA}/out/bias",), "same"),
    (_HF + "layernorm_after.weight", ("LayerNorm_2/scale",), "same"),
    (_HF + "layernorm_after.bias", ("LayerNorm_2/bias",), "same"),
    (_HF + "intermediate.dense.weight", ("MlpBlock_3/Dense_0/kernel",), "linear"),
    (_HF + "intermediate.dense.bias", ("MlpBlock_3/Dense_0/bias",), "same"),
    (_HF + "output.dense.weight", ("MlpBlock_3/Dense_1/kernel",), "linear"),
    (_HF + "output.dense.bias", ("MlpBlock_3/Dense_1/bias",), "same"),
]

TIMM_TOP = [
    ("patch_embed.proj.weight", ("embedding/kernel",), "conv"),
    ("patch_embed.proj.bias", ("embedding/bias",), "same"),
    ("cls_token", ("cls",), "same"),
    ("pos_embed", ("Transformer/posembed_input/pos_embedding",), "same"),
    ("norm.weight", ("Transformer/encoder_norm/scale",), "same"),
    ("norm.bias", ("Transformer/encoder_norm/bias",), "same"),
    # Older timm releases kept vit_jax's representation layer as pre_logits.fc (+ tanh).
    ("pre_logits.fc.weight", ("pre_logits/kernel",), "linear"),
    ("pre_logits.fc.bias", ("pre_logits/bias",), "same"),
    ("head.weight", ("head/kernel",), "linear"),
    ("head.bias", ("head/bias",), "same"),
]
_TIMM = "blocks.{i}."
_QKV = tuple(f"{MHA}/{n}" for n in ("query", "key", "value"))
TIMM_BLOCK = [
    (_TIMM + "norm1.weight", ("LayerNorm_0/scale",), "same"),
    (_TIMM + "norm1.bias", ("LayerNorm_0/bias",), "same"),
    (_TIMM + "attn.qkv.weight", tuple(f"{p}/kernel" for p in _QKV), "qkv"),
    (_TIMM + "attn.qkv.bias", tuple(f"{p}/bias" for p in _QKV), "qkv_bias"),
    (_TIMM + "attn.proj.weight", (f"{MHA}/out/kernel",), "heads_out"),
    (_TIMM + "attn.proj.bias", (f"{MHA}/out/bias",), "same"),
    (_TIMM + "norm2.weight", ("LayerNorm_2/scale",), "same"),
    (_TIMM + "norm2.bias", ("LayerNorm_2/bias",), "same"),
    (_TIMM + "mlp.fc1.weight", ("MlpBlock_3/Dense_0/kernel",), "linear"),
    (_TIMM + "mlp.fc1.bias", ("MlpBlock_3/Dense_0/bias",), "same"),
    (_TIMM + "mlp.fc2.weight", ("MlpBlock_3/Dense_1/kernel",), "linear"),
    (_TIMM + "mlp.fc2.bias", ("MlpBlock_3/Dense_1/bias",), "same"),
]

# Pillow's integer filter codes, as Hugging Face image processors store them.
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Hugging Face activation names: "gelu" is the exact erf form, these others the tanh one.
HF_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def hf_class_names(cfg: Mapping[str, Any]) -> list[str] | None:
    """``id2label`` of a Hugging Face ``config.json`` in class-index order, or None.

    transformers fills ``id2label`` with ``LABEL_0, LABEL_1, ...`` when a model was made without
    names; those say nothing and count as none.
    """
    id2label = cfg.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in id2label.items())
    except (TypeError, ValueError):
        return None
    if [i for i, _ in items] != list(range(len(items))):
        return None
    names = [v for _, v in items]
    if all(v == f"LABEL_{i}" for i, v in enumerate(names)):
        return None
    return names


def timm_class_names(cfg: Mapping[str, Any]) -> list[str] | None:
    """``label_names`` of a timm hub ``config.json`` (synset ids become ImageNet names), or None."""
    from jaxvit_interp.data.imagenet import imagenet1k_names_from_synsets

    names = cfg.get("label_names") or (cfg.get("pretrained_cfg") or {}).get("label_names")
    if not isinstance(names, list | tuple) or not names:
        return None
    return list(imagenet1k_names_from_synsets(names) or names)


def rules_from_table(config: ViTConfig, top, block) -> list[Rule]:
    """Instantiate a (source, targets, kind) table for ``config``'s blocks.

    An entry is used when all its targets exist in the parameter tree (so bias entries drop out
    for ``qkv_bias=False`` and ``cls`` for ``classifier="gap"``).
    """
    targets = expected_targets(config)
    rules = []
    for source, names, kind in top:
        if all(n in targets for n in names):
            rules.append(Rule((source,), tuple(names), kind))
    for i in range(config.num_layers):
        for source, names, kind in block:
            full = tuple(f"Transformer/encoderblock_{i}/{n}" for n in names)
            if all(n in targets for n in full):
                rules.append(Rule((source.format(i=i),), full, kind))
    return rules


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def hf_preprocessing(pp: Mapping[str, Any] | None, image_size: tuple[int, int]) -> Preprocessing:
    """A Hugging Face ``preprocessor_config.json`` as :class:`Preprocessing`.

    Without one, ``ViTImageProcessor``'s defaults apply: resize to the model size, bilinear,
    mean and std 0.5 (pixels to [-1, 1]).
    """
    if pp is None:
        return INCEPTION_PREPROCESSING
    channels = len(pp.get("image_mean") or (0, 0, 0))
    if pp.get("do_normalize", True):
        mean = tuple(float(v) for v in pp.get("image_mean", (0.5,) * channels))
        std = tuple(float(v) for v in pp.get("image_std", (0.5,) * channels))
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    size = pp.get("size")
    resize: int | tuple[int, int] | None = None
    if pp.get("do_resize", True) and size is not None:
        if isinstance(size, Mapping) and "height" in size and "width" in size:
            resize = (int(size["height"]), int(size["width"]))
        elif isinstance(size, Mapping) and "shortest_edge" in size:
            resize = int(size["shortest_edge"])
        elif isinstance(size, int):
            resize = (size, size)
        # A resize straight to the model size is the same as none, and keeps following the
        # model if it is later loaded at another size.
        if resize == tuple(image_size):
            resize = None
    return Preprocessing(
        mean=mean,
        std=std,
        resize=resize,
        crop=bool(pp.get("do_center_crop", False)),
        resample=PIL_FILTERS.get(pp.get("resample", 2), "bilinear"),
    )


class HuggingFaceFamily:
    """Hugging Face ``ViTForImageClassification``, with its ``config.json`` if one was found."""

    name = "hf"

    def __init__(self, hf_config: Mapping[str, Any] | None = None, preprocessor=None):
        self.hf_config = dict(hf_config or {})
        self.preprocessor = preprocessor
        self.description = "Hugging Face ViTForImageClassification" + (
            " with config.json" if hf_config else ""
        )

    def facts(self, tensors: Mapping[str, np.ndarray]) -> Facts:
        cfg = self.hf_config
        facts = Facts()
        r = ShapeReader(tensors, facts)
        if (s := r.shape(HF_TOP[0][0])) is not None:  # [D, C, ph, pw]
            r.set("hidden_size", s[0], HF_TOP[0][0])
            r.set("channels", s[1], HF_TOP[0][0])
            r.set("patch_size", (s[2], s[3]), HF_TOP[0][0])
        r.count_layers("vit.encoder.layer.{i}.")
        q_bias = "vit.encoder.layer.0.attention.attention.query.bias"
        r.set("qkv_bias", r.has(q_bias), how=f"presence of {q_bias}")
        if (s := r.shape("vit.encoder.layer.0.intermediate.dense.weight")) is not None:
            r.set("mlp_dim", s[0], "vit.encoder.layer.0.intermediate.dense.weight")
        if (s := r.shape("classifier.weight")) is not None:
            r.set("num_classes", s[0], "classifier.weight")
        # The classifier always reads the CLS token; there is no representation layer.
        r.set("classifier", "token", how="Hugging Face ViT always has a CLS token")
        r.set("representation_size", None, how="Hugging Face ViT has no pre_logits layer")
        if (s := r.shape("vit.embeddings.position_embeddings")) is not None:
            facts.num_patches = s[1] - 1
        if "num_attention_heads" in cfg:
            r.set(
                "num_heads", int(cfg["num_attention_heads"]), how="config.json num_attention_heads"
            )
        if "image_size" in cfg and "patch_size" in cfg:
            img, patch = _pair(cfg["image_size"]), _pair(cfg["patch_size"])
            facts.grid = (img[0] // patch[0], img[1] // patch[1])
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu" and act not in HF_TANH_GELU:
            raise CheckpointError(
                f"config.json hidden_act={act!r}: only GELU ('gelu' exact, or the tanh forms "
                f"{', '.join(HF_TANH_GELU)}) is supported"
            )
        pp = self.preprocessor
        facts.defaults = dict(
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            gelu_approximate=act != "gelu",
            preprocessing=lambda image_size: hf_preprocessing(pp, image_size),
        )
        class_names_fact(facts, hf_class_names(cfg), "config.json id2label")
        return facts

    def rules(self, config: ViTConfig) -> list[Rule]:
        return rules_from_table(config, HF_TOP, HF_BLOCK)

    def ignored(self, key: str) -> bool:
        # The pooler (dense + tanh on CLS) is not used by ViTForImageClassification.
        return key.startswith("vit.pooler.")


def timm_preprocessing(pretrained_cfg: Mapping[str, Any] | None, image_size) -> Preprocessing:
    """timm's ``pretrained_cfg`` (mean, std, interpolation, crop_pct) as :class:`Preprocessing`.

    Without one: ImageNet mean/std, bicubic, resize the shorter side to ``size / 0.9`` and
    centre-crop (timm's ViT default; DeiT-style weights). timm's vit_jax-converted (augreg)
    weights use mean/std 0.5 instead; their hub ``config.json`` says so.
    """
    cfg = dict(pretrained_cfg or {})
    crop_pct = float(cfg.get("crop_pct", 0.9))
    return Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        resize=math.floor(min(image_size) / crop_pct),
        crop=True,
        resample=cfg.get("interpolation", "bicubic"),
    )


class TimmFamily:
    """timm ``VisionTransformer`` state dicts, with a hub ``config.json`` if one was found."""

    name = "timm"

    def __init__(self, timm_config: Mapping[str, Any] | None = None):
        self.timm_config = dict(timm_config or {})
        self.description = "timm" + (" with config.json" if timm_config else "")

    def facts(self, tensors: Mapping[str, np.ndarray]) -> Facts:
        if "fc_norm.weight" in tensors:
            raise CheckpointError(
                "timm checkpoint with fc_norm (LayerNorm applied after average pooling) is not "
                "supported: this model normalises the tokens before pooling, a different function"
            )
        facts = Facts()
        r = ShapeReader(tensors, facts)
        if (s := r.shape("patch_embed.proj.weight")) is not None:  # [D, C, ph, pw]
            r.set("hidden_size", s[0], "patch_embed.proj.weight")
            r.set("channels", s[1], "patch_embed.proj.weight")
            r.set("patch_size", (s[2], s[3]), "patch_embed.proj.weight")
        r.count_layers("blocks.{i}.")
        r.set("qkv_bias", r.has("blocks.0.attn.qkv.bias"), how="presence of blocks.0.attn.qkv.bias")
        if (s := r.shape("blocks.0.mlp.fc1.weight")) is not None:
            r.set("mlp_dim", s[0], "blocks.0.mlp.fc1.weight")
        if (s := r.shape("head.weight")) is not None:
            r.set("num_classes", s[0], "head.weight")
        rep = r.has("pre_logits.fc.weight")
        r.set(
            "representation_size",
            r.shape("pre_logits.fc.weight")[0] if rep else None,
            how="presence of pre_logits.fc.weight",
        )
        has_cls = r.has("cls_token")
        r.set("classifier", "token" if has_cls else "gap", how="presence of cls_token")
        if (s := r.shape("pos_embed")) is not None:
            facts.num_patches = s[1] - int(has_cls)
        model_args = self.timm_config.get("model_args") or {}
        if "num_heads" in model_args:
            r.set("num_heads", int(model_args["num_heads"]), how="config.json model_args.num_heads")
        pretrained = self.timm_config.get("pretrained_cfg")
        if pretrained and "input_size" in pretrained:
            img = tuple(int(v) for v in pretrained["input_size"][-2:])
            patch = facts.fields.get("patch_size")
            if patch:
                facts.grid = (img[0] // patch[0], img[1] // patch[1])
        # timm's ViT uses PyTorch's exact GELU and LayerNorm epsilon 1e-6.
        facts.defaults = dict(
            layer_norm_eps=1e-6,
            gelu_approximate=False,
            preprocessing=lambda image_size: timm_preprocessing(pretrained, image_size),
        )
        class_names_fact(facts, timm_class_names(self.timm_config), "config.json label_names")
        return facts

    def rules(self, config: ViTConfig) -> list[Rule]:
        return rules_from_table(config, TIMM_TOP, TIMM_BLOCK)

    def ignored(self, key: str) -> bool:
        return False


def detect(keys, side: SideFiles):
    """The Hugging Face or timm family of a flat key set, or None if neither."""
    keys = set(keys)
    config = side.config_json or {}
    if any(k.startswith("vit.embeddings.") for k in keys):
        return HuggingFaceFamily(config if "model_type" in config else None, side.preprocessor)
    if "patch_embed.proj.weight" in keys or any(k.startswith("blocks.0.") for k in keys):
        return TimmFamily(config if "pretrained_cfg" in config else None)
    return None
