"""OpenCLIP visual towers (``open_clip.transformer.VisionTransformer``), alone or in a CLIP model.

Names, under ``visual.`` in a whole CLIP model's state dict (whose text tower is ignored)::

    conv1.weight [D, C, ph, pw]   class_embedding [D]   positional_embedding [1 + P, D]
    ln_pre
    transformer.resblocks.{i}.{ln_1, attn.in_proj_weight [3D, D], attn.in_proj_bias,
        attn.out_proj, (ls_1.gamma), ln_2, mlp.c_fc, mlp.c_proj, (ls_2.gamma)}
    ln_post   proj [D, E]           the output projection, ``x @ proj``

OpenCLIP derives the heads from the width (64 channels each, the loader's guess too) unless its
model config's ``head_width`` says otherwise, uses PyTorch's LayerNorm epsilon 1e-5, and QuickGELU only for OpenAI's weights (its
``quick_gelu`` flag, which ``open_clip_config.json`` beside the weights records).  Position tables
are resampled as OpenCLIP's ``resize_pos_embed`` does: bicubic with antialiasing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.facts import Facts, ShapeReader, class_names_fact
from jaxvit_interp.model.checkpoint.rules import (
    MHA,
    MLP,
    Rule,
    fused_entries,
    linear_entries,
    norm_entries,
    rules_from_table,
)
from jaxvit_interp.model.config import CLIP_MEAN, CLIP_STD, Preprocessing, ViTConfig

_QKV = tuple(f"{MHA}/{n}" for n in ("query", "key", "value"))
TOP = [
    ("conv1.weight", ("embedding/kernel",), "conv"),
    ("class_embedding", ("cls",), "token"),
    ("positional_embedding", ("Transformer/posembed_input/pos_embedding",), "table"),
    *norm_entries("ln_pre", "Transformer/pre_norm"),
    *norm_entries("ln_post", "Transformer/encoder_norm"),
    ("proj", ("projection/kernel",), "same"),
]
_B = "transformer.resblocks.{i}."
BLOCK = [
    *norm_entries(_B + "ln_1", "LayerNorm_0"),
    *fused_entries(_B + "attn.in_proj_weight", _B + "attn.in_proj_bias", _QKV),
    *linear_entries(_B + "attn.out_proj", f"{MHA}/out", "heads_out"),
    (_B + "ls_1.gamma", ("LayerScale_1/scale",), "same"),
    *norm_entries(_B + "ln_2", "LayerNorm_2"),
    *linear_entries(_B + "mlp.c_fc", f"{MLP}/Dense_0"),
    *linear_entries(_B + "mlp.c_proj", f"{MLP}/Dense_1"),
    (_B + "ls_2.gamma", ("LayerScale_3/scale",), "same"),
]
# OpenCLIP options this model does not have, by a key that only they create.
UNSUPPORTED = (
    ("attn_pool.", "the attentional pooler (CoCa)"),
    ("trunk.", "a timm trunk as the image tower"),
    ("transformer.resblocks.0.ln_attn.weight", "the custom block's inner norms"),
    ("transformer.resblocks.0.attn.ln_inner.weight", "the custom block's inner norms"),
    ("transformer.resblocks.0.attn.logit_scale", "scaled cosine attention"),
    ("transformer.resblocks.0.attn.head_scale", "per-head scales"),
)


def openclip_preprocessing(preprocess_cfg: Mapping[str, Any] | None, image_size) -> Preprocessing:
    """OpenCLIP's ``preprocess_cfg`` as :class:`Preprocessing`; by default OpenAI CLIP's: the
    shorter side resized to the image size, centre-cropped, bicubic, CLIP's statistics."""
    cfg = dict(preprocess_cfg or {})
    squash = cfg.get("resize_mode") == "squash"
    return Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", CLIP_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", CLIP_STD)),
        resize=tuple(image_size) if squash else min(image_size),
        crop=not squash,
        resample=cfg.get("interpolation", "bicubic"),
    )


