"""Pairwise head interactions: does a head matter more, or less, once another is gone?

For heads ``i`` and ``j`` and a metric ``d`` of pruning (``prob_drop`` or ``kl``),

    interaction(i, j) = d(i and j) - d(i) - d(j)

per image.  Zero when the two heads' effects add up; negative when they are redundant (each
covers for the other, so removing both hurts less than the sum); positive when they cooperate
(removing both hurts more than the sum).  The singles and the pairs come from one
:func:`~jaxvit_interp.importance.ablate` call, so they share the same arithmetic.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation_kinds import Ablation
from jaxvit_interp.importance.sets import ablate
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.summary import Summarized, listed, number, sizes

# The metrics an interaction is measured on: additive effects on the output.
INTERACTION_METRICS: tuple[str, ...] = ("prob_drop", "kl")


@dataclasses.dataclass(frozen=True, repr=False)
class HeadInteractions(Summarized):
    """Pairwise interactions among chosen heads.

    Attributes:
      heads: ``[k, 2]`` int ``(layer, head)`` pairs, in the order given (most important first
        when they come from a ranking).
      single: ``{metric: [image, k]}`` the effect of pruning each head alone.
      pair: ``{metric: [image, k, k]}`` the effect of pruning both heads (diagonal: the single).
      interaction: ``{metric: [image, k, k]}`` ``pair - single_i - single_j``, symmetric, 0 on
        the diagonal.
    """

    heads: np.ndarray
    single: dict[str, np.ndarray]
    pair: dict[str, np.ndarray]
    interaction: dict[str, np.ndarray]

    def mean(self, metric: str = "prob_drop") -> np.ndarray:
        """``[k, k]`` interaction averaged over the images."""
        return self.interaction[metric].mean(axis=0)

    def strongest(self, metric: str = "prob_drop", count: int = 5):
        """The ``count`` most redundant and most cooperative pairs by mean interaction:
        ``(redundant, cooperative)``, each a list of ``((layer, head), (layer, head), value)``."""
        mean = self.mean(metric)
        i, j = np.triu_indices(len(self.heads), k=1)
        order = np.argsort(mean[i, j], kind="stable")
        pick = lambda idx: [  # noqa: E731
            (
                tuple(map(int, self.heads[i[n]])),
                tuple(map(int, self.heads[j[n]])),
                float(mean[i[n], j[n]]),
            )
            for n in idx
        ]
        negative = [n for n in order if mean[i[n], j[n]] < 0][:count]
        positive = [n for n in order[::-1] if mean[i[n], j[n]] > 0][:count]
        return pick(negative), pick(positive)

    def _summary(self):
        k = len(self.heads)
        images = len(next(iter(self.interaction.values())))
        rows = [("metrics", listed(self.interaction))]
        redundant, cooperative = self.strongest("prob_drop", 1)
        for label, found in (("most redundant", redundant), ("most cooperative", cooperative)):
            text = (
                "none" if not found else f"{found[0][0]} and {found[0][1]}: {number(found[0][2])}"
            )
            rows.append((label, f"{text} (mean prob_drop interaction)"))
        return sizes(images=images, heads=k) + f", {k * (k - 1) // 2} pairs", rows


def pairwise_interactions(
    config: ViTConfig,
    params: Any,
    images,
    heads,
    labels=None,
    *,
    ablation: str | Ablation = "zero",
    reference=None,
    execution: Execution | None = None,
) -> HeadInteractions:
    """Interactions of every pair of ``heads`` (e.g. the 16 most important: 120 pairs).

    Args:
      heads: ``[(layer, head), ...]``, at least two, no repeats.
      labels: ``[image]`` int, or None for the unpruned predictions.
      ablation, reference, execution: as in :func:`~jaxvit_interp.importance.ablate`: the
        singles and the pairs replace their heads alike.
    """
    validate.check_unpruned(config, "pairwise_interactions")
    heads = validate.check_heads(config, heads)
    if len(heads) < 2:
        raise InputError(f"pairwise interactions need at least two heads, got {len(heads)}")
    if not config.num_classes:
        raise InputError(
            "pairwise interactions are measured on prob_drop and kl, which need the model's "
            "logits; this model is a backbone without a classifier (attach a linear probe)"
        )
    k = len(heads)
    pairs = list(itertools.combinations(range(k), 2))
    sets = [[h] for h in heads] + [[heads[a], heads[b]] for a, b in pairs]
    result = ablate(
        config,
        params,
        images,
        sets,
        labels,
        metrics=INTERACTION_METRICS,
        ablation=ablation,
        reference=reference,
        execution=execution,
    )
    single, pair, interaction = {}, {}, {}
    a, b = np.asarray(pairs).T
    for m in INTERACTION_METRICS:
        values = np.asarray(result[m], np.float64)
        s = values[:, :k]
        both = np.zeros((len(values), k, k))
        both[:, np.arange(k), np.arange(k)] = s
        both[:, a, b] = both[:, b, a] = values[:, k:]
        inter = both - s[:, :, None] - s[:, None, :]
        inter[:, np.arange(k), np.arange(k)] = 0.0
        single[m], pair[m], interaction[m] = s, both, inter
    return HeadInteractions(np.asarray(heads, np.int32), single, pair, interaction)
