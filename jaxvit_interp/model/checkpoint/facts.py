"""What a checkpoint says about its architecture, read from tensor shapes and side files."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from jaxvit_interp.model.checkpoint.errors import CheckpointError, shape_str
from jaxvit_interp.model.checkpoint.rules import Rule
from jaxvit_interp.model.config import VARIANTS, ViTConfig

# ViTConfig fields fixed by the tensors: a user config must agree with the file on these.
# image_size is not among them: a different size resamples the position embeddings.
# mlp_activation is one only where the tensors show SwiGLU; whether a plain MLP uses GELU or
# quick_gelu they cannot show, and a family gives it as a default.
SHAPE_FIELDS: tuple[str, ...] = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "mlp_dim",
    "num_classes",
    "patch_size",
    "channels",
    "classifier",
    "representation_size",
    "qkv_bias",
    "class_token",
    "distillation_token",
    "distillation_head",
    "num_register_tokens",
    "pre_norm",
    "layer_scale",
    "mlp_activation",
    "fc_norm",
    "projection_dim",
    "patch_bias",
    "position_embedding",
    "position_prefix_tokens",
)
# A square image of this side is assumed for sin-cos position embeddings when nothing gives the
# size: the table is computed for any grid, so the file cannot tell.
DEFAULT_IMAGE_SIDE = 224


@dataclasses.dataclass
class Facts:
    """What one checkpoint file fixes about the model.

    Attributes:
      fields: ``ViTConfig`` fields read from the file (a subset of :data:`SHAPE_FIELDS`;
        ``num_heads`` is absent when the file cannot tell it).
      sources: for each field in ``fields``, where it was read (for error messages).
      num_patches: patches ``Gh*Gw`` the position embeddings cover, or None if unreadable.
      grid: the patch grid ``(Gh, Gw)`` when a side file states the image size, else None
        (then a square grid is assumed unless the caller's config says otherwise).
      table_rows: the position table's rows where the file leaves open how many belong to
        special tokens (timm's ``no_embed_class``), else None; a caller's config then decides,
        and ``num_patches`` is only the family's reading.
      image_size: the image size to load the model at when it is not the file's (a DINOv2
        folder's preprocessor crops to 224 while its table covers 518), else None.
      size_source: why the model is loaded at its image size, as a clause ("its config.json
        says image_size 518"), where a side file or stored config gives ``grid`` or
        ``image_size``; else None (the loader says how it read the table).
      defaults: the family's values for the fields tensors cannot show (``layer_norm_eps``,
        ``gelu_approximate``, ``mlp_activation``, ``position_interpolation``,
        ``preprocessing``, ``class_names``); a value may be a function of ``image_size``.
      missing: keys the reader needed and did not find.
      notes: assumptions made, reported by ``inspect_checkpoint``.
    """

    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    num_patches: int | None = None
    grid: tuple[int, int] | None = None
    table_rows: int | None = None
    image_size: tuple[int, int] | None = None
    size_source: str | None = None
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    missing: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


class Family(Protocol):
    """One naming convention: how to read its facts and map its keys.

    ``description`` names the family in words (after :meth:`facts`, with what it found: "timm
    VisionTransformer: DINOv2 with 4 registers, ..."); ``ignored`` gives the reason a file key
    is knowingly left unused, or None.
    """

    name: str
    description: str

    def facts(self, tensors: Mapping[str, np.ndarray]) -> Facts: ...

    def rules(self, config: ViTConfig) -> list[Rule]: ...

    def ignored(self, key: str) -> str | None: ...


def canonical_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with ``class_token`` and ``position_prefix_tokens`` in ViTConfig's canonical
    form (None where they say what the other fields imply), so they compare with a config's."""
    out = dict(fields)
    classifier = out.get("classifier", "token")
    if "class_token" in out and out["class_token"] == (classifier == "token"):
        out["class_token"] = None
    if out.get("position_prefix_tokens") is not None:
        has_cls = out.get("class_token")
        has_cls = classifier == "token" if has_cls is None else has_cls
        prefix = (
            int(has_cls)
            + int(out.get("distillation_token", False))
            + out.get("num_register_tokens", 0)
        )
        if out["position_prefix_tokens"] == prefix:
            out["position_prefix_tokens"] = None
    return out


def feature_words(fields: Mapping[str, Any]) -> list[str]:
    """What a family found beyond a plain ViT, in words, for its description."""
    words = []
    if fields.get("distillation_head"):
        words.append("distillation token with its own head (two heads averaged)")
    elif fields.get("distillation_token"):
        words.append("distillation token")
    if fields.get("num_register_tokens"):
        words.append(f"{fields['num_register_tokens']} register tokens")
    if fields.get("pre_norm"):
        words.append("pre-norm")
    if fields.get("layer_scale"):
        words.append("layer scale")
    if fields.get("mlp_activation") == "swiglu":
        words.append("SwiGLU MLP")
    if fields.get("fc_norm"):
        words.append("mean pooling with fc_norm")
    if fields.get("classifier") == "map":
        words.append("attention-pooling head")
    if fields.get("projection_dim"):
        words.append(f"projection to {fields['projection_dim']}")
    if fields.get("position_embedding") == "sincos2d":
        words.append("sin-cos positions")
    if not fields.get("num_classes", 1):
        words.append("backbone without a classifier")
    return words


class ShapeReader:
    """Reads shapes of named tensors into a :class:`Facts`, noting what it used and missed."""

    def __init__(self, tensors: Mapping[str, np.ndarray], facts: Facts, prefix: str = ""):
        self.tensors, self.facts, self.prefix = tensors, facts, prefix

    def shape(self, key: str) -> tuple[int, ...] | None:
        full = self.prefix + key
        if full not in self.tensors:
            if full not in self.facts.missing:
                self.facts.missing.append(full)
            return None
        return tuple(int(d) for d in self.tensors[full].shape)

    def has(self, key: str) -> bool:
        return self.prefix + key in self.tensors

    def first(self, *keys: str) -> str | None:
        """The first of ``keys`` present, or None."""
        return next((k for k in keys if self.has(k)), None)

    def set_all(self, how: str, **fields: Any) -> None:
        """Fields that the family fixes whatever the file holds, all for one reason."""
        for field, value in fields.items():
            self.set(field, value, how=how)

    def set(self, field: str, value: Any, key: str | None = None, how: str | None = None):
        self.facts.fields[field] = value
        if how is None:
            full = self.prefix + key
            how = f"tensor {full!r} {shape_str(self.tensors[full].shape)}"
        self.facts.sources[field] = how

    def count_layers(self, block: str) -> int | None:
        """Blocks = 1 + the largest ``{i}`` among keys starting with ``block`` (e.g. "blocks.{i}.")."""
        head, _, tail = block.partition("{i}")
        regex = re.compile(re.escape(self.prefix + head) + r"(\d+)" + re.escape(tail))
        indices = [int(m.group(1)) for k in self.tensors if (m := regex.match(k))]
        if not indices:
            self.facts.missing.append(self.prefix + block.format(i=0) + "...")
            return None
        self.set("num_layers", max(indices) + 1, how=f"indices of {self.prefix + block}... keys")
        return max(indices) + 1


# How to state the heads of a file that does not show them, for the notes and warnings.
STATE_HEADS = (
    "put the model's config.json (its library's, as saved with it) beside the weights, or pass "
    "config= to load_checkpoint, to state them"
)


def guess_num_heads(hidden_size: int, mlp_dim: int | None) -> tuple[int, str]:
    """Heads for a file whose shapes do not show them (fused or flat query/key/value).

    A published size from :data:`~jaxvit_interp.model.config.VARIANTS` with the same width and
    MLP width gives its head count (ViT-H/14 has 16 heads of 80, not 20 of 64); otherwise the
    standard head width of 64 is assumed. Either way it is a guess, stated in the note.
    """
    for name, sizes in VARIANTS.items():
        if sizes["hidden_size"] == hidden_size and sizes["mlp_dim"] == mlp_dim:
            return sizes["num_heads"], (
                f"num_heads={sizes['num_heads']} assumed: width {hidden_size} and MLP {mlp_dim} "
                f"match the {name} size; {STATE_HEADS}"
            )
    if hidden_size % 64 == 0:
        return hidden_size // 64, (
            f"num_heads={hidden_size // 64} assumed from the standard head width 64; {STATE_HEADS}"
        )
    raise CheckpointError(
        f"cannot tell num_heads: the file does not show it, hidden_size {hidden_size} is not a "
        "multiple of 64 and matches no known size; pass config=ViTConfig(..., num_heads=...)"
    )


def square_grid(num_patches: int, where: str) -> tuple[int, int]:
    """The square grid with ``num_patches`` cells, or an error asking for the image size."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CheckpointError(
            f"{where}: the position embeddings cover {num_patches} patches, which is not a square "
            "grid; pass config=ViTConfig(image_size=(height, width), ...) to give the layout"
        )
    return (side, side)


@dataclasses.dataclass(frozen=True)
class SideFiles:
    """JSON files found beside the weights.

    Attributes:
      config_json: ``config.json`` (Hugging Face ``ViTConfig`` or a timm hub config), or None.
      preprocessor: Hugging Face ``preprocessor_config.json``, or None.
      open_clip_config: OpenCLIP's ``open_clip_config.json`` (model and preprocessing), or None.
    """

    config_json: dict[str, Any] | None = None
    preprocessor: dict[str, Any] | None = None
    open_clip_config: dict[str, Any] | None = None


def class_names_fact(facts: Facts, names, source: str) -> None:
    """Record the class names a file gives (``names`` in class-index order, or None).

    Names that do not fit the classifier are dropped with a note. A file that names none is
    given :func:`~jaxvit_interp.data.imagenet.assumed_class_names` (ImageNet-1k's for 1,000
    classes), with its note.
    """
    from jaxvit_interp.data.imagenet import assumed_class_names, is_imagenet1k

    num_classes = facts.fields.get("num_classes")
    if names is not None and num_classes is not None and len(names) != num_classes:
        facts.notes.append(
            f"{source} names {len(names)} classes but the classifier has {num_classes}; ignored"
        )
        names = None
    if names is not None:
        names = tuple(str(n) for n in names)
        if is_imagenet1k(names):
            facts.notes.append(f"class names from {source} (ImageNet-1k)")
        else:
            facts.notes.append(f"class names from {source}")
    elif num_classes is not None and (assumed := assumed_class_names(num_classes, "the file")):
        names, note = assumed
        facts.notes.append(note)
    if names is not None:
        facts.defaults["class_names"] = names
