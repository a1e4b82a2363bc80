"""The analysis's head-set stage: its arrays are the library's interactions and pruning curves on
the same subset of images, it is kept in the run folder, and it can be turned off."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import (
    CURVE_ORDERS,
    head_importance,
    pairwise_interactions,
    pruning_curves,
    rank_heads,
)
from jaxvit_interp.pipeline.head_sets import HEAD_SETS_FILE, greedy_plan, load_or_compute
from jaxvit_interp.pipeline.settings import AnalysisSettings

QUIET = Execution(progress=False)


@pytest.mark.slow
def test_stage_equals_the_library_on_the_same_images(digits_head_sets_run):
    config, params, images, labels, settings, out = digits_head_sets_run
    bundle = load_bundle(out)
    part, meta = bundle["head_sets"], bundle.meta["head_sets"]
    index = part["image_index"]
    assert len(index) == settings.set_images == len(np.unique(index))
    assert not meta["greedy"] and "24 heads" in meta["greedy_note"]

    # The ranking: the highest prob_drop over all 24 images, from a fresh importance pass.
    whole = head_importance(config, params, images, labels, metrics=("prob_drop",), execution=QUIET)
    mean = whole.prob_drop.mean(axis=0)
    top = rank_heads(mean)[: settings.interaction_heads]
    np.testing.assert_array_equal(part["interaction_heads"], top)
    inter = pairwise_interactions(
        config, params, images[index], top, labels[index], execution=QUIET
    )
    for m in ("prob_drop", "kl"):
        np.testing.assert_allclose(part[f"interaction_{m}"], inter.mean(m), atol=2e-6)
        np.testing.assert_allclose(part[f"single_{m}"], inter.single[m].mean(0), atol=2e-6)

    curves = pruning_curves(
        config,
        params,
        images[index],
        labels[index],
        importance=whole,
        orders=("importance", "random"),
        random_orders=settings.random_orders,
        seed=settings.seed,
        execution=QUIET,
    )
    order = part["curve_order"]
    assert [CURVE_ORDERS[o] for o in order] == ["importance", "random"]
    for name, curve in curves.items():
        rows = order == CURVE_ORDERS.index(name)
        np.testing.assert_array_equal(part["curve_heads"][rows], curve.heads)
        np.testing.assert_allclose(part["curve_accuracy"][rows], curve.accuracy, atol=1e-6)
        np.testing.assert_allclose(part["curve_mean_prob"][rows], curve.mean_prob, atol=2e-6)
        np.testing.assert_allclose(part["curve_area"][rows], curve.area, atol=1e-6)
        for q, points in enumerate(part["removable_points"]):
            np.testing.assert_array_equal(
                part["curve_removable"][rows, q], curve.removable_by_run(float(points))
            )
    # The least important head goes first: the importance order is the ranking reversed.
    np.testing.assert_array_equal(part["curve_heads"][0], rank_heads(mean)[::-1])


@pytest.mark.slow
def test_the_stage_is_kept_in_the_run_folder(digits_head_sets_run):
    """A resumed run reads the stage back instead of computing it again."""
    out = digits_head_sets_run[-1]

    def compute_again():
        raise AssertionError("the kept stage was computed again")

    kept = load_or_compute(out / HEAD_SETS_FILE, compute_again)
    part = load_bundle(out)["head_sets"]
    assert kept.keys() == part.keys()
    for name, value in part.items():
        np.testing.assert_array_equal(kept[name], value)


def test_greedy_is_skipped_for_many_heads_and_said_so():
    from jaxvit_interp import ViTConfig

    big = ViTConfig.from_variant("B/16", num_classes=10)
    run, why = greedy_plan(big, AnalysisSettings().greedy_max_heads)
    assert not run and "144 heads" in why and "greedy_max_heads 48" in why
    assert "10440 set ablations" in why
