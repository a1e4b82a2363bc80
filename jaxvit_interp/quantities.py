"""What the analyses produce: one registry, imported by the Python code and sent to the page as JSON.

Every array of a results bundle is declared here once, in :data:`SCHEMA`: its part, its name and
its named dimensions. The page indexes its flat columns with the same dimensions (row-major, as
NumPy lays them out), so a layout is written in one place. The per-head importance metrics carry
a title, a unit and which direction marks an important head (:data:`METRICS`).

Where each quantity is computed:

- ``importance``: :mod:`jaxvit_interp.importance` (the ablation engine per image; the over-images
  means, per-class means, each class's specificity (its mean minus the mean over all images,
  signed so that positive is more important for the class) and its :data:`CLASS_TOP_HEADS`
  most specific heads in :mod:`~jaxvit_interp.importance.aggregate`; the image overview layout
  in :mod:`~jaxvit_interp.importance.layout`);
- ``partial``: :func:`jaxvit_interp.importance.partial_pruning`, its means in
  :mod:`~jaxvit_interp.importance.aggregate`;
- ``strength``: :mod:`jaxvit_interp.strength` (per image in ``kernels``, over images in
  ``summarize_kernel``);
- ``patterns``: :mod:`jaxvit_interp.patterns` (patterns, autoencoder, projection, clusters, and
  each head's summary over images in :mod:`~jaxvit_interp.patterns.embed`);
- ``images``: labels and predictions from the model pass, thumbnails and the pixels at the
  model's input resolution from :func:`jaxvit_interp.data.preprocess.thumbnails`;
- ``head_sets``: heads measured together on a subset of images
  (:mod:`jaxvit_interp.pipeline.head_sets`): pairwise interactions of the top heads
  (:func:`jaxvit_interp.importance.pairwise_interactions`) and pruning curves in importance,
  greedy and random orders (:func:`jaxvit_interp.importance.pruning_curves`); a bundle from
  before it, or from a run with ``set_images = 0``, has no such part;
- ``shapley``: each head's Shapley value of ``prob_drop`` on a subset of images
  (:mod:`jaxvit_interp.pipeline.shapley_stage`, :func:`jaxvit_interp.importance.head_shapley`
  with the run's first ablation kind), its standard error, the single-ablation ``prob_drop``
  mean on the same images, ``v_all`` (the drop with every head ablated, which the values add up
  to), the permutations sampled (0: exact values) and ``disagree``, the heads whose value and
  single drop differ by more than the rule of
  :func:`jaxvit_interp.importance.shapley.disagreement` allows; a run with
  ``shapley_images = 0`` (the default) has no such part;
- ``patching``: activation patching of every head between the images of given pairs
  (:mod:`jaxvit_interp.pipeline.patching_stage`, :func:`jaxvit_interp.importance.activation_patching`)
  in both directions: per pair and head the normalised score and the patched ``p(y)``
  (``denoising_*``: the corrupted image with one head restored from the clean one;
  ``noising_*``: the clean image with one head from the corrupted one), each score's mean over
  the pairs that have one, and per pair the unpatched ``p(y)`` of both images, whether it is
  scored and its class ``y``; a run without ``patching_pairs`` has no such part;
- ``explanations``: explanation maps of a subset of images and how faithful they are
  (:mod:`jaxvit_interp.pipeline.explain_stage`, :func:`jaxvit_interp.explain.explain`): per image
  the label followed, each method's map (float16; the methods named in the part's meta), the
  deletion and insertion curves of each map (:func:`jaxvit_interp.explain.faithfulness`) and
  their areas, those of a seeded random patch order, and the area of every head's attention
  map's curves (:func:`jaxvit_interp.explain.head_faithfulness`), with its mean over the images;
  a run with ``explain_images = 0`` (the default) has no such part;
- ``attention``: the model's own attention (:func:`jaxvit_interp.model.run.attention_over_images`),
  kept as the special tokens' columns in float16 (``special``) and 8-bit codes of a root of
  each patch weight (square, cube or fourth) with a step and an exponent per row (``codes``,
  ``steps``, ``exponents``; a version-3 bundle: linear codes of every weight, and no
  ``exponents`` nor ``special``), each matrix's worst absolute error (``error``) and worst
  relative error over the weights of at least ``0.1 / N`` (``relative_error``; absent from
  version-3 bundles), and each head's worst over the images (``error_max``,
  ``relative_error_max``) (:mod:`jaxvit_interp.attention_codes`);
- ``rollout``: attention rollout (:func:`jaxvit_interp.rollout.final_rollout_over_images`): per
  image the rollout map ``map [I, gh, gw]`` after the last layer, read from the CLS row (for a
  model without CLS, the mean of the patch rows) over the patch columns, which start after every
  special token, and ``contribution [I, L]``, the share of that row each layer's attention moves
  (``1/2 sum_t |r_l - r_{l-1}|`` over all tokens, :func:`jaxvit_interp.rollout.layer_contributions`);
  their means over the images (``map_mean``, ``contribution_mean``) in
  :func:`jaxvit_interp.pipeline.parts.rollout_part`. Bundles written before it lack the part.

The ``importance`` part's metrics are those of the run's first ablation kind (the settings'
``ablations``; ``zero``, the paper's, by default). Each further kind's arrays sit beside them
under :func:`ablation_array`'s names, ``{metric}_{kind}_ablation`` (``prob_drop_mean_ablation``
``[I, L, H]``, its ``_mean``, ``_class_mean``, ``_class_specificity`` and ``_class_top``), for
every metric but ``taylor`` (a gradient at the unpruned model, the same for every kind); and
``direct`` is each head's direct logit attribution
(:func:`jaxvit_interp.importance.direct_logit_attribution`) with the same reductions over
images, for a classifier whose readout is linear. Bundles written before them lack them.

Dimension letters: ``I`` images, ``C`` classes, ``L`` layers, ``H`` heads, ``N`` tokens,
``K`` hops, ``X`` special tokens (CLS, distillation, registers: the tokens before the patches),
``M`` pruning modes, ``T`` top-k ranks, ``T_class`` the most specific heads of a class
(:data:`CLASS_TOP_HEADS`, or every head of a smaller model), ``B`` entropy histogram bins,
``D`` density bins, ``S_partial`` / ``S_attention`` images of a subset, ``h w c`` thumbnail pixels and
channels, ``ih iw`` the model's input pixels, ``gh gw`` the patch grid, ``oh ow`` relative offsets on it, ``Kcls Kpatch`` clusters,
``xy`` the two coordinates of a 2-D position and ``extent`` a range ``(x0, x1, y0, y1)``.
In ``head_sets``: ``S_sets`` images of its subset, ``J`` interacting heads (most important
first), ``lh`` a ``(layer, head)`` pair, ``V`` pruning curves (one row per order, a row per run
of the random order; ``curve_order`` indexes
:data:`jaxvit_interp.importance.pruning.CURVE_ORDERS`), ``R`` heads removed one after another
and ``R+1`` the points ``k = 0 .. R`` removed, ``Q`` accuracy drops (percentage points).
In ``shapley``: ``S_shapley`` images of its subset; ``()`` a single number. In ``patching``:
``P`` pairs, and ``cc`` a pair's clean and corrupted image (their positions among the images).
In ``explanations``: ``S_explain`` images of its subset, ``method`` the explanation methods (the
part's meta lists them), ``di`` deletion and insertion, and ``steps+1`` a curve's points.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "ABLATION_KINDS",
    "ABLATION_METRICS",
    "CLASS_ARRAYS",
    "CLASS_TOP_HEADS",
    "DENSITY_BINS",
    "ENTROPY_BINS",
    "METRICS",
    "LOGIT_METRICS",
    "CHUNK_KEYS",
    "DIRECT",
    "KIND_METRICS",
    "MAPPED_ARRAYS",
    "METRIC_NAMES",
    "OPTIONAL_ARRAYS",
    "PATTERN_KINDS",
    "PRUNING_METRICS",
    "SCHEMA",
    "SPECIAL_FIELDS",
    "STRENGTH_FIELDS",
    "STRENGTH_SUMMARY_FIELDS",
    "THUMBNAIL_SIZE",
    "Metric",
    "ablation_array",
    "metric",
    "model_metrics",
    "summary_dims",
    "registry_json",
]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One per-head importance metric (Li et al. 2023 §5.2; Michel et al. 2019 for ``taylor``).

    Attributes:
      name: the name everywhere: results, bundle arrays, CLI, site.
      title: what the site's menu and axis say.
      definition: the formula, with ``p``/``p'`` the softmax output before/after pruning, ``y``
        the label (or the prediction without labels), ``z`` the vector the classifier reads and
        ``O_l`` the pruned head's own attention block output.
      unit: the unit of a value (``""`` for a plain number).
      important_high: True when a larger value marks a more important head.
      needs_ablation: True when it needs the pruned forward passes (not only the full pass).
      needs_logits: True when it reads the classifier's logits, so a backbone without a
        classifier (and without a probe) cannot have it.
      class_map: the metric the site's class x head map shows when this one is chosen, where
        that is another: a class's mean ``p'_y`` is mostly how confident the model is on the
        class, the same on every head, so under ``prob`` the map shows ``prob_drop``.
    """

    name: str
    title: str
    definition: str
    unit: str
    important_high: bool
    needs_ablation: bool
    needs_logits: bool = True
    class_map: str | None = None


