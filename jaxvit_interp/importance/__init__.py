"""Head importance: what pruning each attention head does to each image's prediction.

- :func:`head_importance`: ``prob``, ``prob_drop``, ``kl``, ``layer``, ``repr``, ``flip`` and
  ``taylor`` for every image and head (DESIGN.md §1), computed by the batched ablation engine
  (:mod:`~jaxvit_interp.importance.engine`).
- :func:`partial_pruning`: the paper's six partial-pruning modes with ``p'_y`` and the top 5.
- :mod:`~jaxvit_interp.importance.aggregate`: global means, flip fractions, per-class means,
  per-layer normalisation and head rankings.
- :func:`cumulative_pruning_accuracy`: accuracy as heads are pruned one after another in a ranking.
"""

from jaxvit_interp.importance.ablation import HeadImportance, head_importance
from jaxvit_interp.importance.aggregate import (
    HIGHER_IS_MORE_IMPORTANT,
    ClassImportance,
    GlobalImportance,
    flip_fraction,
    global_importance,
    head_ranks,
    normalize_per_layer,
    per_class_importance,
    rank_by_metric,
    rank_heads,
)
from jaxvit_interp.importance.curves import cumulative_pruning_accuracy
from jaxvit_interp.importance.engine import BatchPlan, default_memory_budget, plan_batches
from jaxvit_interp.importance.partial import PartialPruning, partial_pruning
from jaxvit_interp.importance.taylor import taylor_importance
from jaxvit_interp.importance.validate import METRICS

__all__ = [
    "HIGHER_IS_MORE_IMPORTANT",
    "METRICS",
    "BatchPlan",
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
    "normalize_per_layer",
    "partial_pruning",
    "per_class_importance",
    "plan_batches",
    "rank_by_metric",
    "rank_heads",
    "taylor_importance",
]
