"""What several runs are compared by: per-run summaries of values their bundles already hold.

Every function here is a pure function of a results bundle's arrays (:data:`~jaxvit_interp.
quantities.SCHEMA`); nothing is measured again. The comparison site
(:mod:`jaxvit_interp.site.comparison`) draws these summaries, one colour per run.

- Per-layer profiles on a relative depth axis, ``(layer + 0.5) / L``, so a 6-layer and a 12-layer
  model share one axis: the mean over heads of each head's entropy (``strength/head_entropy_mean``),
  of its attention distance (``strength/distance_mean``) and of its mean hop (the hop-strength
  profile ``strength/strength_mean`` normalised to a distribution over hops ``0 .. K-1``, and its
  mean).
- The spread of head importance: a Lorenz-like curve, the share of the total ``|mean metric|``
  that the ``k`` most important heads carry against ``k / (L * H)``; and the heads removable
  before accuracy falls by each of the bundle's ``head_sets/removable_points``, where the run has
  a head-set stage.
- Special-token mass: the mean over layers and heads of ``strength/special_to_mean``, the attention
  a patch pays each special token, grouped by kind (``cls``, ``distillation``, ``registers``: the
  sum over the registers).
- Image matching: the images of the runs matched by id (``meta["image_ids"]``).
- Per image, side by side: for each image the runs share (or, when they share none, each run's
  own first images), each run's rollout map on its own patch grid, its prediction and its
  probability, the label where the run knows it, and the explanation maps where the run has an
  ``explanations`` part (:func:`compare_images`).

A part a run lacks gives ``None`` for what it would have given, never an error: a run without a
``strength`` part simply has no curve in the per-layer plots.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.importance.pruning import CURVE_ORDERS

__all__ = [
    "IMPORTANCE_METRICS",
    "SPECIAL_KINDS",
    "UNSHARED_IMAGES",
    "ImageComparison",
    "ImageMatch",
    "RunImages",
    "RunSummary",
    "compare_images",
    "importance_spread",
    "layer_profiles",
    "match_images",
    "mean_hop",
    "relative_depth",
    "removable_heads",
    "run_images",
    "special_token_mass",
    "summarize_run",
]

# The metric whose spread over heads is compared, first one a run has: a classifier's
# probability drop, else (a backbone) its representation change, else its layer impact.
IMPORTANCE_METRICS = ("prob_drop", "repr", "layer")
# Kinds of special token, in token order; each register is counted under "registers".
SPECIAL_KINDS = ("cls", "distillation", "registers")
# Pruning orders whose removable head counts are compared (the random order is a baseline of one
# run's curves, not a property of the model's ranking).
REMOVABLE_ORDERS = ("importance", "greedy")
# Runs that share no image: each run's own first images the per-image comparison shows.
UNSHARED_IMAGES = 12


def relative_depth(num_layers: int) -> np.ndarray:
    """``[L]`` the centre of each layer on ``[0, 1]``: ``(layer + 0.5) / L``."""
    return (np.arange(num_layers) + 0.5) / num_layers


def mean_hop(strength: np.ndarray) -> np.ndarray:
    """The mean hop of each head's hop-strength profile, in patches.

    Args:
      strength: ``[..., K]`` strength per hop ``0 .. K-1`` (``strength/strength_mean``).

    Returns:
      ``[...]``: ``sum_k k s_k / sum_k s_k``; NaN where the strength is all 0.
    """
    strength = np.asarray(strength, np.float64)
    total = strength.sum(axis=-1)
    hops = np.arange(strength.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (strength * hops).sum(axis=-1) / np.where(total > 0, total, np.nan)


def _head_mean(values: np.ndarray) -> np.ndarray:
    """``[L, H] -> [L]``: the mean over the heads that have a value (NaN: none has)."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, values, 0.0).sum(axis=1) / np.where(count > 0, count, np.nan)


