"""jaxvit-interp: how attention works in Vision Transformers, computed in JAX, published as HTML.

The public entry points are re-exported here; see each subpackage for the details:

- :mod:`jaxvit_interp.model`: the Flax ViT, head masks, attention edits and checkpoint import.
- :mod:`jaxvit_interp.data`: image folders (``load_image_folder`` -> an ``ImageSet`` that
  ``analyze`` takes), labels matched to the model's classes, preprocessing, the built-in
  models and their images (digits; shapes, whose rules are planted).
- :mod:`jaxvit_interp.importance`: pruning-based head importance (zero, mean or resample
  ablation), partial pruning, Taylor scores, activation patching, direct logit attribution.
- :mod:`jaxvit_interp.patterns`: attention patterns, their autoencoder, projection and clusters.
- :mod:`jaxvit_interp.strength`: attention strength per Chebyshev hop, head entropy, attention distance.
- :mod:`jaxvit_interp.explain`: input-level maps (rollout, attention flow, gradient rollout,
  Grad-CAM, integrated gradients, occlusion, each head's attention) and their faithfulness.
- :mod:`jaxvit_interp.pipeline`: ``analyze``: every analysis, chunked and resumable, to a results bundle.
- :class:`Execution` (:mod:`jaxvit_interp.execution`): how an analysis runs (batch size, memory
  budget, devices, progress), the ``execution=`` every analysis over many images takes.
- :mod:`jaxvit_interp.site`: ``build_site``: a results bundle as one offline HTML file;
  ``build_comparison_site``: several runs compared on one page, with each run's own site.
- :mod:`jaxvit_interp.notebook`: ``show`` (the site), ``show_head``, ``show_image`` and
  ``show_pruning_curves``: a results bundle's views inline in a notebook.
"""

from jaxvit_interp.bundle import ResultsBundle, load_bundle
from jaxvit_interp.data import ImagePairs, ImageSet, load_image_folder, load_image_pairs
from jaxvit_interp.data.labels import LabelError
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain import (
    Explanation,
    Faithfulness,
    HeadFaithfulness,
    attention_flow,
    explain,
    faithfulness,
    head_attention_maps,
    head_faithfulness,
)
from jaxvit_interp.importance import (
    ABLATION_KINDS,
    ActivationPatching,
    DirectLogitAttribution,
    HeadImportance,
    HeadShapley,
    PartialPruning,
    SetAblation,
    ablate,
    activation_patching,
    class_specific_heads,
    direct_logit_attribution,
    global_importance,
    head_importance,
    head_shapley,
    pairwise_interactions,
    partial_pruning,
    per_class_importance,
    pruning_curves,
    rank_heads,
)
from jaxvit_interp.model import (
    PRUNING_MODES,
    VARIANTS,
    AttentionEdit,
    CheckpointError,
    LinearProbe,
    ModelOutput,
    Preprocessing,
    ViTConfig,
    from_torch,
    init_params,
    inspect_checkpoint,
    load_checkpoint,
    run_model,
    save_checkpoint,
    save_safetensors,
    with_probe,
)
from jaxvit_interp.notebook import show, show_head, show_image, show_pruning_curves
from jaxvit_interp.patterns import (
    AutoencoderSettings,
    SharedPatternSettings,
    SharedPatternSpace,
    embed_patterns,
    extract_patterns,
    shared_pattern_space,
    train_autoencoder,
)
from jaxvit_interp.pipeline import AnalysisSettings, analyze
from jaxvit_interp.rollout import attention_rollout, model_rollout_over_images
from jaxvit_interp.site import build_comparison_site, build_site, export_figures
from jaxvit_interp.strength import (
    HopStrength,
    StrengthResults,
    hop_strength,
    model_strength_over_images,
    strength_over_images,
)

__version__ = "0.1.0"

__all__ = [
    "Execution",
    "ImagePairs",
    "ImageSet",
    "InputError",
    "LabelError",
    "load_image_folder",
    "load_image_pairs",
    "AutoencoderSettings",
    "ABLATION_KINDS",
    "ActivationPatching",
    "DirectLogitAttribution",
    "HeadImportance",
    "HeadShapley",
    "PartialPruning",
    "SetAblation",
    "ablate",
    "activation_patching",
    "class_specific_heads",
    "direct_logit_attribution",
    "pairwise_interactions",
    "pruning_curves",
    "embed_patterns",
    "extract_patterns",
    "global_importance",
    "head_importance",
    "head_shapley",
    "partial_pruning",
    "per_class_importance",
    "rank_heads",
    "attention_rollout",
    "model_rollout_over_images",
    "Explanation",
    "Faithfulness",
    "HeadFaithfulness",
    "attention_flow",
    "explain",
    "faithfulness",
    "head_attention_maps",
    "head_faithfulness",
    "train_autoencoder",
    "SharedPatternSettings",
    "SharedPatternSpace",
    "shared_pattern_space",
    "AnalysisSettings",
    "ResultsBundle",
    "analyze",
    "build_site",
    "build_comparison_site",
    "export_figures",
    "load_bundle",
    "show",
    "show_head",
    "show_image",
    "show_pruning_curves",
    "CheckpointError",
    "from_torch",
    "inspect_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_safetensors",
    "PRUNING_MODES",
    "VARIANTS",
    "AttentionEdit",
    "LinearProbe",
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
    "with_probe",
]