METRICS: tuple[Metric, ...] = (
    Metric(
        "prob",
        "probability after pruning (p'_y)",
        "p'_y",
        "probability",
        important_high=False,
        needs_ablation=True,
        class_map="prob_drop",
    ),
    Metric(
        "prob_drop",
        "probability drop (p_y - p'_y)",
        "p_y - p'_y",
        "probability",
        important_high=True,
        needs_ablation=True,
    ),
    Metric(
        "kl",
        "KL(p || p') of the prediction",
        "sum_c p_c (log p_c - log p'_c)",
        "nats",
        important_high=True,
        needs_ablation=True,
    ),
    Metric(
        "layer",
        "layer impact ||O - O'|| / ||O||",
        "||O_l - O'_l|| / ||O_l|| over all tokens",
        "",
        important_high=True,
        needs_ablation=False,
        needs_logits=False,
    ),
    Metric(
        "repr",
        "representation change 1 - cos(z, z')",
        "1 - cos(z, z')",
        "",
        important_high=True,
        needs_ablation=True,
        needs_logits=False,
    ),
    Metric(
        "flip",
        "top-1 flip (global: fraction of images)",
        "1 where argmax p' != argmax p; over images, the fraction that flip",
        "",
        important_high=True,
        needs_ablation=True,
    ),
    Metric(
        "taylor",
        "Taylor |dLoss/dm|",
        "|d CE(p, y) / d m_lh| at head mask 1",
        "",
        important_high=True,
        needs_ablation=False,
    ),
)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
# The metrics that need the pruned forward passes (not only the unpruned one).
ABLATION_METRICS = frozenset(m.name for m in METRICS if m.needs_ablation)
# What pruning measures, in METRICS order: every metric but ``taylor``, a gradient at the
# unpruned model rather than the effect of a pruning. A set ablation gives these, and
# ``jaxvit-interp benchmark`` times the single-head sweep that gives them.
PRUNING_METRICS: tuple[str, ...] = tuple(n for n in METRIC_NAMES if n != "taylor")
LOGIT_METRICS = frozenset(m.name for m in METRICS if m.needs_logits)
_BY_NAME = {m.name: m for m in METRICS}


