"""Checkpoint import and export.

:func:`load_checkpoint` reads vit_jax / big_vision ``.npz``, timm and Hugging Face
``.safetensors`` (and folders), this project's own orbax folders and, when allowed, PyTorch
pickles, into ``(ViTConfig, params)``. :func:`save_checkpoint` writes the project's own format.
:func:`inspect_checkpoint` compares a file with the model key by key without loading it.
"""

from jaxvit_interp.model.checkpoint.errors import ACCEPTED_FORMATS, CheckpointError
from jaxvit_interp.model.checkpoint.inspection import CheckpointReport, inspect_checkpoint
from jaxvit_interp.model.checkpoint.load import KeyCheck, load_checkpoint
from jaxvit_interp.model.checkpoint.orbax_io import save_checkpoint
from jaxvit_interp.model.checkpoint.posemb import resample_posemb

__all__ = [
    "ACCEPTED_FORMATS",
    "CheckpointError",
    "CheckpointReport",
    "KeyCheck",
    "inspect_checkpoint",
    "load_checkpoint",
    "resample_posemb",
    "save_checkpoint",
]
