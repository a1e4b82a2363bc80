"""The one exception a bad checkpoint raises, and the formats a loader accepts."""

from __future__ import annotations

from jaxvit_interp.errors import InputError

ACCEPTED_FORMATS: tuple[str, ...] = (
    ".npz: vit_jax or big_vision parameters (SigLIP's image tower too), flat '/'-joined keys",
    ".safetensors: timm, OpenCLIP or Hugging Face (ViT, DeiT, DINOv2, CLIP, SigLIP) names, or "
    "this project's own (the config in its header, as save_safetensors and prune write it)",
    "a Hugging Face folder: config.json + model.safetensors (+ preprocessor_config.json)",
    "hf-hub:ORG/NAME[@REVISION]: a Hugging Face, timm or OpenCLIP repository on the hub",
    "a jaxvit-interp folder written by save_checkpoint: vit_config.json + params/",
    ".bin / .pth / .pt: PyTorch pickles, only with allow_pickle=True",
)


class CheckpointError(InputError):
    """A checkpoint that cannot become this project's ViT parameters.

    Raised for unknown formats, missing / extra / mis-shaped tensors (listed by key with the
    expected and found shapes), a ``config`` that contradicts the tensors (naming the field) and
    refused pickles.
    """


def accepted_formats() -> str:
    """The accepted formats as an indented list, for error messages."""
    return "\n".join(f"  - {line}" for line in ACCEPTED_FORMATS)


def shape_str(shape) -> str:
    """``(3, 4)`` -> ``[3, 4]``; ``None`` -> ``-``."""
    return "-" if shape is None else "[" + ", ".join(str(int(s)) for s in shape) + "]"
