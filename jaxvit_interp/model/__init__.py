"""The ViT: configuration, Flax modules, head masks and attention edits, checkpoint import."""

from jaxvit_interp.model.checkpoint import (
    CheckpointError,
    from_torch,
    inspect_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_safetensors,
)
from jaxvit_interp.model.config import VARIANTS, Preprocessing, ViTConfig
from jaxvit_interp.model.edits import PRUNING_MODES, AttentionEdit, keep_mask
from jaxvit_interp.model.probe import LinearProbe, with_probe
from jaxvit_interp.model.run import run_model
from jaxvit_interp.model.vit import ModelOutput, VisionTransformer, init_params

__all__ = [
    "CheckpointError",
    "from_torch",
    "inspect_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_safetensors",
    "VARIANTS",
    "PRUNING_MODES",
    "AttentionEdit",
    "LinearProbe",
    "ModelOutput",
    "Preprocessing",
    "ViTConfig",
    "VisionTransformer",
    "init_params",
    "keep_mask",
    "run_model",
    "with_probe",
]
