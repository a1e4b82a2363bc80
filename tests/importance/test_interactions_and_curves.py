"""Pairwise interactions, pruning curves and class-specific heads against plain forward passes."""

import itertools
import warnings

import numpy as np
import pytest

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import (
    PruningCurve,
    class_specific_heads,
    cumulative_pruning_accuracy,
    head_importance,
    pairwise_interactions,
    pruning_curves,
)
from jaxvit_interp.importance.pruning import GREEDY_MAX_HEADS
from jaxvit_interp.model import run_model
from jaxvit_interp.pipeline.settings import AnalysisSettings

QUIET = Execution(progress=False)

SMALL = dict(
    image_size=(8, 8),
    patch_size=(4, 4),
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    mlp_dim=24,
    num_classes=3,
)


def _mask(config, heads):
    mask = np.ones((config.num_layers, config.num_heads), np.float32)
    for layer, h in heads:
        mask[layer, h] = 0
    return mask


def _prob_drop(config, params, images, heads, softmax):
    """``p_y - p'_y`` with y the unpruned prediction, one plain masked pass."""
    p = softmax(np.asarray(run_model(config, params, images).logits, np.float64))
    y = p.argmax(-1)
    lp = run_model(config, params, images, head_mask=_mask(config, heads)).logits
    q = softmax(np.asarray(lp, np.float64))
    rows = np.arange(len(images))
    return p[rows, y] - q[rows, y]


def test_interactions_equal_masked_passes(random_model, random_images, softmax):
    seed = int(np.random.default_rng().integers(1 << 30))
    config, params = random_model(seed, **SMALL)
    images = random_images(config, 3, seed + 1)
    heads = [(1, 0), (0, 1), (1, 1)]
    got = pairwise_interactions(config, params, images, heads, execution=QUIET)
    assert got.interaction["prob_drop"].shape == (3, 3, 3)
    for a, b in itertools.combinations(range(3), 2):
        want = (
            _prob_drop(config, params, images, [heads[a], heads[b]], softmax)
            - _prob_drop(config, params, images, [heads[a]], softmax)
            - _prob_drop(config, params, images, [heads[b]], softmax)
        )
        for i, j in ((a, b), (b, a)):
            np.testing.assert_allclose(
                got.interaction["prob_drop"][:, i, j], want, atol=3e-6, err_msg=f"seed {seed}"
            )
    assert np.all(np.diagonal(got.interaction["kl"], axis1=1, axis2=2) == 0)
    redundant, cooperative = got.strongest("prob_drop", count=3)
    assert all(v < 0 for *_, v in redundant) and all(v > 0 for *_, v in cooperative)
    assert len(redundant) + len(cooperative) <= 3


def test_interactions_refuse_one_head(random_model, random_images):
    config, params = random_model(0, **SMALL)
    with pytest.raises(InputError, match="at least two"):
        pairwise_interactions(config, params, random_images(config, 1, 0), [(0, 0)])


def test_importance_and_random_curves_equal_the_plain_loop(random_model, random_images):
    seed = int(np.random.default_rng().integers(1 << 30))
    config, params = random_model(seed, **SMALL)
    images = random_images(config, 6, seed + 1)
    labels = np.random.default_rng(seed).integers(0, 3, 6)
    curves = pruning_curves(
        config,
        params,
        images,
        labels,
        orders=("importance", "random"),
        random_orders=2,
        seed=seed,
        execution=QUIET,
    )
    for order in ("importance", "random"):
        curve = curves[order]
        for run in range(len(curve.heads)):
            want = cumulative_pruning_accuracy(config, params, images, labels, curve.heads[run])
            np.testing.assert_allclose(curve.accuracy[run], want, err_msg=f"{order} seed {seed}")
    # Least important first, by the mean prob_drop over these images.
    mean = head_importance(
        config, params, images, labels, metrics=("prob_drop",), execution=QUIET
    ).prob_drop.mean(0)
    order = curves["importance"].heads[0]
    assert np.all(np.diff(mean[order[:, 0], order[:, 1]]) >= -1e-6)


def test_greedy_removes_the_least_harmful_head_each_step(random_model, random_images, softmax):
    seed = int(np.random.default_rng().integers(1 << 30))
    config, params = random_model(seed, **SMALL)
    images = random_images(config, 5, seed + 1)
    labels = np.random.default_rng(seed).integers(0, 3, 5)
    curve = pruning_curves(
        config,
        params,
        images,
        labels,
        orders=("greedy",),
        max_heads=3,
        execution=QUIET,
    )["greedy"]
    rows = np.arange(len(images))
    removed = []
    for step in range(3):
        candidates = [
            (layer, h)
            for layer in range(config.num_layers)
            for h in range(config.num_heads)
            if (layer, h) not in removed
        ]
        scores = []
        for c in candidates:
            lp = run_model(config, params, images, head_mask=_mask(config, [*removed, c])).logits
            scores.append(softmax(np.asarray(lp, np.float64))[rows, labels].mean())
        best = candidates[int(np.argmax(scores))]
        gap = np.sort(scores)[-1] - np.sort(scores)[-2] if len(scores) > 1 else 1.0
        if gap > 1e-5:  # a near tie may go either way in float32
            assert tuple(curve.heads[0, step]) == best, f"step {step} seed {seed}"
        removed.append(tuple(int(v) for v in curve.heads[0, step]))
        np.testing.assert_allclose(curve.mean_prob[0, step + 1], max(scores), atol=2e-6)


