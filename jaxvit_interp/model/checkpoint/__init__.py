"""Checkpoint import and export.

:func:`load_checkpoint` reads vit_jax / big_vision ``.npz`` (SigLIP's image tower too), timm,
OpenCLIP and Hugging Face (ViT, DeiT, DINOv2 with and without registers, CLIP, SigLIP)
``.safetensors`` (and folders), this project's own orbax folders and, when allowed, PyTorch
pickles, into ``(ViTConfig, params)``; each family's names are data (:mod:`.rules`) in its own
module (:mod:`.flax_names`, :mod:`.hf_names`, :mod:`.timm_names`, :mod:`.openclip_names`, told
apart by :mod:`.torch_names`). :func:`save_checkpoint` (an orbax folder) and
:func:`save_safetensors` (one file, the config in its header) write the project's own format.
:func:`inspect_checkpoint` compares a file with the model key by key without loading it.
:func:`from_torch` (:mod:`.live`) loads a live PyTorch model (transformers, timm, OpenCLIP) the
same way, from its state dict and the side files its library would write.
"""

from jaxvit_interp.model.checkpoint.errors import ACCEPTED_FORMATS, CheckpointError
from jaxvit_interp.model.checkpoint.inspection import CheckpointReport, inspect_checkpoint
from jaxvit_interp.model.checkpoint.live import from_torch
from jaxvit_interp.model.checkpoint.load import KeyCheck, load_checkpoint
from jaxvit_interp.model.checkpoint.orbax_io import save_checkpoint, save_safetensors
from jaxvit_interp.model.checkpoint.posemb import resample_posemb

__all__ = [
    "ACCEPTED_FORMATS",
    "CheckpointError",
    "CheckpointReport",
    "KeyCheck",
    "from_torch",
    "inspect_checkpoint",
    "load_checkpoint",
    "resample_posemb",
    "save_checkpoint",
    "save_safetensors",
]
