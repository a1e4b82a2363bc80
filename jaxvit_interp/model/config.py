"""ViT configuration: a frozen dataclass, the size table, and each checkpoint family's preprocessing."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from jaxvit_interp.errors import InputError

Classifier = Literal["token", "gap"]


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Architecture of a Vision Transformer (names follow ``vit_jax``).

    Attributes:
      image_size: ``(height, width)`` of model input; each side must divide by the patch size.
      patch_size: ``(height, width)`` of one patch.
      channels: input channels.
      hidden_size: token width ``D``.
      num_layers: encoder blocks ``L``.
      num_heads: attention heads per block ``H``; ``hidden_size`` must divide by it.
      mlp_dim: width of the MLP inside each block.
      num_classes: classifier outputs.
      classifier: ``"token"`` (a CLS token, read at the end) or ``"gap"`` (no CLS token; the
        mean of the patch tokens is read).
      representation_size: width of the ``pre_logits`` tanh layer, or ``None`` for none.
      layer_norm_eps: LayerNorm epsilon (1e-6 in vit_jax and timm, 1e-12 in Hugging Face).
      gelu_approximate: tanh GELU (vit_jax, big_vision) or exact erf GELU (timm, Hugging Face).
      qkv_bias: whether query/key/value projections have biases.
      preprocessing: how raw images are turned into this model's input.
      class_names: a name per class, in class-index order, where the checkpoint (or the user)
        gives them; ``None`` when the model's classes are known only by index. Labels of
        images are matched against these names (see :mod:`jaxvit_interp.data.labels`).
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

    def __post_init__(self):
        # Accept ints for square sizes and lists from JSON, but store tuples so configs hash.
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value, value)
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.classifier not in ("token", "gap"):
            raise InputError(f"classifier must be 'token' or 'gap', got {self.classifier!r}")
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
        if self.class_names is not None:
            names = tuple(str(n) for n in self.class_names)
            if len(names) != self.num_classes:
                raise InputError(
                    f"class_names gives {len(names)} names for a model with "
                    f"{self.num_classes} classes"
                )
            object.__setattr__(self, "class_names", names)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(Gh, Gw)``."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def has_cls_token(self) -> bool:
        return self.classifier == "token"

    @property
    def num_tokens(self) -> int:
        """Tokens ``N``: CLS (when present) first, then patches row-major."""
        return self.num_patches + int(self.has_cls_token)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **changes) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        if self.class_names is not None:
            d["class_names"] = list(self.class_names)
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