def model_metrics(num_classes: int) -> tuple[str, ...]:
    """The metrics a model has: all of them for a classifier, those that need no logits
    (``layer``, ``repr``) for a backbone without one (``num_classes == 0``)."""
    return tuple(m.name for m in METRICS if num_classes or not m.needs_logits)


def metric(name: str) -> Metric:
    """The :class:`Metric` called ``name`` (a ``KeyError`` naming the known ones otherwise)."""
    if name not in _BY_NAME:
        raise KeyError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
    return _BY_NAME[name]


# Per-image, per-head results of the hop-strength kernel, and which need a CLS token.
STRENGTH_FIELDS = ("strength", "mass", "head_entropy", "distance", "patch_to_cls", "cls_to_patch")
CLS_STRENGTH_FIELDS = ("patch_to_cls", "cls_to_patch")
# The over-images results of hop strength that a bundle keeps (fields of StrengthSummary).
STRENGTH_SUMMARY_FIELDS = (
    "strength_mean",
    "mass_mean",
    "head_entropy_mean",
    "head_entropy_std",
    "distance_mean",
    "patch_to_cls_mean",
    "cls_to_patch_mean",
    "entropy_histogram",
    "entropy_bin_edges",
)
# Per-image, per-head attention mass to and from each special token (strength.special), and
# their means over the images; a bundle keeps them for a model with special tokens.
SPECIAL_FIELDS = ("special_to", "special_from")
PATTERN_KINDS = ("cls", "patch")
# Bins of the over-images histogram of each head's entropy, over [0, ln K].
ENTROPY_BINS = 30
# Bins a side of the density image of each pattern kind's 2-D embedding.
DENSITY_BINS = 48
# Longest side, in pixels, of the thumbnails a bundle keeps and the page shows.
THUMBNAIL_SIZE = 64
# The most specific heads a bundle keeps per class and metric (the class map dots them).
CLASS_TOP_HEADS = 3
# A classifier's per-class arrays of each metric in the importance part: ``{metric}_class_{what}``.
CLASS_ARRAYS = ("mean", "specificity", "top")
_HEAD = ("L", "H")
# The reductions over images of a per-head importance array ``{name}`` ``[I, L, H]``: the
# importance part's ``{name}{suffix}`` (a classifier's per-class ones included).
SUMMARY_SUFFIXES = ("", "_mean", *(f"_class_{what}" for what in CLASS_ARRAYS))
# What takes an ablated head's place (jaxvit_interp.importance.ablation_kinds): its output times
# 0, its mean over reference images, or its output on a paired reference image.
ABLATION_KINDS: tuple[str, ...] = ("zero", "mean", "resample")
# The metrics each further ablation kind of a run has: all but taylor, whose gradient at the
# unpruned model is the same for every kind.
KIND_METRICS: tuple[str, ...] = PRUNING_METRICS
# Each head's direct logit attribution per image, in the importance part with its reductions.
DIRECT = "direct"


