"""Pruning curves: accuracy and mean ``p(label)`` as heads are removed one after another.

Three orders, each a curve over ``k = 0 .. K`` removed heads:

- ``importance``: least important first by a head-importance metric averaged over the images;
- ``greedy``: at each step the head whose removal hurts least given those already removed (the
  highest mean ``p(label)`` afterwards), all candidates of a step ablated in one batch. It costs
  :func:`greedy_set_ablations` set ablations (10,440 for ViT-B/16's 144 heads), so unless it is
  asked for by name it runs only where it costs no more than a whole greedy curve of
  :data:`GREEDY_MAX_HEADS` heads: a whole curve for a model of at most that many heads, the cap
  of the analysis's head-set stage (``AnalysisSettings.greedy_max_heads``);
- ``random``: several random orders, a band for what ranking by chance gives.

Every point is an exact set ablation (:func:`~jaxvit_interp.importance.ablate`).  A good
ranking keeps accuracy up longer: greedy's curve should lie above the importance order's, and
that above the random ones.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation import HeadImportance, head_importance
from jaxvit_interp.importance.ablation_kinds import Ablation, as_ablation
from jaxvit_interp.importance.aggregate import rank_heads
from jaxvit_interp.importance.sets import SetAblation, ablate
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.progress import start_progress
from jaxvit_interp.quantities import metric as metric_info
from jaxvit_interp.summary import Summarized, listed, number

CURVE_ORDERS: tuple[str, ...] = ("importance", "greedy", "random")
# The greedy order runs unasked only where it costs no more than a whole greedy curve of this
# many heads, 1,176 set ablations (ViT-S/16's 72 heads would take 2,628, ViT-B/16's 144 take
# 10,440): for a whole curve, a model of at most this many heads.
GREEDY_MAX_HEADS = 48


def greedy_set_ablations(total_heads: int, steps: int | None = None) -> int:
    """Set ablations of a greedy curve of ``steps`` removals (default: every head) among
    ``total_heads`` heads: step ``k`` ablates each of the ``total_heads - k`` heads left."""
    steps = total_heads if steps is None else min(steps, total_heads)
    return steps * total_heads - steps * (steps - 1) // 2


@dataclasses.dataclass(frozen=True, repr=False)
class PruningCurve(Summarized):
    """One order's curves (several runs for ``random``, one otherwise).

    Attributes:
      order: which order (one of :data:`CURVE_ORDERS`).
      heads: ``[run, K, 2]`` int ``(layer, head)`` in the order removed.
      accuracy: ``[run, K + 1]`` top-1 accuracy after removing the first ``k`` heads (entry 0:
        the unpruned model); against the labels, or agreement with the unpruned predictions
        when there are none.
      mean_prob: ``[run, K + 1]`` mean ``p(label)`` (or of the unpruned prediction).
    """

    order: str
    heads: np.ndarray
    accuracy: np.ndarray
    mean_prob: np.ndarray

    def removable(self, points: float) -> int | np.ndarray:
        """How many heads can go, in this order, before accuracy falls more than ``points``
        percentage points below the unpruned model's (K when it never does): an ``int`` for a
        curve of one order (``importance``, ``greedy``), and for several random orders an
        int array ``[run]``, one count per order (:meth:`removable_by_run` for every curve).
        """
        counts = self.removable_by_run(points)
        return int(counts[0]) if len(counts) == 1 else counts

    def removable_by_run(self, points: float) -> np.ndarray:
        """``[run]`` int64: :meth:`removable` of each run, for a curve of one run too."""
        floor = self.accuracy[:, :1] - points / 100.0 - 1e-9
        below = self.accuracy < floor
        first = np.where(below.any(axis=1), below.argmax(axis=1), self.accuracy.shape[1])
        return (first - 1).astype(np.int64)

    @property
    def area(self) -> np.ndarray:
        """``[run]`` mean accuracy over ``k = 0 .. K`` (the area under the curve, normalised)."""
        return self.accuracy.mean(axis=1)

    def _summary(self):
        runs, count = self.heads.shape[:2]
        mean_of = f" (mean of {runs})" if runs > 1 else ""  # several random orders
        removable = {p: self.removable_by_run(p) for p in (1.0, 5.0)}
        rows = [
            (
                "accuracy",
                f"{number(self.accuracy[:, 0].mean())} unpruned, "
                f"{number(self.accuracy[:, -1].mean())} with {count} removed{mean_of}",
            ),
            (
                "removable",
                "; ".join(
                    f"within {p:g} point{'s' * (p != 1)}: {listed(r.tolist())}"
                    for p, r in removable.items()
                ),
            ),
            ("area", number(self.area.mean()) + mean_of),
        ]
        return f"{self.order} order, {runs} run{'s' * (runs > 1)} of {count} removals", rows


def _points(result: SetAblation) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Accuracy and mean ``p(label)`` per set, and the unpruned model's two (every result
    carries the unpruned pass its ablations start from)."""
    rows = np.arange(len(result.labels))
    unpruned = (
        float((result.predictions == result.labels).mean()),
        float(result.probs[rows, result.labels].mean()),
    )
    return result.accuracy, result.prob.mean(axis=0), unpruned


