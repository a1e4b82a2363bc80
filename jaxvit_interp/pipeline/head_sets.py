"""The analysis's head-set stage: heads measured together rather than one at a time.

On a seeded subset of the analysed images, with exact set ablations
(:func:`~jaxvit_interp.importance.ablate`):

- the pairwise interactions (:func:`~jaxvit_interp.importance.pairwise_interactions`) of the
  ``interaction_heads`` heads with the highest ``prob_drop`` averaged over all analysed images;
- the pruning curves (:func:`~jaxvit_interp.importance.pruning_curves`) in that importance order
  (least important first), in ``random_orders`` random orders and, for a model of at most
  ``greedy_max_heads`` heads, greedily (greedy costs about ``(L*H)^2 / 2`` set ablations: 10,440
  for ViT-B/16's 144 heads).

The result is the bundle's ``head_sets`` part (:data:`jaxvit_interp.quantities.SCHEMA`), kept in
the run folder as :data:`HEAD_SETS_FILE` once computed, so a resumed run does not redo it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance.pruning import CURVE_ORDERS, greedy_set_ablations
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.progress import start_progress
from jaxvit_interp.storage import UnreadableFileError, load_npz, save_npz

HEAD_SETS_FILE = "head-sets-stage.npz"
# The accuracy drops, in percentage points, whose removable head counts the bundle keeps.
REMOVABLE_POINTS = (1.0, 5.0)
# The importance metric that ranks the heads of the interactions and of the importance order.
RANKING_METRIC = "prob_drop"


def greedy_plan(config: ViTConfig, greedy_max_heads: int) -> tuple[bool, str]:
    """Whether the greedy curve is computed, and a sentence saying why (or why not)."""
    total = config.num_layers * config.num_heads
    if total <= greedy_max_heads:
        return True, f"greedy order computed ({total} heads <= greedy_max_heads {greedy_max_heads})"
    return False, (
        f"greedy order skipped: the model has {total} heads, more than greedy_max_heads "
        f"{greedy_max_heads} (greedy would take {greedy_set_ablations(total)} set ablations)"
    )


def top_heads(prob_drop: np.ndarray, count: int) -> np.ndarray:
    """``[count, 2]`` ``(layer, head)`` of the heads with the highest mean ``prob_drop`` over the
    images (``prob_drop`` ``[image, layer, head]``), most important first."""
    from jaxvit_interp.importance.aggregate import rank_heads

    mean = np.nanmean(np.asarray(prob_drop, np.float64), axis=0)
    return rank_heads(mean, higher_is_more_important=True)[:count]


def compute_head_sets(
    config: ViTConfig,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray | None,
    importance: Any,
    image_index: np.ndarray,
    *,
    interaction_heads: int,
    random_orders: int,
    greedy_max_heads: int,
    seed: int,
    execution: Execution | None = None,
    ablation: str = "zero",
    reference=None,
) -> dict[str, np.ndarray]:
    """The ``head_sets`` part for the images ``image_index`` of ``images``.

    Args:
      labels: ``[image]`` of all images, or None to measure against the unpruned predictions.
      importance: the :class:`~jaxvit_interp.importance.HeadImportance` of all the analysed
        images; its mean ``prob_drop`` ranks the heads.
      interaction_heads: how many of the top heads interact pairwise (at most ``L * H``).
      random_orders: how many random pruning orders (0: none).
      greedy_max_heads: the greedy order runs only for a model of at most this many heads.
      execution: how the set ablations run (:class:`~jaxvit_interp.execution.Execution`); its
        progress is one report over the stage's set ablations, moving with each batch of them
        (the interactions, each pruning order and greedy step): for ViT-B/16 on a CPU the stage
        takes tens of minutes. None: the defaults.
      ablation, reference: what takes a removed head's place, and the reference images of the
        subset's images it comes from, as :func:`~jaxvit_interp.importance.ablate` takes them.
    """
    from jaxvit_interp.importance import pairwise_interactions, pruning_curves

    total = config.num_layers * config.num_heads
    subset = images[image_index]
    sub_labels = None if labels is None else labels[image_index]
    execution = as_execution(execution)
    part: dict[str, np.ndarray] = {"image_index": np.asarray(image_index, np.int32)}
    count = min(interaction_heads, total)
    run_greedy, _ = greedy_plan(config, greedy_max_heads)
    orders = ("importance", *(("greedy",) if run_greedy else ()))
    orders += ("random",) if random_orders > 0 else ()
    # The stage's set ablations: the singles and pairs, then every prefix of every order.
    interaction_sets = count * (count + 1) // 2 if count >= 2 else 0
    curve_sets = total * (1 + max(random_orders, 0)) + (
        greedy_set_ablations(total) if run_greedy else 0
    )
    bar = start_progress(
        execution.progress,
        total=interaction_sets + curve_sets,
        desc="ablating head sets",
        unit="set",
    )

    if count >= 2:
        heads = top_heads(importance[RANKING_METRIC], count)
        inter = pairwise_interactions(
            config,
            params,
            subset,
            heads,
            sub_labels,
            ablation=ablation,
            reference=reference,
            execution=execution.with_progress(bar.share(interaction_sets)),
        )
        part["interaction_heads"] = inter.heads.astype(np.int32)
        for m in inter.interaction:
            part[f"interaction_{m}"] = inter.mean(m).astype(np.float32)
            part[f"single_{m}"] = inter.single[m].mean(axis=0).astype(np.float32)

    curves = pruning_curves(
        config,
        params,
        subset,
        sub_labels,
        importance=importance,
        metric=RANKING_METRIC,
        orders=orders,
        random_orders=max(random_orders, 1),
        seed=seed,
        ablation=ablation,
        reference=reference,
        execution=execution.with_progress(bar.share(curve_sets)),
    )
    bar.close()
    part.update(curve_arrays([curves[o] for o in CURVE_ORDERS if o in curves]))
    return part


def curve_arrays(rows: list) -> dict[str, np.ndarray]:
    """The part's curve arrays from :class:`~jaxvit_interp.importance.pruning.PruningCurve`
    results in :data:`CURVE_ORDERS` order: one row per curve (a row per random order), with the
    heads removable before accuracy falls each of :data:`REMOVABLE_POINTS`."""
    return {
        "curve_order": np.concatenate(
            [np.full(len(c.heads), CURVE_ORDERS.index(c.order), np.int32) for c in rows]
        ),
        "curve_heads": np.concatenate([c.heads for c in rows]).astype(np.int32),
        "curve_accuracy": np.concatenate([c.accuracy for c in rows]).astype(np.float32),
        "curve_mean_prob": np.concatenate([c.mean_prob for c in rows]).astype(np.float32),
        "curve_area": np.concatenate([c.area for c in rows]).astype(np.float32),
        "removable_points": np.asarray(REMOVABLE_POINTS, np.float32),
        "curve_removable": np.stack(
            [np.concatenate([c.removable_by_run(p) for c in rows]) for p in REMOVABLE_POINTS],
            axis=1,
        ).astype(np.int32),
    }


def head_sets_meta(
    config: ViTConfig, *, images: int, interaction_heads: int, random_orders: int,
    greedy_max_heads: int,
) -> dict[str, Any]:  # fmt: skip
    """What the bundle's meta says of the stage: the site shows it beside the curves."""
    run_greedy, why = greedy_plan(config, greedy_max_heads)
    return {
        "images": int(images),
        "ranking_metric": RANKING_METRIC,
        "interaction_heads": int(min(interaction_heads, config.num_layers * config.num_heads)),
        "random_orders": int(random_orders),
        "curve_orders": list(CURVE_ORDERS),
        "greedy": run_greedy,
        "greedy_note": why,
    }


def load_or_compute(path: Path, compute) -> dict[str, np.ndarray]:
    """The part kept at ``path`` by an earlier try of this run, else ``compute()`` saved there."""
    if path.exists():
        try:
            return load_npz(path)
        except UnreadableFileError:
            pass  # a torn file: compute it again
    part = compute()
    save_npz(path, part)
    return part
