"""timm ``VisionTransformer`` state dicts: ``vit_*``, ``deit_*`` (distilled too), ``*_dinov2``,
``*_reg4_*``, ``*_clip_*``, ``*_siglip_*`` and the ``global_pool="avg"`` models with ``fc_norm``.

Names (entries in brackets exist only in some models)::

    patch_embed.proj.{weight [D, C, ph, pw], (bias)}   (cls_token) (dist_token) (reg_token [1, R, D])
    pos_embed [1, (prefix +) P, D]   (norm_pre)       CLIP's pre-norm
    blocks.{i}.{norm1, attn.qkv [3D, D], attn.proj, (ls1.gamma), norm2, mlp.fc1, mlp.fc2,
                (ls2.gamma)}                           fc1 is [2F, D] for DINOv2's packed SwiGLU
    norm  or  fc_norm                                  the final norm, on tokens or after pooling
    (attn_pool.{latent, q, kv [2D, D], proj, norm, mlp.fc1, mlp.fc2})   SigLIP's attention pooling
    (pre_logits.fc) (head) (head_dist)

The tensors show everything but the number of heads (query, key and value are fused), the
activation (GELU or quick_gelu), LayerNorm's epsilon (1e-6, CLIP's 1e-5) and whether a table
with rows for the special tokens was trained with them (``no_embed_class``, read from the table's
length).  A hub ``config.json`` beside the weights gives the architecture's name (whose size word
says the heads: :func:`heads_from_architecture`), the heads themselves where the model was built
with other ``model_args``, and the preprocessing; without one the family's published defaults
apply, and the heads are a stated guess.  Position tables are resampled as timm does it: bicubic
with antialiasing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.facts import (
    Facts,
    ShapeReader,
    class_names_fact,
    feature_words,
)
from jaxvit_interp.model.checkpoint.rules import (
    MAP,
    MHA,
    MLP,
    Rule,
    fused_entries,
    linear_entries,
    map_head_entries,
    norm_entries,
    rules_from_table,
)
from jaxvit_interp.model.config import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    ViTConfig,
)

_QKV = tuple(f"{MHA}/{n}" for n in ("query", "key", "value"))
TOP = [
    ("patch_embed.proj.weight", ("embedding/kernel",), "conv"),
    ("patch_embed.proj.bias", ("embedding/bias",), "same"),
    ("cls_token", ("cls",), "same"),
    ("dist_token", ("distillation",), "same"),
    ("reg_token", ("registers",), "same"),
    ("pos_embed", ("Transformer/posembed_input/pos_embedding",), "same"),
    *norm_entries("norm_pre", "Transformer/pre_norm"),
    *norm_entries("norm", "Transformer/encoder_norm"),
    *norm_entries("fc_norm", "fc_norm"),
    *map_head_entries(
        probe="attn_pool.latent",
        attention=[
            *linear_entries("attn_pool.q", f"{MAP}/query", "heads_in", "heads_bias"),
            *fused_entries(
                "attn_pool.kv.weight", "attn_pool.kv.bias", (f"{MAP}/key", f"{MAP}/value")
            ),
            *linear_entries("attn_pool.proj", f"{MAP}/out", "heads_out"),
        ],
        norm="attn_pool.norm",
        mlp=("attn_pool.mlp.fc1", "attn_pool.mlp.fc2"),
    ),
    # Older timm releases kept vit_jax's representation layer as pre_logits.fc (+ tanh).
    *linear_entries("pre_logits.fc", "pre_logits"),
    *linear_entries("head", "head"),
    *linear_entries("head_dist", "head_dist"),
]
_B = "blocks.{i}."
BLOCK = [
    *norm_entries(_B + "norm1", "LayerNorm_0"),
    *fused_entries(_B + "attn.qkv.weight", _B + "attn.qkv.bias", _QKV),
    *linear_entries(_B + "attn.proj", f"{MHA}/out", "heads_out"),
    (_B + "ls1.gamma", ("LayerScale_1/scale",), "same"),
    *norm_entries(_B + "norm2", "LayerNorm_2"),
    *linear_entries(_B + "mlp.fc1", f"{MLP}/Dense_0"),
    *linear_entries(_B + "mlp.fc2", f"{MLP}/Dense_1"),
    (_B + "ls2.gamma", ("LayerScale_3/scale",), "same"),
]

# timm options this model does not have, by a key that only they create.
UNSUPPORTED = (
    ("blocks.0.attn.q_norm.weight", "query/key normalisation (qk_norm)"),
    ("blocks.0.attn.norm.weight", "a norm on the attention output (scale_attn_norm)"),
    ("blocks.0.mlp.norm.weight", "a norm inside the MLP (scale_mlp_norm)"),
    ("blocks.0.mlp.fc1_g.weight", "an unpacked SwiGLU MLP (fc1_g / fc1_x)"),
    ("blocks.0.attn.gate.weight", "gated attention"),
    ("patch_embed.norm.weight", "a norm on the patch embedding"),
    ("attn_pool.pos_embed", "position embeddings inside the attention pooling"),
    ("attn_pool.q_norm.weight", "query/key normalisation in the attention pooling"),
)

# timm's sizes by the word after the family in an architecture name (``vit_small_patch16_224``,
# ``deit3_medium_patch16_224``, ``vit_so400m_patch14_siglip_224``): the (width, MLP width) of each
# model timm builds under that word, and its heads (timm 1.0's VisionTransformer entry points).
# A name says the heads only where the file's widths are one of its word's: a model built with
# another embed_dim or mlp_ratio says nothing by its name.
TIMM_SIZES: dict[str, dict[tuple[int, int], int]] = {
    "tiny": {(192, 768): 3},
    "xsmall": {(256, 1024): 4},
    "wee": {(256, 1280): 4},
    "dwee": {(256, 1280): 4},
    "little": {(320, 1792): 5},
    "dlittle": {(320, 1792): 5},
    "small": {(384, 1536): 6},
    "medium": {(512, 2048): 8},
    "mediumd": {(512, 2048): 8},
    "betwixt": {(640, 2560): 10},
    "base": {(768, 3072): 12, (896, 3584): 14},  # 896: the "plus" models
    "so150m2": {(832, 2176): 13},
    "so150m": {(896, 2304): 14},
    "large": {(1024, 4096): 16},
    "intern300m": {(1024, 4096): 16},
    "so400m": {(1152, 4304): 16},
    "huge": {(1280, 5120): 16},
    # 1536 wide: DINOv2's SwiGLU giant (MLP 4096) and RADIO's; 1408 wide: CLIP's and the ViT-g.
    "giant": {(1408, 6144): 16, (1536, 4096): 24, (1536, 6144): 24},
    "giantopt": {(1536, 6144): 16},
    "gigantic": {(1664, 8192): 16},
}
# Architectures whose heads differ from their size word's at the same widths.
TIMM_HEADS_BY_NAME: dict[str, int] = {"vit_base_patch16_gap_224": 16}


def heads_from_architecture(
    architecture: str, hidden_size: int | None, mlp_dim: int | None
) -> tuple[int, str] | None:
    """The heads a timm architecture name says, with where they come from in words, or None.

    ``architecture`` as in a hub ``config.json`` (``vit_small_patch16_224``; a pretrained tag
    after ``.`` or a ``timm/`` hub prefix is ignored). The size word (the name's second part)
    gives the heads when the file's width and MLP width are those timm builds under it
    (:data:`TIMM_SIZES`), so a name never overrides what the tensors show.
    """
    name = architecture.rpartition("/")[2].partition(".")[0]
    if name in TIMM_HEADS_BY_NAME:
        return TIMM_HEADS_BY_NAME[name], f"config.json architecture {name!r}"
    parts = name.split("_")
    size = parts[1] if len(parts) > 1 else None
    heads = TIMM_SIZES.get(size, {}).get((hidden_size, mlp_dim))
    if heads is None:
        return None
    return heads, (
        f"config.json architecture {name!r} (timm's {size} size: width {hidden_size}, "
        f"MLP {mlp_dim}, {heads} heads)"
    )


# Published preprocessing by sub-family, when no hub config.json says it: mean, std, crop_pct.
TIMM_DEFAULTS = {
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9),
    "clip": (CLIP_MEAN, CLIP_STD, 0.9),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD, 1.0),
    "vit": (IMAGENET_MEAN, IMAGENET_STD, 0.9),
}


def timm_class_names(cfg: Mapping[str, Any]) -> list[str] | None:
    """``label_names`` of a timm hub ``config.json`` (synset ids become ImageNet names), or None."""
    from jaxvit_interp.data.imagenet import imagenet1k_names_from_synsets

    names = cfg.get("label_names") or (cfg.get("pretrained_cfg") or {}).get("label_names")
    if not isinstance(names, list | tuple) or not names:
        return None
    return list(imagenet1k_names_from_synsets(names) or names)


def timm_preprocessing(
    pretrained_cfg: Mapping[str, Any] | None, image_size, subfamily: str = "vit"
) -> Preprocessing:
    """timm's ``pretrained_cfg`` (mean, std, interpolation, crop_pct) as :class:`Preprocessing`.

    Without one, the sub-family's published values: ImageNet mean/std and ``crop_pct`` 0.9 for
    ViT and DeiT weights (timm's vit_jax-converted augreg weights use 0.5 and say so in their hub
    config), 1.0 for DINOv2, CLIP's statistics for CLIP and 0.5 for SigLIP; bicubic, the shorter
    side resized to ``size / crop_pct`` and centre-cropped.
    """
    cfg = dict(pretrained_cfg or {})
    mean, std, crop_pct = TIMM_DEFAULTS[subfamily]
    crop_pct = float(cfg.get("crop_pct", crop_pct))
    return Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", mean)),
        std=tuple(float(v) for v in cfg.get("std", std)),
        resize=math.floor(min(image_size) / crop_pct),
        crop=True,
        resample=cfg.get("interpolation", "bicubic"),
    )


class TimmFamily:
    """timm ``VisionTransformer`` state dicts, with a hub ``config.json`` if one was found."""

    name = "timm"

    def __init__(self, timm_config: Mapping[str, Any] | None = None):
        self.timm_config = dict(timm_config or {})
        self.description = "timm VisionTransformer" + (" with config.json" if timm_config else "")

    def facts(self, tensors: Mapping[str, np.ndarray]) -> Facts:
        for key, what in UNSUPPORTED:
            if key in tensors:
                raise CheckpointError(
                    f"timm checkpoint with {what} (key {key!r}) is not supported: this ViT has no "
                    "such layer"
                )
        facts = Facts()
        r = ShapeReader(tensors, facts)
        if (s := r.shape("patch_embed.proj.weight")) is not None:  # [D, C, ph, pw]
            r.set("hidden_size", s[0], "patch_embed.proj.weight")
            r.set("channels", s[1], "patch_embed.proj.weight")
            r.set("patch_size", (s[2], s[3]), "patch_embed.proj.weight")
        r.set("patch_bias", r.has("patch_embed.proj.bias"), how="presence of patch_embed.proj.bias")
        r.count_layers("blocks.{i}.")
        r.set("qkv_bias", r.has("blocks.0.attn.qkv.bias"), how="presence of blocks.0.attn.qkv.bias")
        if r.has("blocks.0.attn.qkv.weight") and not r.has("blocks.0.attn.proj.bias"):
            raise CheckpointError(
                "timm checkpoint without an attention output bias (proj_bias=False, no "
                "'blocks.0.attn.proj.bias') is not supported"
            )
        fc1, fc2 = r.shape("blocks.0.mlp.fc1.weight"), r.shape("blocks.0.mlp.fc2.weight")
        swiglu = False
        if fc1 is not None and fc2 is not None:
            r.set("mlp_dim", fc2[1], "blocks.0.mlp.fc2.weight")
            # timm's packed SwiGLU (DINOv2 giant): fc1 holds gate and value, twice fc2's input.
            swiglu = fc1[0] == 2 * fc2[1]
            if swiglu:
                r.set(
                    "mlp_activation", "swiglu", how="blocks.0.mlp.fc1 twice as wide as fc2's input"
                )
        r.set("layer_scale", r.has("blocks.0.ls1.gamma"), how="presence of blocks.0.ls1.gamma")
        r.set("pre_norm", r.has("norm_pre.weight"), how="presence of norm_pre.weight")
        r.set("position_embedding", "learned", how="timm's ViTs learn their position table")
        self._readout(r)
        registers = r.shape("reg_token")[1] if r.has("reg_token") else 0
        r.set("num_register_tokens", registers, how="presence and shape of reg_token")
        r.set("distillation_token", r.has("dist_token"), how="presence of dist_token")
        prefix = int(r.has("cls_token")) + int(r.has("dist_token")) + registers

        model_args = self.timm_config.get("model_args") or {}
        architecture = str(self.timm_config.get("architecture", ""))
        named = heads_from_architecture(
            architecture, facts.fields.get("hidden_size"), facts.fields.get("mlp_dim")
        )
        if "num_heads" in model_args:
            r.set("num_heads", int(model_args["num_heads"]), how="config.json model_args.num_heads")
        elif named is not None:
            r.set("num_heads", named[0], how=named[1])
            facts.notes.append(f"num_heads={named[0]} from {named[1]}")
        pretrained = self.timm_config.get("pretrained_cfg")
        patch = facts.fields.get("patch_size")
        # The size the model was built at (its table's grid) where model_args give it: a model
        # built with dynamic_img_size has pretrained_cfg input_size 224 whatever its table.
        built = model_args.get("img_size")
        if built is not None and patch:
            img = (int(built), int(built)) if isinstance(built, int) else tuple(map(int, built))
            facts.grid = (img[0] // patch[0], img[1] // patch[1])
            facts.size_source = f"its config.json says model_args img_size {img[0]}x{img[1]}"
        elif pretrained and "input_size" in pretrained and patch:
            img = tuple(int(v) for v in pretrained["input_size"][-2:])
            facts.grid = (img[0] // patch[0], img[1] // patch[1])
            facts.size_source = f"its config.json says pretrained_cfg input_size {img[0]}x{img[1]}"
        covered_default = None
        if (s := r.shape("pos_embed")) is not None:
            how = f"pos_embed has {s[1]} rows for {prefix} special tokens and the patches"
            if facts.grid is not None:
                covered = s[1] - facts.grid[0] * facts.grid[1]
                r.set("position_prefix_tokens", covered, how=how)
            else:
                # Without the grid the table's length is read as the square it most likely
                # covers: a default, so that a caller's config decides for a non-square grid.
                covered = covered_default = self._position_rows(s[1], prefix)
                facts.table_rows = s[1]
                if covered != prefix:
                    facts.notes.append(f"{how}: read as no rows for them (no_embed_class)")
            facts.num_patches = s[1] - covered
        elif r.has("patch_embed.proj.weight"):
            raise CheckpointError(
                "timm checkpoint without 'pos_embed' (pos_embed='none', e.g. rotary position "
                "embeddings) is not supported: this ViT adds a position table"
            )

        subfamily = self._subfamily(facts.fields)
        act = str(model_args.get("act_layer", ""))
        quick = "quickgelu" in architecture or act == "quick_gelu"
        clip_eps = subfamily == "clip" or "clip" in architecture
        facts.defaults = dict(
            # timm's CLIP models use PyTorch's LayerNorm default; its other ViTs 1e-6.
            layer_norm_eps=1e-5 if clip_eps else 1e-6,
            gelu_approximate=act == "gelu_tanh",
            position_interpolation="bicubic_antialias",
            preprocessing=lambda image_size: timm_preprocessing(pretrained, image_size, subfamily),
        )
        if not swiglu:
            facts.defaults["mlp_activation"] = "quick_gelu" if quick else "gelu"
        if covered_default is not None:
            facts.defaults["position_prefix_tokens"] = covered_default
        if clip_eps and not architecture:
            facts.notes.append(
                "LayerNorm epsilon 1e-5 assumed (timm's CLIP models; the file has norm_pre)"
            )
        class_names_fact(facts, timm_class_names(self.timm_config), "config.json label_names")
        self.description = self._describe(facts.fields, subfamily)
        return facts

    def _readout(self, r: ShapeReader) -> None:
        """Pooling, final norm and heads."""
        model_args = self.timm_config.get("model_args") or {}
        has_cls = r.has("cls_token")
        fc_norm = r.has("fc_norm.weight")
        if not fc_norm and not r.has("norm.weight") and r.has("patch_embed.proj.weight"):
            raise CheckpointError(
                "timm checkpoint without a final norm (neither 'norm.weight' nor "
                "'fc_norm.weight'; final_norm=False) is not supported"
            )
        if r.has("attn_pool.latent"):
            classifier, how = "map", "presence of attn_pool.latent"
        elif fc_norm or not has_cls or model_args.get("global_pool") == "avg":
            classifier, how = "gap", "fc_norm, no cls_token or config.json global_pool 'avg'"
        else:
            classifier, how = "token", "presence of cls_token"
        r.set("classifier", classifier, how=how)
        r.set("class_token", has_cls, how="presence of cls_token")
        r.set("fc_norm", fc_norm, how="presence of fc_norm.weight")
        r.set(
            "num_classes",
            r.shape("head.weight")[0] if r.has("head.weight") else 0,
            how="shape of head.weight (none: a backbone)",
        )
        r.set("distillation_head", r.has("head_dist.weight"), how="presence of head_dist.weight")
        rep = r.has("pre_logits.fc.weight")
        r.set(
            "representation_size",
            r.shape("pre_logits.fc.weight")[0] if rep else None,
            how="presence of pre_logits.fc.weight",
        )
        r.set("projection_dim", None, how="timm keeps an output projection as its head")

    @staticmethod
    def _position_rows(rows: int, prefix: int) -> int:
        """How many special tokens have a row in ``pos_embed``: all of them, or none
        (``no_embed_class``), whichever leaves a square number of patch rows (all, if both)."""
        for covered in (prefix, 0):
            patches = rows - covered
            if patches > 0 and math.isqrt(patches) ** 2 == patches:
                return covered
        return prefix  # not square either way: the settled grid's error names the table

    @staticmethod
    def _subfamily(fields: Mapping[str, Any]) -> str:
        if fields.get("classifier") == "map":
            return "siglip"
        if fields.get("pre_norm"):
            return "clip"
        if fields.get("layer_scale"):
            return "dinov2"
        return "vit"

    def _describe(self, fields: Mapping[str, Any], subfamily: str) -> str:
        named = {"siglip": "SigLIP-style", "clip": "CLIP-style", "dinov2": "DINOv2-style"}
        what = ["timm VisionTransformer", *([named[subfamily]] if subfamily in named else [])]
        what += feature_words(fields)
        return ", ".join(what) + (" (with config.json)" if self.timm_config else "")

    def rules(self, config: ViTConfig) -> list[Rule]:
        return rules_from_table(config, TOP, BLOCK)

    def ignored(self, key: str) -> str | None:
        return None


def looks_like(keys) -> bool:
    """Whether a flat key set uses timm's ViT names."""
    return "patch_embed.proj.weight" in keys or any(k.startswith("blocks.0.") for k in keys)
