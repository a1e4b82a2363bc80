"""jaxvit-interp: how attention works in Vision Transformers, computed in JAX, published as HTML.

The public entry points are re-exported here; see each subpackage for the details:

- :mod:`jaxvit_interp.model`: the Flax ViT, head gates, attention edits and checkpoint import.
- :mod:`jaxvit_interp.data`: image folders, preprocessing, the bundled digits set and model.
- :mod:`jaxvit_interp.strength`: attention strength per Chebyshev hop, head entropy, attention distance.
"""

from jaxvit_interp.model import (
    CheckpointError,
    inspect_checkpoint,
    load_checkpoint,
    save_checkpoint,
    PRUNING_MODES,
    VARIANTS,
    AttentionEdit,
    ModelOutput,
    Preprocessing,
    ViTConfig,
    init_params,
    run_model,
)
from jaxvit_interp.strength import (
    HopStrength,
    StrengthResults,
    hop_strength,
    model_strength_over_images,
    strength_over_images,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "inspect_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "PRUNING_MODES",
    "VARIANTS",
    "AttentionEdit",
    "ModelOutput",
    "Preprocessing",
    "ViTConfig",
    "HopStrength",
    "StrengthResults",
    "hop_strength",
    "model_strength_over_images",
    "strength_over_images",
    "init_params",
    "run_model",
]
