"""Hugging Face transformers vision models: ViT, DeiT, DINOv2 (with registers), CLIP, SigLIP.

Three layouts of the encoder, one per lineage, each under the backbone's prefix (``vit.``,
``deit.``, ``dinov2.``, ``vision_model.``, or none for a bare ``*Model``)::

    ViT, DeiT   embeddings.{cls_token, distillation_token, position_embeddings [1, N, D],
                  patch_embeddings.projection}
                encoder.layer.{i}.{layernorm_before, attention.attention.{query,key,value},
                  attention.output.dense, layernorm_after, intermediate.dense, output.dense}
                layernorm
    DINOv2      embeddings.{cls_token, register_tokens, position_embeddings [1, 1 + P, D],
                  patch_embeddings.projection}  (mask_token: masked pre-training only)
                encoder.layer.{i}.{norm1, attention.attention.{query,key,value},
                  attention.output.dense, layer_scale1.lambda1, norm2,
                  mlp.{fc1, fc2} or mlp.{weights_in, weights_out} (SwiGLU), layer_scale2.lambda1}
                layernorm
    CLIP,       embeddings.{class_embedding [D], position_embedding.weight [N, D],
    SigLIP        patch_embedding}  (CLIP: pre_layrnorm; no CLS token and a patch bias in SigLIP)
                encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2,
                  mlp.fc1, mlp.fc2}
                post_layernorm  (SigLIP: head.{probe, attention.in_proj_*, attention.out_proj,
                  layernorm, mlp.fc1, mlp.fc2}, the attention-pooling head)

and the heads beside the backbone: ``classifier`` (ViT, DeiT), ``cls_classifier`` and
``distillation_classifier`` (DeiT with teacher), ``visual_projection`` (CLIP with projection).
Text towers, poolers and mask tokens of the same files are ignored by name.

Which model a file holds comes from ``config.json`` (``model_type``) or, without one, from its
keys; the number of heads from ``config.json`` or a stated guess.  Position tables are
interpolated as transformers does (bicubic; with antialiasing for DINOv2 with registers).
"""

from __future__ import annotations

import dataclasses
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
    Entry,
    Rule,
    attention_entries,
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
    INCEPTION_PREPROCESSING,
    Preprocessing,
    ViTConfig,
)

# Pillow's integer filter codes, as Hugging Face image processors store them.
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Hugging Face activation names: "gelu" is the exact erf form, these others the tanh one.
HF_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")


@dataclasses.dataclass(frozen=True)
class Arch:
    """One Hugging Face model type.

    Attributes:
      model_types: ``config.json`` ``model_type`` values (the vision sub-model's and the
        two-tower model's).
      title: in words, with the transformers classes.
      layout: ``"vit"``, ``"dinov2"`` or ``"clip"``: the encoder's names (module docstring).
      prefixes: where the backbone's keys may start, most specific first.
      act, eps: ``hidden_act`` and ``layer_norm_eps`` when ``config.json`` does not say.
      interpolation: how transformers resamples the position table.
      preprocessing: the published image processor's settings, a function of the image size.
    """

    model_types: tuple[str, ...]
    title: str
    layout: str
    prefixes: tuple[str, ...]
    act: str
    eps: float
    interpolation: str
    preprocessing: Any


def _clip_preprocessing(image_size) -> Preprocessing:
    return Preprocessing(
        mean=CLIP_MEAN, std=CLIP_STD, resize=min(image_size), crop=True, resample="bicubic"
    )


def _dinov2_preprocessing(image_size) -> Preprocessing:
    # facebook/dinov2-*: shorter side to 256, centre crop to 224 (the 0.875 of ImageNet eval).
    return Preprocessing(
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize=round(min(image_size) * 256 / 224),
        crop=True,
        resample="bicubic",
    )