def ablation_array(metric: str, kind: str) -> str:
    """The importance part's name of ``metric`` under a further ablation ``kind`` than the run's
    first: ``prob_drop_mean_ablation``."""
    return f"{metric}_{kind}_ablation"


def summary_dims(name: str) -> dict[str, tuple[str | int, ...]]:
    """The importance part's arrays of one per-head array ``name`` and its reductions."""
    return {
        name: ("I", *_HEAD),
        f"{name}_mean": _HEAD,
        f"{name}_class_mean": ("C", *_HEAD),
        f"{name}_class_specificity": ("C", *_HEAD),
        f"{name}_class_top": ("C", "T_class", "lh"),
    }


def _pattern_arrays(kind: str) -> dict[str, tuple[str | int, ...]]:
    clusters = f"K{kind}"
    grid = ("gh", "gw") if kind == "cls" else ("oh", "ow")
    return {
        f"{kind}_positions": ("I", *_HEAD, "xy"),
        f"{kind}_clusters": ("I", *_HEAD),
        f"{kind}_representatives": (clusters, *grid),
        f"{kind}_centres": (clusters, *grid),
        f"{kind}_cluster_sizes": (clusters,),
        f"{kind}_positions_mean": (*_HEAD, "xy"),
        f"{kind}_head_cluster": _HEAD,
        f"{kind}_density": ("D", "D"),
        f"{kind}_extent": ("extent",),
    }


