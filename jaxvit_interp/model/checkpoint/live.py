"""``from_torch``: a live PyTorch vision transformer -> ``(ViTConfig, params)``, in memory.

The module is read the way its saved files would be: its ``state_dict()`` under the keys a saved
file has, and the side files its library writes beside the weights (Hugging Face's
``config.json``, timm's hub ``config.json``, OpenCLIP's ``open_clip_config.json``) made from the
live object. From there it is the file importer's own plan (:func:`.load.load_raw`): the family
told from the keys, the config settled, every key checked, the same conversion. So fine-tuned
weights, a custom head count or another image size load exactly as their saved files would.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from jaxvit_interp.model.checkpoint import hf_names, torch_names
from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.facts import SideFiles
from jaxvit_interp.model.checkpoint.files import RawCheckpoint
from jaxvit_interp.model.checkpoint.load import image_size_pair, load_raw
from jaxvit_interp.model.config import ViTConfig

ACCEPTED_MODULES: tuple[str, ...] = (
    "transformers: ViTModel, ViTForImageClassification, DeiTModel, DeiTForImageClassification"
    "[WithTeacher], Dinov2Model, Dinov2WithRegistersModel, CLIPVisionModel[WithProjection], "
    "CLIPModel, SiglipVisionModel, SiglipModel",
    "timm: VisionTransformer (vit_*, deit_* incl. distilled, *_dinov2, *_clip_*, *_siglip_*)",
    "OpenCLIP: a CLIP model whose visual tower is its VisionTransformer, or that tower itself",
)
# timm poolings this ViT has: the CLS token, the mean of the patches, attention pooling.
TIMM_POOLS = ("token", "avg", "map")
OPENCLIP_PREFIX = "visual."  # OpenCLIP's files hold the whole CLIP model, the tower under it


def from_torch(
    model, *, config: ViTConfig | None = None, image_size=None, processor=None
) -> tuple[ViTConfig, dict[str, Any]]:
    """A live PyTorch vision transformer as ``(config, params)``, as its saved files would load.

    Args:
      model: a ``torch.nn.Module`` of one of :data:`ACCEPTED_MODULES`, possibly wrapped in
        ``DataParallel`` / ``DistributedDataParallel``. A two-tower ``CLIPModel`` /
        ``SiglipModel`` or OpenCLIP ``CLIP`` gives its vision tower (with CLIP's visual
        projection); the text tower is ignored. Weights of any floating dtype (bfloat16,
        float16) are read as float32, and copied: later changes to the module do not reach
        the returned parameters.
      config: as for :func:`~jaxvit_interp.model.checkpoint.load.load_checkpoint`: it wins for
        what tensors cannot show and must agree with them on the rest.
      image_size: a side or ``(height, width)``: load at this size instead of the module's own,
        the position table resampled as the family's library does it.
      processor: a transformers model's image processor (``AutoImageProcessor``), read as its
        ``preprocessor_config.json`` is: its mean, std, resize and crop, and for DINOv2 the
        crop size it loads at. Without one, the model type's published processor. timm and
        OpenCLIP modules carry their preprocessing themselves and take none.

    Returns:
      ``(config, params)`` equal to what ``load_checkpoint`` gives for the same model saved by
      its library (``save_pretrained``; timm's ``save_for_hf``; OpenCLIP's state dict with its
      ``open_clip_config.json``).

    Raises:
      CheckpointError: a module that is none of the accepted ones (naming its class), or that
        the file importer would refuse (an option this ViT does not have), or a ``config`` that
        contradicts it.
    """
    size = image_size_pair(image_size, config)  # a bad size fails before any tensor is copied
    return load_raw(torch_checkpoint(model, processor), config=config, image_size=size)


def torch_checkpoint(model, processor=None) -> RawCheckpoint:
    """``model``'s state dict and side files, as its library would save them (with
    ``processor``'s ``preprocessor_config.json`` for a transformers model)."""
    model = _unwrapped(model)
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        state, side = _transformers_side(model, name, processor)
    elif processor is not None:
        raise CheckpointError(
            f"from_torch: processor= is for transformers models; {name} carries its "
            "preprocessing itself"
        )
    elif (timm := _timm_vit(model)) is not None:
        state, side = model.state_dict(), SideFiles(config_json=timm)
    elif (tower := _openclip_tower(model)) is not None:
        whole = tower is not model
        state = model.state_dict() if whole else _prefixed(model.state_dict(), OPENCLIP_PREFIX)
        side = SideFiles(open_clip_config=_openclip_config(model, tower))
    else:
        raise CheckpointError(
            f"from_torch: {name} is not a supported vision transformer; " + _accepted()
        )
    return RawCheckpoint(f"in-memory {name}", "torch module", _numpy_state(state), side)


def _accepted() -> str:
    return "accepted:\n" + "\n".join(f"  - {line}" for line in ACCEPTED_MODULES)


