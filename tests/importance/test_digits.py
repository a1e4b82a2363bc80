"""The metrics mean something: on the shipped digits model, pruning the least important heads first
keeps held-out accuracy up for longer than pruning in random orders."""

import numpy as np
import pytest

from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import cumulative_pruning_accuracy, head_importance, rank_by_metric

digits = pytest.importorskip("jaxvit_interp.data.digits")


@pytest.fixture(scope="module")
def digits_model():
    try:
        return digits.load_digits_model()
    except FileNotFoundError as e:
        pytest.skip(f"digits model not built yet: {e}")


@pytest.mark.slow
def test_importance_order_beats_random_orders(digits_model):
    config, params = digits_model
    # Importance from training images, accuracy on the held-out ones.
    train_images, train_labels = digits.load_digits("train")
    # Half the held-out digits (a curve is 25 passes over them), drawn afresh each run.
    test_images, test_labels = digits.load_digits("test")
    keep = np.random.default_rng().choice(len(test_labels), len(test_labels) // 2, replace=False)
    test_images, test_labels = test_images[keep], test_labels[keep]
    pick = np.random.default_rng(0).choice(len(train_labels), 128, replace=False)
    result = head_importance(
        config,
        params,
        train_images[pick],
        train_labels[pick],
        metrics=("prob_drop",),
        execution=Execution(progress=False),
    )
    least_first = rank_by_metric(result, "prob_drop")[::-1]
    curve = cumulative_pruning_accuracy(config, params, test_images, test_labels, least_first)
    heads = config.num_layers * config.num_heads
    assert curve.shape == (heads + 1,)
    rng = np.random.default_rng(1)
    random_aucs = []
    for _ in range(3):
        order = least_first[rng.permutation(heads)]
        random_aucs.append(
            cumulative_pruning_accuracy(config, params, test_images, test_labels, order).mean()
        )
    # Area under accuracy-vs-heads-pruned (trapezoids on unit steps, up to a constant: the mean).
    assert curve.mean() > max(random_aucs), (curve.mean(), random_aucs)
    # Nothing pruned: the unpruned model's held-out accuracy; everything pruned: far below it.
    assert curve[0] > 0.8 and curve[-1] < curve[0] - 0.3