class OpenClipFamily:
    """An OpenCLIP visual tower under ``prefix`` (``"visual."`` or ``""``), with the model's
    ``open_clip_config.json`` if one was found."""

    name = "open_clip"

    def __init__(self, prefix: str, openclip_config: Mapping[str, Any] | None = None):
        self.prefix = prefix
        self.openclip_config = dict(openclip_config or {})
        self.description = "OpenCLIP visual tower" + (
            " with open_clip_config.json" if openclip_config else ""
        )

    def facts(self, tensors: Mapping[str, np.ndarray]) -> Facts:
        p = self.prefix
        for key, what in UNSUPPORTED:
            if any(k.startswith(p + key) for k in tensors):
                raise CheckpointError(
                    f"OpenCLIP tower with {what} (key {p + key!r}...) is not supported"
                )
        model_cfg = self.openclip_config.get("model_cfg") or {}
        vision_cfg = model_cfg.get("vision_cfg") or {}
        facts = Facts()
        r = ShapeReader(tensors, facts, p)
        if (s := r.shape("conv1.weight")) is not None:  # [D, C, ph, pw]
            r.set("hidden_size", s[0], "conv1.weight")
            r.set("channels", s[1], "conv1.weight")
            r.set("patch_size", (s[2], s[3]), "conv1.weight")
        r.count_layers("transformer.resblocks.{i}.")
        first = "transformer.resblocks.0."
        r.set("qkv_bias", r.has(first + "attn.in_proj_bias"), how="presence of in_proj_bias")
        if (s := r.shape(first + "mlp.c_fc.weight")) is not None:
            r.set("mlp_dim", s[0], first + "mlp.c_fc.weight")
        r.set("layer_scale", r.has(first + "ls_1.gamma"), how=f"presence of {p}{first}ls_1.gamma")
        r.set("pre_norm", r.has("ln_pre.weight"), how=f"presence of {p}ln_pre.weight")
        if (s := r.shape("proj")) is not None:
            r.set("projection_dim", s[1], "proj")
        pool = vision_cfg.get("pool_type", "tok")
        if pool not in ("tok", "avg") or vision_cfg.get("final_ln_after_pool"):
            raise CheckpointError(
                f"OpenCLIP tower with pool_type={pool!r}, final_ln_after_pool="
                f"{vision_cfg.get('final_ln_after_pool', False)} is not supported (only 'tok' "
                "and 'avg' with ln_post before pooling)"
            )
        r.set("classifier", "token" if pool == "tok" else "gap", how="open_clip_config pool_type")
        r.set("class_token", True, how="OpenCLIP towers always have a class embedding")
        r.set_all(
            "OpenCLIP's visual tower",
            num_classes=0,
            distillation_token=False,
            distillation_head=False,
            num_register_tokens=0,
            fc_norm=False,
            representation_size=None,
            patch_bias=False,
            position_embedding="learned",
            position_prefix_tokens=1,
        )
        if (s := r.shape("positional_embedding")) is not None:
            facts.num_patches = s[0] - 1
        width = facts.fields.get("hidden_size")
        if width is not None and "head_width" in vision_cfg:
            head_width = int(vision_cfg["head_width"])
            r.set(
                "num_heads",
                width // head_width,
                how=f"open_clip_config.json: width {width} / head_width {head_width}",
            )
        image = vision_cfg.get("image_size")
        patch = facts.fields.get("patch_size")
        if image is not None and patch:
            image = (image, image) if isinstance(image, int) else tuple(image)
            facts.grid = (image[0] // patch[0], image[1] // patch[1])
            facts.size_source = f"its open_clip_config.json says image_size {image[0]}x{image[1]}"
        quick = bool(model_cfg.get("quick_gelu", False))
        if not self.openclip_config:
            facts.notes.append(
                "GELU assumed: OpenAI's CLIP weights use QuickGELU, which the file cannot show; "
                "pass config=ViTConfig(..., mlp_activation='quick_gelu') for them"
            )
        preprocess = self.openclip_config.get("preprocess_cfg")
        facts.defaults = dict(
            layer_norm_eps=1e-5,
            gelu_approximate=False,
            mlp_activation="quick_gelu" if quick else "gelu",
            position_interpolation="bicubic_antialias",
            preprocessing=lambda image_size: openclip_preprocessing(preprocess, image_size),
        )
        class_names_fact(facts, None, self.description)
        return facts

    def rules(self, config: ViTConfig) -> list[Rule]:
        return [
            Rule(tuple(self.prefix + s for s in rule.sources), rule.targets, rule.kind)
            for rule in rules_from_table(config, TOP, BLOCK)
        ]

    def ignored(self, key: str) -> str | None:
        if self.prefix and not key.startswith(self.prefix):
            return "not the image tower (text tower, logit scale)"
        return None


def detect(keys, openclip_config) -> OpenClipFamily | None:
    """The OpenCLIP family of a flat key set, or None."""
    keys = set(keys)
    for prefix in ("visual.", "module.visual.", ""):
        if prefix + "class_embedding" in keys and prefix + "conv1.weight" in keys:
            return OpenClipFamily(prefix, openclip_config)
    return None