def _unwrapped(model):
    """``model`` without the (Distributed)DataParallel wrappers, checked to be a module."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.nn.Module):
        raise CheckpointError(
            f"from_torch takes a torch.nn.Module, got {type(model).__name__}; " + _accepted()
        )
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _numpy_state(state) -> dict[str, np.ndarray]:
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()  # numpy has no bfloat16; float32 holds it and float16 exactly
        # Shares the module's memory, not copied twice: the conversion's jnp.asarray copies it,
        # so the module training on leaves the parameters alone (the tests check it).
        out[key] = tensor.numpy()
    return out


def _prefixed(state, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


# ---- transformers -----------------------------------------------------------------------------


def _transformers_side(model, name: str, processor) -> tuple[dict, SideFiles]:
    """The state dict (``save_pretrained``'s keys), ``config.json`` and, given ``processor``,
    ``preprocessor_config.json`` of a supported model."""
    model_type = model.config.model_type
    if model_type not in hf_names.SUPPORTED_MODEL_TYPES:
        lacks = torch_names.REFUSED_MODEL_TYPES.get(model_type)
        needs = f": it needs {lacks}, which this ViT does not have" if lacks else ""
        raise CheckpointError(
            f"from_torch: {name} (model_type {model_type!r}) is not supported{needs}; "
            + _accepted()
        )
    preprocessor = None
    if processor is not None:
        if not hasattr(processor, "to_json_string"):
            raise CheckpointError(
                f"from_torch: processor= takes a transformers image processor, got "
                f"{type(processor).__name__}"
            )
        # The JSON save_pretrained writes: Pillow filters as their integer codes.
        preprocessor = json.loads(processor.to_json_string())
    return model.state_dict(), SideFiles(model.config.to_dict(), preprocessor)


# ---- timm -------------------------------------------------------------------------------------


def _timm_vit(model) -> dict[str, Any] | None:
    """The hub ``config.json`` timm's ``save_for_hf`` would write for ``model`` (the fields the
    importer reads), or None if ``model`` is not a timm ``VisionTransformer``."""
    if "timm" not in sys.modules:
        return None
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return None
    # create_model sets pretrained_cfg; a VisionTransformer built directly has none.
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    pretrained = {k: v for k, v in dict(pretrained_cfg).items() if k != "state_dict"}
    if pretrained.get("num_classes") != model.num_classes:
        pretrained.pop("label_names", None)  # names of another head, as save_for_hf drops them
    model_args: dict[str, Any] = {"num_heads": model.blocks[0].attn.num_heads}
    if model.patch_embed.img_size is not None:
        model_args["img_size"] = list(model.patch_embed.img_size)  # the table's grid
    if model.global_pool not in TIMM_POOLS:
        raise CheckpointError(
            f"from_torch: timm VisionTransformer with global_pool={model.global_pool!r} is not "
            f"supported (only {', '.join(map(repr, TIMM_POOLS))})"
        )
    model_args["global_pool"] = model.global_pool
    if (act := _timm_activation(model)) is not None:
        model_args["act_layer"] = act
    return {
        "architecture": pretrained.get("architecture", ""),
        "num_classes": model.num_classes,
        "model_args": model_args,
        "pretrained_cfg": pretrained,
    }


def _timm_activation(model) -> str | None:
    """timm's ``act_layer`` name for the blocks' MLP activation where it is not exact GELU."""
    act = getattr(model.blocks[0].mlp, "act", None)
    kind = type(act).__name__
    if kind == "QuickGELU":
        return "quick_gelu"
    if kind == "GELUTanh" or getattr(act, "approximate", "none") == "tanh":
        return "gelu_tanh"
    return None


# ---- OpenCLIP ---------------------------------------------------------------------------------


def _openclip_tower(model):
    """OpenCLIP's ``VisionTransformer``: ``model`` itself or its ``visual``, else None."""
    if "open_clip" not in sys.modules:
        return None
    from open_clip.transformer import VisionTransformer

    for candidate in (model, getattr(model, "visual", None)):
        if isinstance(candidate, VisionTransformer):
            return candidate
    return None


def _openclip_config(model, tower) -> dict[str, Any]:
    """The ``open_clip_config.json`` fields the importer reads, from the live tower."""
    block = tower.transformer.resblocks[0]
    width = tower.transformer.width
    quick = type(getattr(block.mlp, "gelu", None)).__name__ == "QuickGELU"
    vision = dict(
        layers=tower.transformer.layers,
        width=width,
        head_width=width // block.attn.num_heads,
        patch_size=list(tower.patch_size),
        image_size=list(tower.image_size),
        pool_type=tower.pool_type,
        final_ln_after_pool=tower.final_ln_after_pool,
    )
    # As OpenCLIP's own save_config_for_hf: mean and std, and how it resizes.
    preprocess = {
        key: value
        for key, value in dict(getattr(tower, "preprocess_cfg", None) or {}).items()
        if key in ("mean", "std", "interpolation", "resize_mode")
    }
    for key, attribute in (("mean", "image_mean"), ("std", "image_std")):
        if getattr(tower, attribute, None) is not None:
            preprocess[key] = list(getattr(tower, attribute))
    model_cfg = dict(embed_dim=tower.output_dim, quick_gelu=quick, vision_cfg=vision)
    return dict(model_cfg=model_cfg, preprocess_cfg=preprocess)