def layer_profiles(strength: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per layer, the mean over heads of entropy, attention distance and mean hop.

    Args:
      strength: a bundle's ``strength`` part.

    Returns:
      ``depth``, ``entropy``, ``distance``, ``hop``: each ``[L]`` (``depth`` from
      :func:`relative_depth`).
    """
    entropy = np.asarray(strength["head_entropy_mean"])
    return {
        "depth": relative_depth(entropy.shape[0]),
        "entropy": _head_mean(entropy),
        "distance": _head_mean(strength["distance_mean"]),
        "hop": _head_mean(mean_hop(strength["strength_mean"])),
    }


def importance_spread(mean_importance: np.ndarray) -> dict[str, np.ndarray]:
    """How many heads carry how much of the importance: a Lorenz-like curve.

    Args:
      mean_importance: ``[L, H]`` a metric's mean over images (e.g. ``prob_drop_mean``); its
        absolute value is a head's share (a head whose removal helps still moves the output).

    Returns:
      ``fraction`` ``[L*H + 1]``: ``k / (L * H)`` for ``k = 0 .. L*H`` heads, most important
      first; ``share`` ``[L*H + 1]``: the share of the total those ``k`` heads carry (0 at
      ``k = 0``, 1 at all heads; NaN throughout when every head's value is 0 or not finite).
    """
    values = np.abs(np.asarray(mean_importance, np.float64)).ravel()
    values = np.where(np.isfinite(values), values, 0.0)
    ordered = np.sort(values)[::-1]
    total = ordered.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(ordered)])
    share = cumulative / total if total > 0 else np.full(cumulative.shape, np.nan)
    return {"fraction": np.arange(len(cumulative)) / len(values), "share": share}


def removable_heads(head_sets: dict[str, np.ndarray]) -> dict[str, dict[float, float]]:
    """Heads removable before accuracy falls by each of the run's points, per pruning order.

    Args:
      head_sets: a bundle's ``head_sets`` part (``curve_order``, ``curve_removable``,
        ``removable_points``).

    Returns:
      order (those of :data:`REMOVABLE_ORDERS` the run measured) -> accuracy drop in points ->
      the number of heads (the mean over the order's curves where it has several).
    """
    orders = np.asarray(head_sets["curve_order"])
    removable = np.asarray(head_sets["curve_removable"], np.float64)
    points = [float(p) for p in np.asarray(head_sets["removable_points"])]
    result = {}
    for order in REMOVABLE_ORDERS:
        rows = orders == CURVE_ORDERS.index(order)
        if rows.any():
            result[order] = {p: float(removable[rows, q].mean()) for q, p in enumerate(points)}
    return result


def special_token_mass(
    special_to_mean: np.ndarray, token_names: list[str] | tuple[str, ...]
) -> dict[str, float]:
    """The attention a patch pays each kind of special token, mean over layers and heads.

    Args:
      special_to_mean: ``[L, H, X]`` (``strength/special_to_mean``).
      token_names: the ``X`` tokens' names (``meta["special_tokens"]``: ``cls``,
        ``distillation``, ``register_0``, ...).

    Returns:
      kind (of :data:`SPECIAL_KINDS`, those the run has) -> mass; the registers' masses are summed.
    """
    per_token = np.nanmean(np.asarray(special_to_mean, np.float64), axis=(0, 1))
    mass: dict[str, float] = {}
    for name, value in zip(token_names, per_token):
        kind = "registers" if name.startswith("register") else name
        mass[kind] = mass.get(kind, 0.0) + float(value)
    return {kind: mass[kind] for kind in SPECIAL_KINDS if kind in mass}


@dataclasses.dataclass
class RunSummary:
    """What one run is compared by (``None``: the run lacks the part it comes from).

    Attributes:
      num_layers, num_heads: the model's shape.
      layers: :func:`layer_profiles`.
      metric: the importance metric of ``spread`` (the first of :data:`IMPORTANCE_METRICS`).
      spread: :func:`importance_spread` of ``importance/{metric}_mean``.
      removable: :func:`removable_heads` of the run's ``head_sets`` part.
      special: :func:`special_token_mass` (empty for a model without special tokens).
    """

    num_layers: int
    num_heads: int
    layers: dict[str, np.ndarray] | None
    metric: str | None
    spread: dict[str, np.ndarray] | None
    removable: dict[str, dict[float, float]] | None
    special: dict[str, float]


def summarize_run(bundle: ResultsBundle) -> RunSummary:
    """The :class:`RunSummary` of one results bundle."""
    dims = bundle.dims()
    strength = bundle.parts.get("strength")
    importance = bundle.parts.get("importance", {})
    metric = next((m for m in IMPORTANCE_METRICS if f"{m}_mean" in importance), None)
    special = {}
    if strength is not None and "special_to_mean" in strength:
        names = bundle.meta.get("special_tokens") or []
        special = special_token_mass(strength["special_to_mean"], names)
    return RunSummary(
        num_layers=dims["L"],
        num_heads=dims["H"],
        layers=layer_profiles(strength) if strength is not None else None,
        metric=metric,
        spread=importance_spread(importance[f"{metric}_mean"]) if metric else None,
        removable=removable_heads(bundle["head_sets"]) if "head_sets" in bundle.parts else None,
        special=special,
    )


@dataclasses.dataclass
class ImageMatch:
    """How the runs' images match by id.

    Attributes:
      shared: the ids every run has, in the first run's order.
      same: every run has exactly the same ids.
    """

    shared: list[str]
    same: bool

    @property
    def distributions_only(self) -> bool:
        """No image is in every run: the runs can be compared over their images only."""
        return not self.shared


def match_images(image_ids: list[list[str]]) -> ImageMatch:
    """Match the runs' images by id (``meta["image_ids"]``: the file names the analysis read)."""
    ids = [[str(i) for i in run] for run in image_ids]
    common = set(ids[0]).intersection(*map(set, ids[1:]))
    shared = [i for i in ids[0] if i in common]
    return ImageMatch(shared=shared, same=all(set(run) == set(ids[0]) for run in ids))


@dataclasses.dataclass
class RunImages:
    """One run's side of the per-image comparison: its values for each image shown.

    Attributes:
      index: ``[n]`` the images' rows in the run's bundle.
      ids: the images' ids (``meta["image_ids"]``).
      grid: the run's patch grid ``(gh, gw)``: runs of other patch or image sizes keep their own.
      rollout: ``[n, gh, gw]`` the rollout map (``rollout/map``); None without a rollout part.
      class_names: the run's classes (empty for a backbone).
      predicted: ``[n]`` the predicted class (``images/predictions``); None for a backbone
        (``num_classes`` 0), which predicts nothing.
      probability: ``[n]`` the predicted class's probability (``images/probs``); None likewise.
      label: ``[n]`` the label; None where the run does not know it (a backbone, or labels that
        are the model's own predictions, ``meta["labels_are_predictions"]``).
      methods: the explanation methods (``meta["explanations"]["methods"]``), empty without an
        ``explanations`` part.
      explain_row: ``[n]`` each image's row in the explanations part (``S_explain``), -1 where
        the image is not one of the explained ones (all -1 without the part).
      explain_maps: ``[n, method, gh, gw]`` the explanation maps (``explanations/maps``), NaN
        for images not explained; None without the part.
    """

    index: np.ndarray
    ids: list[str]
    grid: tuple[int, int]
    rollout: np.ndarray | None
    class_names: list[str]
    predicted: np.ndarray | None
    probability: np.ndarray | None
    label: np.ndarray | None
    methods: list[str]
    explain_row: np.ndarray
    explain_maps: np.ndarray | None

    @property
    def correct(self) -> np.ndarray | None:
        """``[n]`` whether the prediction is the label; None where either is unknown."""
        if self.predicted is None or self.label is None:
            return None
        return self.predicted == self.label


def run_images(bundle: ResultsBundle, index) -> RunImages:
    """The :class:`RunImages` of ``bundle`` at its image rows ``index``."""
    index = np.asarray(index, np.int64).reshape(-1)
    meta, images = bundle.meta, bundle["images"]
    config = meta["config"]
    grid = (
        config["image_size"][0] // config["patch_size"][0],
        config["image_size"][1] // config["patch_size"][1],
    )
    ids = [str(meta["image_ids"][i]) for i in index]
    rollout = None
    if "rollout" in bundle.parts:
        rollout = np.asarray(bundle["rollout"]["map"][index], np.float32)
    class_names = [str(c) for c in meta.get("class_names") or []]
    predicted = probability = label = None
    if class_names:  # a backbone (num_classes 0) has no classifier: nothing is predicted
        predicted = np.asarray(images["predictions"][index], np.int64)
        probability = np.asarray(images["probs"][index, predicted], np.float32)
        if not meta.get("labels_are_predictions", False):
            label = np.asarray(images["labels"][index], np.int64)
    methods: list[str] = []
    explain_row = np.full(len(index), -1, np.int64)
    explain_maps = None
    if "explanations" in bundle.parts:
        part = bundle["explanations"]
        methods = [str(m) for m in (meta.get("explanations") or {})["methods"]]
        row_of = {int(image): row for row, image in enumerate(part["image_index"])}
        explain_row = np.array([row_of.get(int(i), -1) for i in index], np.int64)
        maps = np.asarray(part["maps"], np.float32)
        explain_maps = np.full((len(index), *maps.shape[1:]), np.nan, np.float32)
        explained = explain_row >= 0
        explain_maps[explained] = maps[explain_row[explained]]
    return RunImages(
        index=index,
        ids=ids,
        grid=grid,
        rollout=rollout,
        class_names=class_names,
        predicted=predicted,
        probability=probability,
        label=label,
        methods=methods,
        explain_row=explain_row,
        explain_maps=explain_maps,
    )


@dataclasses.dataclass
class ImageComparison:
    """The images shown side by side, and each run's values for them.

    Attributes:
      match: how the runs' images match (:func:`match_images`).
      shared: the runs share images: image ``j`` of every run is the same image (the ``j``-th
        of ``match.shared``); otherwise each run shows its own first images.
      runs: each run's :class:`RunImages`, in the runs' order.
    """

    match: ImageMatch
    shared: bool
    runs: list[RunImages]


def compare_images(
    bundles: list[ResultsBundle], *, unshared_images: int = UNSHARED_IMAGES
) -> ImageComparison:
    """Each run's values for the images the runs share, matched by id, in the first run's
    order; when they share none, for each run's own first ``unshared_images`` images."""
    ids = [[str(i) for i in b.meta["image_ids"]] for b in bundles]
    match = match_images(ids)
    if match.shared:
        rows = []
        for run in ids:
            first: dict[str, int] = {}
            for row, image in enumerate(run):
                first.setdefault(image, row)  # an id listed twice: its first image
            rows.append([first[i] for i in match.shared])
    else:
        rows = [list(range(min(unshared_images, len(run)))) for run in ids]
    return ImageComparison(
        match=match,
        shared=bool(match.shared),
        runs=[run_images(b, r) for b, r in zip(bundles, rows)],
    )
