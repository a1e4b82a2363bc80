"""ViT configuration: a frozen dataclass, the size table, and each checkpoint family's preprocessing."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from jaxvit_interp.errors import InputError

Classifier = Literal["token", "gap", "map"]
MlpActivation = Literal["gelu", "quick_gelu", "swiglu"]
PositionEmbedding = Literal["learned", "sincos2d"]
PositionInterpolation = Literal["bilinear", "bicubic", "bicubic_antialias"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How raw pixels become model input; travels with a loaded checkpoint.

    Attributes:
      mean: per-channel mean subtracted from pixels scaled to [0, 1].
      std: per-channel standard deviation divided out after the mean.
      resize: shorter side (int) or exact ``(height, width)`` to resize to before cropping;
        ``None`` resizes straight to the model's image size.
      crop: whether to centre-crop to the model's image size after resizing.
      resample: Pillow resampling filter name ("bilinear", "bicubic", "nearest").
    """

    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: int | tuple[int, int] | None = None
    crop: bool = False
    resample: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        d = dict(d)
        d["mean"] = tuple(d.get("mean", cls.mean))
        d["std"] = tuple(d.get("std", cls.std))
        if isinstance(d.get("resize"), list):
            d["resize"] = tuple(d["resize"])
        return cls(**d)


# vit_jax / big_vision / Hugging Face ViT: pixels mapped to [-1, 1].
INCEPTION_PREPROCESSING = Preprocessing()
# timm's ImageNet default (DeiT, most in1k-only weights).
IMAGENET_PREPROCESSING = Preprocessing(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=248, crop=True, resample="bicubic"
)
IMAGENET_MEAN, IMAGENET_STD = IMAGENET_PREPROCESSING.mean, IMAGENET_PREPROCESSING.std
# OpenAI CLIP's pixel statistics, kept by OpenCLIP, timm and Hugging Face for CLIP towers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Architecture of a Vision Transformer (names follow ``vit_jax``).

    Tokens are ordered CLS (when present), distillation token (when present), register tokens,
    then the patches row-major; the tokens before the patches are the *special* tokens.

    Attributes:
      image_size: ``(height, width)`` of model input; each side must divide by the patch size.
      patch_size: ``(height, width)`` of one patch.
      channels: input channels.
      hidden_size: token width ``D``.
      num_layers: encoder blocks ``L``.
      num_heads: attention heads per block ``H``; ``hidden_size`` must divide by it.
      mlp_dim: width of the MLP inside each block (for SwiGLU the width after gating).
      num_classes: classifier outputs; 0 for a backbone without a classifier, whose
        :attr:`~jaxvit_interp.model.vit.ModelOutput.logits` are ``[batch, 0]`` and whose pooled
        vector (``pre_logits``) is its output.
      classifier: how the last block's tokens become the vector the head reads: ``"token"`` the
        CLS token, ``"gap"`` the mean of the patch tokens, ``"map"`` big_vision's multi-head
        attention-pooling head (a learned probe attending over the patch tokens, then an MLP).
      representation_size: width of the ``pre_logits`` tanh layer, or ``None`` for none.
      layer_norm_eps: LayerNorm epsilon (1e-6 in vit_jax and timm, 1e-12 in Hugging Face ViT,
        1e-5 in CLIP).
      gelu_approximate: tanh GELU (vit_jax, big_vision) or exact erf GELU (timm, Hugging Face)
        where ``mlp_activation`` is ``"gelu"``.
      qkv_bias: whether query/key/value projections have biases.
      preprocessing: how raw images are turned into this model's input.
      class_names: a name per class, in class-index order, where the checkpoint (or the user)
        gives them; ``None`` when the model's classes are known only by index. Labels of
        images are matched against these names (see :mod:`jaxvit_interp.data.labels`).
      class_token: whether there is a CLS token; ``None`` (the default) has one exactly when
        ``classifier`` is ``"token"``. ``True`` with ``"gap"`` is timm's ``global_pool="avg"``
        model with a class token (MAE fine-tunes).
      distillation_token: a DeiT distillation token after CLS.
      distillation_head: a second classifier ``head_dist`` reads the distillation token and the
        logits are the mean of both heads (DeiT's distilled inference); the pooled vector is then
        the mean of the two tokens, as timm gives it.
      num_register_tokens: register tokens after CLS and distillation (DINOv2 with registers).
      pre_norm: a LayerNorm on the tokens entering block 0 (CLIP's ``ln_pre``).
      layer_scale: a learned per-channel factor on each block's attention and MLP outputs
        (``ls1``/``ls2`` in timm, ``lambda1`` in Hugging Face DINOv2).
      mlp_activation: ``"gelu"`` (its form set by ``gelu_approximate``), ``"quick_gelu"``
        (``x * sigmoid(1.702 x)``, OpenAI CLIP) or ``"swiglu"`` (DINOv2's gated MLP
        ``silu(gate) * value``, the first product ``2 * mlp_dim`` wide, gate half first).
      fc_norm: the final LayerNorm normalises the pooled vector instead of every token before
        pooling (timm's ``fc_norm``).
      projection_dim: width of a linear output projection without bias after pooling (CLIP's
        image projection), or ``None``; its output is the pooled vector the head, if any, reads.
      patch_bias: whether the patch embedding has a bias (CLIP's has none).
      position_embedding: ``"learned"`` (a table, a parameter) or ``"sincos2d"`` (big_vision's
        fixed 2-D sin-cos table of the patch grid, computed for any image size).
      position_prefix_tokens: how many leading special tokens have a row in the learned table;
        the others get no position embedding. ``None`` (the default): all of them.
      position_interpolation: how a learned table is resampled to another patch grid when the
        model is loaded at another image size: ``"bilinear"`` (vit_jax, big_vision),
        ``"bicubic"`` (Hugging Face ViT, DeiT, DINOv2, CLIP, SigLIP: PyTorch's bicubic) or
        ``"bicubic_antialias"`` (timm, OpenCLIP, Hugging Face DINOv2 with registers).
      heads_per_layer: heads each block has after heads were removed physically
        (:func:`~jaxvit_interp.model.prune.remove_heads`), each at most ``num_heads``; ``None``
        (the default): ``num_heads`` in every block.  ``head_dim`` stays
        ``hidden_size / num_heads``.  Such a model runs and is saved and loaded like any other;
        the per-head analyses need the unpruned model.
    """

    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    classifier: Classifier = "token"
    representation_size: int | None = None
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True
    qkv_bias: bool = True
    preprocessing: Preprocessing = INCEPTION_PREPROCESSING
    class_names: tuple[str, ...] | None = None
    class_token: bool | None = None
    distillation_token: bool = False
    distillation_head: bool = False
    num_register_tokens: int = 0
    pre_norm: bool = False
    layer_scale: bool = False
    mlp_activation: MlpActivation = "gelu"
    fc_norm: bool = False
    projection_dim: int | None = None
    patch_bias: bool = True
    position_embedding: PositionEmbedding = "learned"
    position_prefix_tokens: int | None = None
    position_interpolation: PositionInterpolation = "bilinear"
    heads_per_layer: tuple[int, ...] | None = None

    def __post_init__(self):
        # Accept ints for square sizes and lists from JSON, but store tuples so configs hash.
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value, value)
            object.__setattr__(self, name, tuple(int(v) for v in value))
        for name, allowed in (
            ("classifier", ("token", "gap", "map")),
            ("mlp_activation", ("gelu", "quick_gelu", "swiglu")),
            ("position_embedding", ("learned", "sincos2d")),
            ("position_interpolation", ("bilinear", "bicubic", "bicubic_antialias")),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"{name} must be one of {', '.join(map(repr, allowed))}, got "
                    f"{getattr(self, name)!r}"
                )
        for side, (img, patch) in zip(("height", "width"), zip(self.image_size, self.patch_size)):
            if img % patch:
                raise InputError(
                    f"image {side} {img} does not divide by patch {side} {patch} "
                    f"(image_size={self.image_size}, patch_size={self.patch_size})"
                )
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"hidden_size {self.hidden_size} does not divide by num_heads {self.num_heads}"
            )
        if self.num_classes < 0 or self.num_register_tokens < 0:
            raise InputError("num_classes and num_register_tokens must not be negative")
        # Stored in one canonical form, so that two configs of the same model compare equal.
        if self.class_token == (self.classifier == "token"):
            object.__setattr__(self, "class_token", None)
        if self.position_prefix_tokens == self.num_prefix_tokens:
            object.__setattr__(self, "position_prefix_tokens", None)
        self._check_combinations()
        if self.class_names is not None:
            names = tuple(str(n) for n in self.class_names)
            if len(names) != self.num_classes:
                raise InputError(
                    f"class_names gives {len(names)} names for a model with "
                    f"{self.num_classes} classes"
                )
            object.__setattr__(self, "class_names", names)

    def _check_combinations(self) -> None:
        problems = []
        if self.classifier == "token" and not self.has_cls_token:
            problems.append('classifier "token" reads the CLS token, and class_token is False')
        if self.distillation_head:
            if not self.distillation_token:
                problems.append("distillation_head needs distillation_token")
            if self.classifier != "token" or self.num_classes == 0:
                problems.append('distillation_head needs classifier "token" and classes')
            if self.representation_size or self.projection_dim or self.fc_norm:
                problems.append(
                    "distillation_head reads the tokens themselves: no representation_size, "
                    "projection_dim or fc_norm"
                )
        if self.classifier == "map" and self.mlp_activation == "swiglu":
            problems.append('classifier "map" has a plain MLP; mlp_activation "swiglu" has none')
        if self.position_embedding == "sincos2d" and self.hidden_size % 4:
            problems.append("sincos2d position embeddings need hidden_size divisible by 4")
        if self.heads_per_layer is not None:
            counts = tuple(int(n) for n in self.heads_per_layer)
            object.__setattr__(self, "heads_per_layer", counts)
            if len(counts) != self.num_layers or not all(0 <= n <= self.num_heads for n in counts):
                problems.append(
                    f"heads_per_layer {counts} needs {self.num_layers} counts between 0 and "
                    f"num_heads {self.num_heads}"
                )
        if self.position_prefix_tokens is not None and not (
            0 <= self.position_prefix_tokens <= self.num_prefix_tokens
        ):
            problems.append(
                f"position_prefix_tokens {self.position_prefix_tokens} is not between 0 and the "
                f"{self.num_prefix_tokens} special tokens"
            )
        if problems:
            raise InputError("inconsistent ViTConfig: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(Gh, Gw)``."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def has_cls_token(self) -> bool:
        return self.classifier == "token" if self.class_token is None else self.class_token

    @property
    def num_prefix_tokens(self) -> int:
        """Special tokens before the patches: CLS, distillation, registers (``T``)."""
        return int(self.has_cls_token) + int(self.distillation_token) + self.num_register_tokens

    @property
    def num_tokens(self) -> int:
        """Tokens ``N = T + Gh*Gw``: the special tokens first, then patches row-major."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def num_position_prefix_rows(self) -> int:
        """Rows of the learned position table before the patch rows."""
        if self.position_prefix_tokens is None:
            return self.num_prefix_tokens
        return self.position_prefix_tokens

    @property
    def mlp_in_dim(self) -> int:
        """Width of the MLP's first product: ``2 * mlp_dim`` for SwiGLU (gate and value)."""
        return 2 * self.mlp_dim if self.mlp_activation == "swiglu" else self.mlp_dim

    @property
    def pooled_size(self) -> int:
        """Width of the pooled vector the classifier head (or a probe) reads."""
        return self.projection_dim or self.representation_size or self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def heads_in_layer(self, layer: int) -> int:
        """Heads block ``layer`` has (``num_heads`` unless heads were removed physically)."""
        return self.num_heads if self.heads_per_layer is None else self.heads_per_layer[layer]

    def replace(self, **changes) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        if self.class_names is not None:
            d["class_names"] = list(self.class_names)
        if self.heads_per_layer is not None:
            d["heads_per_layer"] = list(self.heads_per_layer)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown ViTConfig field(s): {', '.join(unknown)}")
        d = dict(d)
        if "preprocessing" in d and isinstance(d["preprocessing"], dict):
            d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        return cls(**d)

    @classmethod
    def from_variant(cls, variant: str, **overrides) -> ViTConfig:
        """``ViTConfig.from_variant("B/16", num_classes=10)``; see :data:`VARIANTS`."""
        name, _, patch = variant.partition("/")
        if name not in VARIANTS or not patch.isdigit():
            raise InputError(
                f"unknown ViT variant {variant!r}; expected NAME/PATCH with NAME one of "
                f"{', '.join(VARIANTS)} (e.g. 'B/16')"
            )
        fields = dict(VARIANTS[name])
        fields["patch_size"] = (int(patch), int(patch))
        fields.update(overrides)
        return cls(**fields)


# Width, depth, heads and MLP width of the published sizes, plus small ones for tests.
VARIANTS: dict[str, dict[str, int]] = {
    "mu": dict(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32),
    "Test": dict(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64),
    "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "M": dict(hidden_size=512, num_layers=12, num_heads=8, mlp_dim=2048),
    "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "H": dict(hidden_size=1280, num_layers=32, num_heads=16, mlp_dim=5120),
}