ARCHS: dict[str, Arch] = {
    "vit": Arch(
        ("vit",),
        "Hugging Face ViT (ViTModel / ViTForImageClassification)",
        "vit",
        ("vit.", ""),
        "gelu",
        1e-12,
        "bicubic",
        lambda image_size: INCEPTION_PREPROCESSING,
    ),
    "deit": Arch(
        ("deit",),
        "Hugging Face DeiT (DeiTModel / DeiTForImageClassification[WithTeacher])",
        "vit",
        ("deit.", ""),
        "gelu",
        1e-12,
        "bicubic",
        lambda image_size: Preprocessing(
            mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(256, 256), crop=True, resample="bicubic"
        ),
    ),
    "dinov2": Arch(
        ("dinov2",),
        "Hugging Face DINOv2 (Dinov2Model)",
        "dinov2",
        ("dinov2.", ""),
        "gelu",
        1e-6,
        "bicubic",
        _dinov2_preprocessing,
    ),
    "dinov2_with_registers": Arch(
        ("dinov2_with_registers",),
        "Hugging Face DINOv2 with registers (Dinov2WithRegistersModel)",
        "dinov2",
        ("dinov2_with_registers.", ""),
        "gelu",
        1e-6,
        "bicubic_antialias",
        _dinov2_preprocessing,
    ),
    "clip": Arch(
        ("clip_vision_model", "clip"),
        "Hugging Face CLIP vision tower (CLIPVisionModel[WithProjection] / CLIPModel)",
        "clip",
        ("vision_model.",),
        "quick_gelu",
        1e-5,
        "bicubic",
        _clip_preprocessing,
    ),
    "siglip": Arch(
        ("siglip_vision_model", "siglip"),
        "Hugging Face SigLIP vision tower (SiglipVisionModel / SiglipModel)",
        "clip",
        ("vision_model.",),
        "gelu_pytorch_tanh",
        1e-6,
        "bicubic",
        lambda image_size: Preprocessing(resample="bicubic"),
    ),
}
SUPPORTED_MODEL_TYPES = tuple(t for arch in ARCHS.values() for t in arch.model_types)

# Keys beside the backbone that say nothing about the image model, with the reason.
IGNORED = (
    ("pooler.", "the pooler (dense + tanh on CLS) is not used by the classifier"),
    ("embeddings.mask_token", "the mask token is used only for masked-image pre-training"),
    ("text_model.", "the text tower"),
    ("text_projection.", "the text tower's projection"),
    ("logit_scale", "the image-text similarity scale"),
    ("logit_bias", "the image-text similarity bias"),
)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


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


def hf_preprocessing(pp: Mapping[str, Any], image_size: tuple[int, int]) -> Preprocessing:
    """A Hugging Face ``preprocessor_config.json`` as :class:`Preprocessing`."""
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