SCHEMA: dict[str, dict[str, tuple[str | int, ...]]] = {
    "images": {
        "labels": ("I",),
        "predictions": ("I",),
        "probs": ("I", "C"),
        "thumbnails": ("I", "h", "w", "c"),
        "pixels": ("I", "ih", "iw", "c"),
        "overview": ("I", "xy"),
    },
    "importance": {
        **{m: ("I", *_HEAD) for m in METRIC_NAMES},
        **{f"{m}_mean": _HEAD for m in METRIC_NAMES},
        **{f"{m}_class_mean": ("C", *_HEAD) for m in METRIC_NAMES},
        "class_counts": ("C",),
        # Class mean - mean over all images, signed (positive: more important for the class);
        # NaN for a class without images.
        **{f"{m}_class_specificity": ("C", *_HEAD) for m in METRIC_NAMES},
        # Each class's most specific (layer, head) pairs, most specific first; -1 for a class
        # without images.
        **{f"{m}_class_top": ("C", "T_class", "lh") for m in METRIC_NAMES},
        # Further ablation kinds than the run's first, and direct logit attribution.
        **{
            name: dims
            for kind in ABLATION_KINDS
            for m in KIND_METRICS
            for name, dims in summary_dims(ablation_array(m, kind)).items()
        },
        **summary_dims(DIRECT),
    },
    "partial": {
        "image_index": ("S_partial",),
        "prob": ("S_partial", *_HEAD, "M"),
        "top5_classes": ("S_partial", *_HEAD, "M", "T"),
        "top5_probs": ("S_partial", *_HEAD, "M", "T"),
        "prob_mean": (*_HEAD, "M"),
    },
    "strength": {
        "strength": ("I", *_HEAD, "K"),
        "mass": ("I", *_HEAD, "K"),
        "head_entropy": ("I", *_HEAD),
        "distance": ("I", *_HEAD),
        "patch_to_cls": ("I", *_HEAD),
        "cls_to_patch": ("I", *_HEAD),
        "strength_mean": (*_HEAD, "K"),
        "mass_mean": (*_HEAD, "K"),
        "head_entropy_mean": _HEAD,
        "head_entropy_std": _HEAD,
        "distance_mean": _HEAD,
        "patch_to_cls_mean": _HEAD,
        "cls_to_patch_mean": _HEAD,
        "entropy_histogram": (*_HEAD, "B"),
        "entropy_bin_edges": ("B+1",),
        "special_to": ("I", *_HEAD, "X"),
        "special_from": ("I", *_HEAD, "X"),
        "special_to_mean": (*_HEAD, "X"),
        "special_from_mean": (*_HEAD, "X"),
        "special_between_mean": (*_HEAD, "X", "X"),
    },
    "patterns": {
        name: dims for kind in PATTERN_KINDS for name, dims in _pattern_arrays(kind).items()
    },
    "head_sets": {
        "image_index": ("S_sets",),
        "interaction_heads": ("J", "lh"),
        # Means over the subset: interaction(i, j) = d(i and j) - d(i) - d(j), and d(i).
        "interaction_prob_drop": ("J", "J"),
        "interaction_kl": ("J", "J"),
        "single_prob_drop": ("J",),
        "single_kl": ("J",),
        "curve_order": ("V",),
        "curve_heads": ("V", "R", "lh"),
        "curve_accuracy": ("V", "R+1"),
        "curve_mean_prob": ("V", "R+1"),
        "curve_area": ("V",),
        "curve_removable": ("V", "Q"),
        "removable_points": ("Q",),
    },
    "shapley": {
        "image_index": ("S_shapley",),
        "values": _HEAD,
        "stderr": _HEAD,
        "single_drop": _HEAD,
        "disagree": _HEAD,
        "v_all": (),
        "permutations": (),
    },
    "patching": {
        "pairs": ("P", "cc"),
        **{
            name: dims
            for direction in ("denoising", "noising")
            for name, dims in (
                (f"{direction}_score", ("P", *_HEAD)),
                (f"{direction}_score_mean", _HEAD),
                (f"{direction}_prob", ("P", *_HEAD)),
            )
        },
        "prob_clean": ("P",),
        "prob_corrupt": ("P",),
        "defined": ("P",),
        "labels": ("P",),
    },
    "explanations": {
        "image_index": ("S_explain",),
        "labels": ("S_explain",),
        "maps": ("S_explain", "method", "gh", "gw"),
        "curves": ("S_explain", "method", "di", "steps+1"),
        "area": ("S_explain", "method", "di"),
        "random_curves": ("S_explain", "di", "steps+1"),
        "random_area": ("S_explain", "di"),
        "head_area": ("S_explain", *_HEAD, "di"),
        "head_area_mean": (*_HEAD, "di"),
    },
    "attention": {
        "image_index": ("S_attention",),
        "codes": ("S_attention", *_HEAD, "N", "N"),
        "steps": ("S_attention", *_HEAD, "N"),
        "exponents": ("S_attention", *_HEAD, "N"),
        "special": ("S_attention", *_HEAD, "N", "X"),
        "error": ("S_attention", *_HEAD),
        "error_max": _HEAD,
        "relative_error": ("S_attention", *_HEAD),
        "relative_error_max": _HEAD,
    },
    "rollout": {
        "map": ("I", "gh", "gw"),
        "contribution": ("I", "L"),
        "map_mean": ("gh", "gw"),
        "contribution_mean": ("L",),
    },
}
# The per-image arrays of a run folder's chunk files (pipeline.analyses, pipeline.chunk): for each
# analysis computed chunk by chunk, its results by the names its code gives them -> the chunk
# file's key. The bundle's per-image arrays are made from them (each analysis's part function).
CHUNK_KEYS: dict[str, dict[str, str]] = {
    "importance": {
        **{m: m for m in METRIC_NAMES},
        **{
            ablation_array(m, kind): ablation_array(m, kind)
            for kind in ABLATION_KINDS
            for m in KIND_METRICS
        },
        DIRECT: DIRECT,
        "probs": "probs",
        "predictions": "predictions",
        "targets": "targets",
    },
    "partial": {name: f"partial_{name}" for name in ("prob", "top5_classes", "top5_probs")},
    "strength": {field: field for field in STRENGTH_FIELDS},
    "special": {
        "to_token": "special_to",
        "from_token": "special_from",
        "between": "special_between",
    },
    "patterns": {kind: f"{kind}_pattern" for kind in PATTERN_KINDS},
    "rollout": {"map": "rollout_map", "contribution": "rollout_contribution"},
    "attention": {
        name: f"attention_{name}"
        for name in ("codes", "steps", "exponents", "special", "error", "relative_error")
    },
}
# Arrays too large to read into memory at once (gigabytes for thousands of ViT-B images): a
# bundle keeps each in its own ``.npy`` file, memory-mapped when the bundle is loaded.
MAPPED_ARRAYS: dict[str, set[str]] = {
    "images": {"pixels"},
    "attention": {"codes", "steps", "exponents", "special"},
}
# Arrays a bundle may leave out: a model without a CLS token has no CLS pattern nor CLS masses,
# one without special tokens no special-token masses, and a backbone without a classifier no
# probabilities, predictions, label metrics nor per-class means (its meta lists its metrics).
OPTIONAL_ARRAYS: dict[str, set[str]] = {
    "images": {"labels", "predictions", "probs"},
    "importance": {
        *(m.name for m in METRICS if m.needs_logits),
        *(f"{m.name}_mean" for m in METRICS if m.needs_logits),
        *(f"{m}_class_{what}" for m in METRIC_NAMES for what in CLASS_ARRAYS),
        "class_counts",
        *(
            name
            for kind in ABLATION_KINDS
            for m in KIND_METRICS
            for name in summary_dims(ablation_array(m, kind))
        ),
        *summary_dims(DIRECT),
    },
    "patterns": set(_pattern_arrays("cls")),
    "strength": {
        *CLS_STRENGTH_FIELDS,
        *(f"{name}_mean" for name in CLS_STRENGTH_FIELDS),
        *SPECIAL_FIELDS,
        *(f"{name}_mean" for name in SPECIAL_FIELDS),
        "special_between_mean",
    },
    # Linear codes (a version-3 bundle) have no exponents, special columns nor relative
    # errors; the bundle's attention_code says which it must have (ResultsBundle.validate).
    "attention": {"exponents", "special", "relative_error", "relative_error_max"},
    # A model of one head has no pairs.
    "head_sets": {
        "interaction_heads",
        "interaction_prob_drop",
        "interaction_kl",
        "single_prob_drop",
        "single_kl",
    },
}


def registry_json() -> dict[str, Any]:
    """The registry as the page receives it: metrics, array dimensions, kinds and bin counts."""
    return {
        "metrics": [dataclasses.asdict(m) for m in METRICS],
        "schema": {
            part: {k: list(v) for k, v in arrays.items()} for part, arrays in SCHEMA.items()
        },
        "pattern_kinds": list(PATTERN_KINDS),
        "strength_fields": list(STRENGTH_FIELDS),
        "entropy_bins": ENTROPY_BINS,
        "density_bins": DENSITY_BINS,
    }
