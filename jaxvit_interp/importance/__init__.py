"""Head importance (paper §5.2): what pruning each attention head does to each image's prediction.

Pruning head ``h`` of layer ``l`` multiplies its output by 0 before the output projection. With
``p``/``p'`` the softmax output before/after pruning and ``y`` the label (the prediction when
there are no labels):

- :func:`head_importance`: per image and head, ``prob`` (``p'_y``), ``prob_drop``
  (``p_y - p'_y``), ``kl`` (``KL(p || p')``), ``layer`` (``||O_l - O'_l|| / ||O_l||``), ``repr``
  (``1 - cos(z, z')`` of the vector the classifier reads), ``flip`` (top-1 changes) and
  ``taylor`` (``|dLoss/dm|`` at head mask 1), computed by the batched ablation engine
  (:mod:`~jaxvit_interp.importance.engine`); titles and directions in
  :data:`jaxvit_interp.quantities.METRICS`. What takes a pruned head's place is
  ``ablation=`` (:class:`~jaxvit_interp.importance.ablation_kinds.Ablation`: ``"zero"``, the
  paper's; ``"mean"`` or ``"resample"``, from the ``reference=`` images), and how the work runs
  is ``execution=`` (:class:`~jaxvit_interp.execution.Execution`).
- :func:`ablate`: the same metrics for sets of heads pruned together, across layers.
- :func:`pairwise_interactions`: ``drop(i and j) - drop(i) - drop(j)`` for pairs of heads.
- :func:`direct_logit_attribution`: each head's direct contribution to the label logit through
  the final norm with its scale frozen, the stream's other terms, and the gap to the head's
  ablation effect (what flows through later layers).
- :func:`pruning_curves`: accuracy as heads go in importance, greedy and random orders.
- :func:`head_shapley`: Shapley values of heads for the game of ablating sets of them, exact or
  by permutation sampling with a standard error per head.
- :func:`class_specific_heads`: per class, the heads that matter for it more than on average.
- :func:`partial_pruning`: the paper's six partial-pruning modes with ``p'_y`` and the top 5.
- :mod:`~jaxvit_interp.importance.aggregate`: the "global" views over all images (means, flip
  fractions), per-class means and specificity, partial-pruning means, per-layer normalisation
  and rankings.
- :func:`image_layout`: the image overview (view A), images placed by their importance vectors.
- :func:`cumulative_pruning_accuracy`: accuracy as heads are pruned one after another in a ranking.
- :func:`activation_patching`: each head's output carried between a clean and a corrupted image
  (a resample ablation), and the normalised patching score.
"""

from jaxvit_interp.budget import BatchPlan, MemoryBudgetError, default_memory_budget, plan_batches
from jaxvit_interp.importance.ablation import HeadImportance, head_importance
from jaxvit_interp.importance.ablation_kinds import ABLATION_KINDS, Ablation
from jaxvit_interp.importance.aggregate import (
    HIGHER_IS_MORE_IMPORTANT,
    ClassHeads,
    ClassImportance,
    GlobalImportance,
    class_specific_heads,
    class_specificity,
    flip_fraction,
    global_importance,
    head_ranks,
    importance_summary,
    normalize_per_layer,
    partial_prob_mean,
    per_class_importance,
    rank_by_metric,
    rank_heads,
)
from jaxvit_interp.importance.curves import cumulative_pruning_accuracy
from jaxvit_interp.importance.direct import DirectLogitAttribution, direct_logit_attribution
from jaxvit_interp.importance.interactions import HeadInteractions, pairwise_interactions
from jaxvit_interp.importance.layout import image_layout
from jaxvit_interp.importance.partial import PartialPruning, partial_pruning
from jaxvit_interp.importance.patching import (
    PATCHING_DIRECTIONS,
    ActivationPatching,
    activation_patching,
)
from jaxvit_interp.importance.pruning import CURVE_ORDERS, PruningCurve, pruning_curves
from jaxvit_interp.importance.sets import SET_METRICS, SetAblation, ablate
from jaxvit_interp.importance.shapley import SHAPLEY_METRICS, HeadShapley, head_shapley
from jaxvit_interp.importance.taylor import taylor_importance
from jaxvit_interp.importance.validate import METRICS

__all__ = [
    "ABLATION_KINDS",
    "Ablation",
    "ActivationPatching",
    "PATCHING_DIRECTIONS",
    "activation_patching",
    "HIGHER_IS_MORE_IMPORTANT",
    "METRICS",
    "CURVE_ORDERS",
    "SET_METRICS",
    "SHAPLEY_METRICS",
    "ClassHeads",
    "DirectLogitAttribution",
    "HeadInteractions",
    "HeadShapley",
    "PruningCurve",
    "SetAblation",
    "ablate",
    "class_specific_heads",
    "class_specificity",
    "direct_logit_attribution",
    "pairwise_interactions",
    "pruning_curves",
    "BatchPlan",
    "MemoryBudgetError",
    "ClassImportance",
    "cumulative_pruning_accuracy",
    "GlobalImportance",
    "HeadImportance",
    "PartialPruning",
    "default_memory_budget",
    "flip_fraction",
    "global_importance",
    "head_importance",
    "head_ranks",
    "head_shapley",
    "image_layout",
    "importance_summary",
    "partial_prob_mean",
    "normalize_per_layer",
    "partial_pruning",
    "per_class_importance",
    "plan_batches",
    "rank_by_metric",
    "rank_heads",
    "taylor_importance",
]
