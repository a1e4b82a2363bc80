"""The PyTorch families: which naming a state dict follows, and the architectures refused.

- Hugging Face transformers (:mod:`.hf_names`): ViT, DeiT (with teacher), DINOv2 (with
  registers), CLIP and SigLIP vision towers; told by ``config.json``'s ``model_type`` or the keys.
- OpenCLIP (:mod:`.openclip_names`): visual towers, alone or in a whole CLIP model.
- timm (:mod:`.timm_names`): ``VisionTransformer`` and its distilled DeiT subclass.

Checkpoints of vision transformers this model cannot express are refused by name, with what it
would need and does not have (a relative position bias, windowed attention, ...), rather than
failing later on unexplained missing keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxvit_interp.model.checkpoint import hf_names, openclip_names, timm_names
from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.facts import SideFiles

# Architectures recognised by one of their keys: (part of a key, name, what this model lacks).
REFUSED_BY_KEY = (
    (
        "layers.0.blocks.0.",
        "Swin Transformer",
        "windowed and shifted-window attention, a relative position bias and patch merging",
    ),
    (
        "relative_position_bias",
        "BEiT-style (BEiT, Data2Vec-vision)",
        "a learned relative position bias added to every attention score",
    ),
)
# Hugging Face model types whose names resemble ViT's, and what they add.
REFUSED_MODEL_TYPES = {
    "swin": "windowed attention, a relative position bias and patch merging",
    "swinv2": "windowed cosine attention, a relative position bias and patch merging",
    "beit": "a relative position bias in every attention",
    "data2vec-vision": "a relative position bias in every attention",
    "vit_mae": "random patch masking in its forward pass (load a fine-tuned or timm MAE)",
}


def refuse_unsupported(keys, config_json: Mapping[str, Any] | None) -> None:
    """Raise :class:`CheckpointError` naming the architecture if ``keys`` (or ``config.json``)
    belong to a vision transformer this model cannot express."""
    model_type = (config_json or {}).get("model_type")
    supported = hf_names.SUPPORTED_MODEL_TYPES
    if model_type is not None and model_type not in supported:
        lacks = REFUSED_MODEL_TYPES.get(model_type)
        raise CheckpointError(
            f"Hugging Face model_type {model_type!r} is not supported"
            + (f": it needs {lacks}, which this ViT does not have" if lacks else "")
            + f"; supported model types: {', '.join(supported)}"
        )
    for part, name, lacks in REFUSED_BY_KEY:
        hit = next((k for k in keys if part in k), None)
        if hit is not None:
            raise CheckpointError(
                f"{name} checkpoint (key {hit!r}) is not supported: it needs {lacks}, which "
                "this ViT does not have"
            )


def detect(keys, side: SideFiles):
    """The Hugging Face, OpenCLIP or timm family of a flat key set, or None if none fits."""
    keys = set(keys)
    refuse_unsupported(keys, side.config_json)
    config = side.config_json or {}
    family = hf_names.detect(keys, config if "model_type" in config else None, side.preprocessor)
    if family is not None:
        return family
    family = openclip_names.detect(keys, side.open_clip_config)
    if family is not None:
        return family
    if timm_names.looks_like(keys):
        return timm_names.TimmFamily(config if "pretrained_cfg" in config else None)
    return None