def _processor_output_size(pp: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The image size a ``preprocessor_config.json`` produces after its centre crop, or None."""
    if not pp or not pp.get("do_center_crop", False):
        return None
    crop = pp.get("crop_size")
    if isinstance(crop, Mapping) and "height" in crop and "width" in crop:
        return (int(crop["height"]), int(crop["width"]))
    if isinstance(crop, int):
        return (crop, crop)
    return None


def _block_table(layout: str, swiglu: bool) -> list[Entry]:
    """Encoder-block rules of one layout, sources relative to the backbone prefix."""
    if layout == "clip":
        block = "encoder.layers.{i}."
        attention = {n: f"{block}self_attn.{n[0]}_proj" for n in ("query", "key", "value")}
        attention["out"] = f"{block}self_attn.out_proj"
        norms, mlp = ("layer_norm1", "layer_norm2"), ("mlp.fc1", "mlp.fc2")
    else:
        block = "encoder.layer.{i}."
        attention = {n: f"{block}attention.attention.{n}" for n in ("query", "key", "value")}
        attention["out"] = f"{block}attention.output.dense"
        if layout == "vit":
            norms, mlp = (
                ("layernorm_before", "layernorm_after"),
                ("intermediate.dense", "output.dense"),
            )
        else:
            norms = ("norm1", "norm2")
            mlp = ("mlp.weights_in", "mlp.weights_out") if swiglu else ("mlp.fc1", "mlp.fc2")
    return [
        *norm_entries(block + norms[0], "LayerNorm_0"),
        *attention_entries(attention, MHA),
        (f"{block}layer_scale1.lambda1", ("LayerScale_1/scale",), "same"),
        *norm_entries(block + norms[1], "LayerNorm_2"),
        *linear_entries(block + mlp[0], f"{MLP}/Dense_0"),
        *linear_entries(block + mlp[1], f"{MLP}/Dense_1"),
        (f"{block}layer_scale2.lambda1", ("LayerScale_3/scale",), "same"),
    ]


def _top_table(layout: str, prefix: str, teacher: bool) -> list[Entry]:
    """Everything but the blocks; backbone sources under ``prefix``, heads beside it."""
    p = prefix
    posemb = ("Transformer/posembed_input/pos_embedding",)
    if layout == "clip":
        head = p + "head."
        return [
            (p + "embeddings.patch_embedding.weight", ("embedding/kernel",), "conv"),
            (p + "embeddings.patch_embedding.bias", ("embedding/bias",), "same"),
            (p + "embeddings.class_embedding", ("cls",), "token"),
            (p + "embeddings.position_embedding.weight", posemb, "table"),
            *norm_entries(p + "pre_layrnorm", "Transformer/pre_norm"),
            *norm_entries(p + "post_layernorm", "Transformer/encoder_norm"),
            ("visual_projection.weight", ("projection/kernel",), "linear"),
            *map_head_entries(
                probe=head + "probe",
                attention=[
                    *fused_entries(
                        head + "attention.in_proj_weight",
                        head + "attention.in_proj_bias",
                        tuple(f"{MAP}/{n}" for n in ("query", "key", "value")),
                    ),
                    *linear_entries(head + "attention.out_proj", f"{MAP}/out", "heads_out"),
                ],
                norm=head + "layernorm",
                mlp=(head + "mlp.fc1", head + "mlp.fc2"),
            ),
        ]
    # DeiTForImageClassificationWithTeacher names its heads apart; the others call it classifier.
    return [
        (p + "embeddings.patch_embeddings.projection.weight", ("embedding/kernel",), "conv"),
        (p + "embeddings.patch_embeddings.projection.bias", ("embedding/bias",), "same"),
        (p + "embeddings.cls_token", ("cls",), "same"),
        (p + "embeddings.distillation_token", ("distillation",), "same"),
        (p + "embeddings.register_tokens", ("registers",), "same"),
        (p + "embeddings.position_embeddings", posemb, "same"),
        *norm_entries(p + "layernorm", "Transformer/encoder_norm"),
        *linear_entries("cls_classifier" if teacher else "classifier", "head"),
        *linear_entries("distillation_classifier", "head_dist"),
    ]


class HuggingFaceFamily:
    """One Hugging Face model type's names, with its ``config.json`` if one was found."""

    name = "hf"

    def __init__(
        self,
        arch: str,
        prefix: str,
        hf_config: Mapping[str, Any] | None = None,
        preprocessor: Mapping[str, Any] | None = None,
    ):
        self.arch = ARCHS[arch]
        self.prefix = prefix
        cfg = dict(hf_config or {})
        # Two-tower models keep the image tower's settings under vision_config.
        self.hf_config = dict(cfg.get("vision_config") or cfg) if "vision_config" in cfg else cfg
        self.labels = cfg  # id2label sits on the outer config
        self.preprocessor = preprocessor
        self.has_config = bool(hf_config)
        self.description = self.arch.title + (" with config.json" if hf_config else "")
        self.swiglu = False
        self.deit_teacher = False

    def _key(self, name: str) -> str:
        return self.prefix + name

    def facts(self, tensors: Mapping[str, np.ndarray]) -> Facts:
        a, cfg = self.arch, self.hf_config
        facts = Facts()
        r = ShapeReader(tensors, facts)
        clip = a.layout == "clip"
        patch = self._key(
            "embeddings.patch_embedding.weight"
            if clip
            else "embeddings.patch_embeddings.projection.weight"
        )
        if (s := r.shape(patch)) is not None:  # [D, C, ph, pw]
            r.set("hidden_size", s[0], patch)
            r.set("channels", s[1], patch)
            r.set("patch_size", (s[2], s[3]), patch)
        r.set(
            "patch_bias",
            r.has(patch[: -len("weight")] + "bias"),
            how=f"presence of {patch[:-6]}bias",
        )
        block = self._key("encoder.layers.{i}." if clip else "encoder.layer.{i}.")
        r.count_layers(block)
        first = block.format(i=0)
        q_bias = first + ("self_attn.q_proj.bias" if clip else "attention.attention.query.bias")
        r.set("qkv_bias", r.has(q_bias), how=f"presence of {q_bias}")
        self.swiglu = r.has(first + "mlp.weights_out.weight")
        mlp_out = first + (
            "mlp.weights_out.weight"
            if self.swiglu
            else ("output.dense.weight" if a.layout == "vit" else "mlp.fc2.weight")
        )
        if (s := r.shape(mlp_out)) is not None:  # [D, F]
            r.set("mlp_dim", s[1], mlp_out)
        if self.swiglu:
            r.set("mlp_activation", "swiglu", how=f"presence of {mlp_out}")
        scale = first + "layer_scale1.lambda1"
        r.set("layer_scale", r.has(scale), how=f"presence of {scale}")
        pre = self._key("pre_layrnorm.weight")
        r.set("pre_norm", r.has(pre), how=f"presence of {pre}")
        r.set("fc_norm", False, how="Hugging Face normalises every token before pooling")
        r.set("representation_size", None, how="Hugging Face ViTs have no pre_logits layer")
        r.set("position_embedding", "learned", how=f"{a.title} learns its position table")

        # Special tokens and pooling.
        cls_key = self._key("embeddings.class_embedding" if clip else "embeddings.cls_token")
        has_cls = r.has(cls_key)
        dist = self._key("embeddings.distillation_token")
        registers = self._key("embeddings.register_tokens")
        r.set("distillation_token", r.has(dist), how=f"presence of {dist}")
        num_registers = r.shape(registers)[1] if r.has(registers) else 0
        r.set("num_register_tokens", num_registers, how=f"presence and shape of {registers}")
        probe = self._key("head.probe")
        if r.has(probe):
            r.set("classifier", "map", how=f"presence of {probe}")
        elif has_cls:
            r.set("classifier", "token", how=f"presence of {cls_key}")
        else:
            raise CheckpointError(
                f"{a.title}: the file has neither a CLS token ({cls_key!r}) nor an attention-"
                f"pooling head ({probe!r}), so it has no pooled output to analyse"
            )
        r.set("class_token", has_cls, how=f"presence of {cls_key}")
        self._heads(r)

        # Position table: DINOv2 with registers gives the registers no row.
        table = self._key(
            "embeddings.position_embedding.weight" if clip else "embeddings.position_embeddings"
        )
        covered = int(has_cls) + int(r.has(dist))
        r.set(
            "position_prefix_tokens",
            covered,
            how=f"{a.title}: the position table covers CLS and the distillation token only",
        )
        if (s := r.shape(table)) is not None:
            facts.num_patches = s[-2] - covered

        if "num_attention_heads" in cfg:
            r.set(
                "num_heads", int(cfg["num_attention_heads"]), how="config.json num_attention_heads"
            )
        if "image_size" in cfg and "patch_size" in cfg:
            img, patch_size = _pair(cfg["image_size"]), _pair(cfg["patch_size"])
            facts.grid = (img[0] // patch_size[0], img[1] // patch_size[1])
            facts.size_source = f"its config.json says image_size {cfg['image_size']}"
        act = cfg.get("hidden_act", a.act)
        if act == "quick_gelu":
            activation, approximate = "quick_gelu", False
        elif act == "gelu" or act in HF_TANH_GELU:
            activation, approximate = "gelu", act != "gelu"
        else:
            raise CheckpointError(
                f"config.json hidden_act={act!r}: only GELU ('gelu' exact, or the tanh forms "
                f"{', '.join(HF_TANH_GELU)}) and 'quick_gelu' are supported"
            )
        pp = self.preprocessor
        facts.defaults = dict(
            layer_norm_eps=float(cfg.get("layer_norm_eps", a.eps)),
            gelu_approximate=approximate,
            position_interpolation=a.interpolation,
            preprocessing=(
                a.preprocessing if pp is None else (lambda size: hf_preprocessing(pp, size))
            ),
        )
        if not self.swiglu:
            facts.defaults["mlp_activation"] = activation
        if a.layout == "dinov2" and (size := _processor_output_size(pp)) is not None:
            # DINOv2 interpolates its position table to every input; its processor sets the size.
            facts.image_size = size
            facts.size_source = f"its preprocessor_config.json crops to {size[0]}x{size[1]}"
            facts.notes.append(
                f"image size {size[0]}x{size[1]} from preprocessor_config.json crop_size (DINOv2 "
                "interpolates its position table to the input's grid)"
            )
        elif a.layout == "dinov2" and facts.grid is not None:
            # Saved with save_pretrained alone: the table's size (518), four times the tokens
            # of the 224 that DINOv2's processor would crop to.
            facts.size_source += " and no preprocessor_config.json gives a crop size"
            facts.notes.append(
                f"image size from config.json image_size {cfg['image_size']}: no "
                "preprocessor_config.json gives a crop size (DINOv2's crops to 224); "
                "image_size= (--image-size) loads it at another size"
            )
        class_names_fact(facts, hf_class_names(self.labels), "config.json id2label")
        self.description = self._describe(facts.fields)
        return facts

    def _heads(self, r: ShapeReader) -> None:
        """Classifier(s) or projection: ``num_classes``, ``distillation_head``, ``projection_dim``."""
        self.deit_teacher = r.has("distillation_classifier.weight")
        head = r.first("cls_classifier.weight", "classifier.weight")
        if self.arch.layout == "dinov2" and head is not None:
            raise CheckpointError(
                f"{self.arch.title}: Dinov2ForImageClassification's classifier reads the CLS token "
                "and the mean of the patch tokens side by side, a pooling this model does not "
                "have; load the backbone (Dinov2Model's keys) and attach the classifier as a "
                "linear probe, or analyse the backbone alone"
            )
        r.set(
            "num_classes",
            r.shape(head)[0] if head else 0,
            how=f"shape of {head or 'no classifier'}",
        )
        r.set(
            "distillation_head",
            self.deit_teacher,
            how="presence of distillation_classifier.weight",
        )
        projection = "visual_projection.weight"
        r.set(
            "projection_dim",
            r.shape(projection)[0] if r.has(projection) else None,
            how=f"presence of {projection}",
        )

    def _describe(self, fields: Mapping[str, Any]) -> str:
        what = ", ".join([self.arch.title, *feature_words(fields)])
        return what + (" (with config.json)" if self.has_config else "")

    def rules(self, config: ViTConfig) -> list[Rule]:
        top = _top_table(self.arch.layout, self.prefix, self.deit_teacher)
        block = [
            (self.prefix + source, targets, kind)
            for source, targets, kind in _block_table(self.arch.layout, self.swiglu)
        ]
        return rules_from_table(config, top, block)

    def ignored(self, key: str) -> str | None:
        inner = key[len(self.prefix) :] if key.startswith(self.prefix) else key
        for start, why in IGNORED:
            if inner.startswith(start) or key.startswith(start):
                return why
        return None


def _model_type(config: Mapping[str, Any] | None) -> str | None:
    return None if not config else config.get("model_type")


def detect(keys, config_json: Mapping[str, Any] | None, preprocessor) -> HuggingFaceFamily | None:
    """The Hugging Face family of a flat key set (by ``config.json`` when present), or None."""
    keys = set(keys)
    model_type = _model_type(config_json)
    for name, arch in ARCHS.items():
        if model_type is not None and model_type not in arch.model_types:
            continue
        for prefix in arch.prefixes:
            if _looks_like(name, prefix, keys):
                return HuggingFaceFamily(name, prefix, config_json, preprocessor)
    return None


def _looks_like(arch: str, prefix: str, keys: set[str]) -> bool:
    """Whether ``keys`` hold ``arch``'s backbone under ``prefix``."""
    has = lambda name: prefix + name in keys  # noqa: E731
    layout = ARCHS[arch].layout
    if layout == "clip":
        bias = has("embeddings.patch_embedding.bias")
        clip_like = has("embeddings.class_embedding") and not bias
        return has("embeddings.patch_embedding.weight") and (clip_like if arch == "clip" else bias)
    if not has("embeddings.patch_embeddings.projection.weight"):
        return False
    if layout == "vit":
        vit_names = has("encoder.layer.0.layernorm_before.weight")
        return vit_names and (has("embeddings.distillation_token") == (arch == "deit"))
    registers = has("embeddings.register_tokens")
    return has("encoder.layer.0.norm1.weight") and registers == (arch == "dinov2_with_registers")