def _prefix_curve(run_sets, order_heads: np.ndarray):
    """Curves for several orders ``[run, K, 2]``: every prefix is one set, all in one call."""
    runs, count = order_heads.shape[:2]
    sets = [[tuple(h) for h in order_heads[r, : k + 1]] for r in range(runs) for k in range(count)]
    accuracy, mean_prob, unpruned = _points(run_sets(sets))
    head = lambda v, a: np.concatenate(  # noqa: E731
        [np.full((runs, 1), v), a.reshape(runs, count)], axis=1
    )
    return head(unpruned[0], accuracy), head(unpruned[1], mean_prob)


def pruning_curves(
    config: ViTConfig,
    params: Any,
    images,
    labels=None,
    *,
    importance: HeadImportance | None = None,
    metric: str = "prob_drop",
    orders: tuple[str, ...] | None = None,
    random_orders: int = 5,
    seed: int = 0,
    max_heads: int | None = None,
    ablation: str | Ablation = "zero",
    reference=None,
    execution: Execution | None = None,
) -> dict[str, PruningCurve]:
    """Pruning curves of ``orders`` over the first ``max_heads`` removals (default: all heads).

    Args:
      labels: ``[image]`` int, or None to measure agreement with the unpruned predictions.
      importance: the per-image head importance that orders ``importance`` (computed here,
        ``metric`` only, when None).
      metric: the importance metric of the ``importance`` order, averaged over the images.
      orders: some of :data:`CURVE_ORDERS`; each one named runs. None: all of them, except
        that the greedy order is skipped, with a warning, where its set ablations
        (:func:`greedy_set_ablations`) would be more than a whole curve of
        :data:`GREEDY_MAX_HEADS` heads takes: for a whole curve, on a model of more heads.
      random_orders: how many random orders (seeded by ``seed``).
      max_heads: stop each curve after this many removals (greedy costs ``K`` ablation batches
        of up to ``L * H`` sets each).
      ablation, reference: what takes a removed head's place and the images it comes from, as
        in :func:`~jaxvit_interp.importance.head_importance` (the importance order too, when it
        is computed here).
      execution: as in :func:`~jaxvit_interp.importance.head_importance`; its progress is one
        report over every set ablation of every curve.

    Returns:
      ``{order: PruningCurve}`` for each order computed.
    """
    validate.check_unpruned(config, "pruning_curves")
    if not config.num_classes:
        raise InputError(
            "pruning curves measure accuracy, which needs the model's logits; this model is a "
            "backbone without a classifier (attach a linear probe)"
        )
    total = config.num_layers * config.num_heads
    count = total if max_heads is None else validate.check_positive("max_heads", max_heads)
    count = min(count, total)
    if orders is None:
        orders = CURVE_ORDERS
        greedy_sets = greedy_set_ablations(total, count)
        if greedy_sets > greedy_set_ablations(GREEDY_MAX_HEADS):
            orders = tuple(o for o in CURVE_ORDERS if o != "greedy")
            warnings.warn(
                f"pruning_curves: the greedy order is skipped: on a model of {total} heads "
                f"(more than GREEDY_MAX_HEADS {GREEDY_MAX_HEADS}) it would take "
                f"{greedy_sets:,} set ablations; ask for it by name to run it: "
                f"orders={CURVE_ORDERS} (with max_heads=K, its first K removals only)",
                stacklevel=2,
            )
    unknown = [o for o in orders if o not in CURVE_ORDERS]
    if unknown:
        raise InputError(f"unknown pruning order(s) {unknown}; expected some of {CURVE_ORDERS}")
    info = metric_info(metric)
    if "random" in orders:
        random_orders = validate.check_positive("random_orders", random_orders)
    ablation = as_ablation(ablation)
    execution = as_execution(execution)
    images = validate.check_images(config, images)
    labels = validate.check_labels(config, labels, images.shape[0])
    validate.check_reference(config, ablation, reference, images)

    # Every curve's set ablations in one report: a greedy curve is most of them.
    sets_of = {
        "importance": count + (total if importance is None else 0),
        "random": random_orders * count,
        "greedy": greedy_set_ablations(total, count),
    }
    bar = start_progress(
        execution.progress,
        total=sum(sets_of[o] for o in set(orders)),
        desc="pruning curves",
        unit="set",
    )

    def run_sets(sets):
        return ablate(
            config,
            params,
            images,
            sets,
            labels,
            metrics=("prob",),
            ablation=ablation,
            reference=reference,
            execution=execution.with_progress(bar.share(len(sets))),
        )

    curves: dict[str, PruningCurve] = {}
    if "importance" in orders:
        if importance is None:
            importance = head_importance(
                config,
                params,
                images,
                labels,
                metrics=(metric,),
                ablation=ablation,
                reference=reference,
                execution=execution.with_progress(bar.share(total)),
            )
        mean = np.nanmean(np.asarray(importance[metric], np.float64), axis=0)
        least_first = rank_heads(mean, higher_is_more_important=info.important_high)[::-1]
        order = least_first[None, :count]
        accuracy, mean_prob = _prefix_curve(run_sets, order)
        curves["importance"] = PruningCurve("importance", order, accuracy, mean_prob)
    if "random" in orders:
        rng = np.random.default_rng(seed)
        all_heads = np.asarray(
            [(layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)]
        )
        order = np.stack([all_heads[rng.permutation(total)[:count]] for _ in range(random_orders)])
        accuracy, mean_prob = _prefix_curve(run_sets, order)
        curves["random"] = PruningCurve("random", order, accuracy, mean_prob)
    if "greedy" in orders:
        removed: list[tuple[int, int]] = []
        accuracy, mean_prob = [], []
        remaining = [
            (layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)
        ]
        for _ in range(count):
            acc, prob, unpruned = _points(run_sets([[*removed, c] for c in remaining]))
            if not accuracy:  # k = 0: the unpruned model
                accuracy.append(unpruned[0])
                mean_prob.append(unpruned[1])
            # Least harm: the highest mean p(label); ties by accuracy, then layer-major order.
            best = int(np.lexsort((-acc, -prob))[0])
            removed.append(remaining.pop(best))
            accuracy.append(float(acc[best]))
            mean_prob.append(float(prob[best]))
        curves["greedy"] = PruningCurve(
            "greedy",
            np.asarray(removed, np.int32)[None],
            np.asarray(accuracy)[None],
            np.asarray(mean_prob)[None],
        )
    bar.close()
    return curves
