"""The built-in digits set and the shipped model trained on it."""

import numpy as np

from jaxvit_interp.data.digits import (
    BACKGROUND,
    DIGITS_CONFIG,
    load_digits,
    load_digits_model,
)
from jaxvit_interp.model.train import TrainConfig, evaluate, train_classifier


def test_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits as sklearn_digits

    train, train_labels = load_digits("train")
    test, test_labels = load_digits("test")
    assert train.shape == (1437, 8, 8, 1) and test.shape == (360, 8, 8, 1)
    assert train.min() >= -1 and train.max() <= 1
    # Every held-out image is a real sklearn digit that is not in the training split.
    raw = sklearn_digits().images.astype(np.int8).reshape(1797, -1)
    as_raw = lambda x: np.round((x[..., 0] * 0.5 + 0.5) * 16).astype(np.int8).reshape(len(x), -1)  # noqa: E731
    train_rows = {r.tobytes() for r in as_raw(train)}
    raw_rows = {r.tobytes() for r in raw}
    assert all(r.tobytes() in raw_rows for r in as_raw(test))
    overlap = sum(r.tobytes() in train_rows for r in as_raw(test))
    assert overlap <= 5  # sklearn's digits hold a few exact duplicates, nothing more
    assert np.bincount(test_labels).min() >= 35  # stratified: every class held out
    again, _ = load_digits("test")
    np.testing.assert_array_equal(again, test)


def test_shipped_model_meets_its_accuracy_on_held_out_digits():
    config, params = load_digits_model()
    assert config == DIGITS_CONFIG
    images, labels = load_digits("test")
    assert evaluate(config, params, images, labels) >= 0.95


def test_short_training_run_lowers_the_loss():
    from jaxvit_interp.model.run import run_model
    from jaxvit_interp.model.train import cross_entropy

    train, train_labels = load_digits("train")
    test, test_labels = load_digits("test")
    seed = int(np.random.default_rng().integers(1000))
    tc = TrainConfig(steps=150, batch_size=32, warmup_steps=20, seed=seed)
    config = DIGITS_CONFIG.replace(num_layers=2)
    params, history = train_classifier(
        config, tc, train, train_labels, background=BACKGROUND, progress=False
    )
    assert [h["step"] for h in history] == [100, 150]
    # An untrained 10-way classifier sits near ln(10) = 2.30 on held-out digits; 150 steps bring
    # it to 1.4-2.05 depending on the seed (seed 619 is the slowest of those seen), so the bound
    # leaves 0.1 nats below chance rather than a fixed target some seeds miss.
    held_out = float(cross_entropy(run_model(config, params, test).logits, test_labels, 10))
    assert held_out < np.log(10) - 0.1, (seed, held_out)