def test_removable_heads_from_a_known_curve():
    accuracy = np.array([[0.90, 0.90, 0.895, 0.88, 0.84, 0.70]])
    curve = PruningCurve("importance", np.zeros((1, 5, 2), int), accuracy, accuracy)
    # A curve of one order: a number.
    assert curve.removable(1.0) == 2 and type(curve.removable(1.0)) is int  # 0.88: 2 points down
    assert curve.removable(5.0) == 3  # 0.84 is 6 points down at k = 4
    assert curve.removable(50.0) == 5  # never drops that far
    assert curve.removable_by_run(5.0).tolist() == [3]


def test_removable_heads_of_several_random_orders_are_one_count_each(rng):
    runs, count = int(rng.integers(2, 6)), int(rng.integers(3, 12))
    # Accuracy of 20 images: steps of 5 points, falling at random.
    accuracy = np.minimum.accumulate(rng.integers(10, 21, (runs, count + 1)), axis=1) / 20
    curve = PruningCurve("random", np.zeros((runs, count, 2), int), accuracy, accuracy)
    for points in (0.0, 4.0, 5.0, 12.0, 100.0):
        got = curve.removable(points)
        assert isinstance(got, np.ndarray) and got.shape == (runs,)
        for r in range(runs):  # the first k whose accuracy is more than `points` down, less one
            k = next(
                (k for k in range(1, count + 1) if accuracy[r, k] < accuracy[r, 0] - points / 100),
                count + 1,
            )
            assert got[r] == k - 1, (r, points, accuracy[r])
        np.testing.assert_array_equal(curve.removable_by_run(points), got)


def test_greedy_is_skipped_unasked_on_a_model_of_many_heads_and_runs_when_named(
    random_model, random_images
):
    # The analysis's head-set stage has the same cap.
    assert AnalysisSettings().greedy_max_heads == GREEDY_MAX_HEADS == 48
    seed = int(np.random.default_rng().integers(1 << 30))
    many = {**SMALL, "num_layers": 1, "num_heads": 49, "hidden_size": 98}  # one head over 48
    config, params = random_model(seed, **many)
    images = random_images(config, 2, seed + 1)
    with pytest.warns(UserWarning, match="greedy") as caught:
        curves = pruning_curves(config, params, images, random_orders=1, execution=QUIET)
    assert sorted(curves) == ["importance", "random"]
    message = str(caught[0].message)
    # Every step k of 49 ablates the 49 - k heads left: 49 + 48 + ... + 1 sets.
    assert "49 heads" in message and f"{sum(range(1, 50)):,} set ablations" in message
    assert "orders=('importance', 'greedy', 'random')" in message
    # Named, it runs (its first two removals: 49 + 48 sets), with nothing to warn of.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = pruning_curves(
            config,
            params,
            images,
            orders=("greedy",),
            max_heads=2,
            execution=QUIET,
        )
        # Unasked but no dearer than a whole curve of 48 heads: it runs too.
        cheap = pruning_curves(
            config,
            params,
            images,
            max_heads=2,
            random_orders=1,
            execution=QUIET,
        )
    assert named["greedy"].heads.shape == (1, 2, 2)
    assert sorted(cheap) == ["greedy", "importance", "random"]
    np.testing.assert_array_equal(cheap["greedy"].heads, named["greedy"].heads)


def test_class_specific_heads_against_numpy(random_model, random_images):
    config, params = random_model(11, **SMALL)
    images = random_images(config, 9, 12)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1])
    result = head_importance(config, params, images, labels, metrics=("prob_drop", "prob"))
    heads = class_specific_heads(result, "prob_drop", count=2)
    overall = result.prob_drop.mean(0)
    for k, c in enumerate(heads.classes):
        want = result.prob_drop[labels == c].mean(0) - overall
        np.testing.assert_allclose(heads.specificity[k], want, atol=1e-7)
        layer, head = heads.top[k, 0]
        assert want[layer, head] == want.max()
    # prob: smaller is more important, so specificity is negated.
    by_prob = class_specific_heads(result, "prob")
    np.testing.assert_allclose(
        by_prob.specificity[0], -(result.prob[labels == 0].mean(0) - result.prob.mean(0)), atol=1e-7
    )
