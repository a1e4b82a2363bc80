"""Bad input fails with a clear message before any model work starts."""

import numpy as np
import pytest

from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import ablation, head_importance, partial_pruning
from jaxvit_interp.importance import partial as partial_module

QUIET = Execution(progress=False)

CONFIG = dict(
    image_size=(8, 8),
    patch_size=(4, 4),
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    mlp_dim=8,
    num_classes=4,
)


@pytest.fixture
def model(random_model, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("model work started before the input was checked")

    monkeypatch.setattr(ablation, "run_engine", no_work)
    monkeypatch.setattr(partial_module, "run_engine", no_work)
    return random_model(0, **CONFIG)


def _images(n=3, shape=(8, 8, 3)):
    return np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (_images(), [0, 4, 1], r"outside the class range \[0, 4\).*labels\[1\]=4"),
        (_images(), [0, -1, 1], r"labels\[1\]=-1"),
        (_images(), [0, 1], r"one label per image, shape \(3,\)"),
        (_images(), [0.5, 1, 2], "integer class ids"),
        (_images(shape=(16, 16, 3)), None, r"wrong size.*\[batch, 8, 8, 3\]"),
        (_images(shape=(8, 8, 1)), None, r"wrong channel count.*channels=3"),
        (_images()[0], None, "expected 4 axes"),
        (_images(n=0), None, "image set is empty"),
    ],
)
def test_bad_images_and_labels(model, images, labels, match):
    config, params = model
    for run in (head_importance, partial_pruning):
        with pytest.raises(ValueError, match=match):
            run(config, params, images, labels, execution=QUIET)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(model, bad):
    config, params = model
    images = _images(5)
    images[3, 2, 1, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite pixels, e.g. image index 3"):
        head_importance(config, params, images, execution=QUIET)


def test_bad_options(model):
    config, params = model
    images = _images()
    with pytest.raises(ValueError, match="unknown metric"):
        head_importance(config, params, images, metrics=("prob", "entropy"), execution=QUIET)
    with pytest.raises(ValueError, match="no metrics"):
        head_importance(config, params, images, metrics=(), execution=QUIET)
    # How the work runs is one value, checked when it is made (tests/test_execution.py); what
    # is not one is refused by name.
    with pytest.raises(ValueError, match="execution must be a jaxvit_interp.Execution.*dict"):
        head_importance(config, params, images, execution={"batch_size": 2})
    with pytest.raises(ValueError, match="duplicates"):
        partial_pruning(config, params, images, heads=[(0, 1), (0, 1)], execution=QUIET)


def test_budget_too_small_is_reported(random_model):
    config, params = random_model(0, **CONFIG)
    with pytest.raises(ValueError, match="memory budget of 1,000 bytes .* is too small"):
        head_importance(
            config, params, _images(), execution=Execution(memory_budget_bytes=1000, progress=False)
        )


def test_every_per_head_analysis_refuses_a_pruned_model_at_once(model, rng, tmp_path):
    from jaxvit_interp import analyze
    from jaxvit_interp.errors import InputError
    from jaxvit_interp.importance import (
        ablate,
        cumulative_pruning_accuracy,
        pairwise_interactions,
        pruning_curves,
        taylor_importance,
    )
    from jaxvit_interp.model.prune import remove_heads
    from jaxvit_interp.patterns import collect_patterns
    from jaxvit_interp.rollout import final_rollout_over_images, model_rollout_over_images
    from jaxvit_interp.strength import model_special_mass_over_images, model_strength_over_images

    config, params = model
    removed = [(int(rng.integers(2)), int(rng.integers(2)))]
    pruned, small = remove_heads(config, params, removed)
    images = _images()
    labels = rng.integers(0, 4, len(images))
    calls = {
        "head_importance": lambda: head_importance(pruned, small, images, execution=QUIET),
        "partial_pruning": lambda: partial_pruning(pruned, small, images, execution=QUIET),
        "ablate": lambda: ablate(pruned, small, images, [[(0, 0)]], execution=QUIET),
        "pairwise_interactions": lambda: pairwise_interactions(
            pruned, small, images, [(0, 0), (1, 0)], execution=QUIET
        ),
        "pruning_curves": lambda: pruning_curves(pruned, small, images, execution=QUIET),
        "cumulative_pruning_accuracy": lambda: cumulative_pruning_accuracy(
            pruned, small, images, labels, [(0, 0)]
        ),
        "taylor_importance": lambda: taylor_importance(pruned, small, images),
        "model_strength_over_images": lambda: model_strength_over_images(
            pruned, small, images, execution=QUIET
        ),
        "model_special_mass_over_images": lambda: model_special_mass_over_images(
            pruned, small, images, execution=QUIET
        ),
        "collect_patterns": lambda: collect_patterns(pruned, small, images, execution=QUIET),
        "model_rollout_over_images": lambda: model_rollout_over_images(pruned, small, images),
        "final_rollout_over_images": lambda: final_rollout_over_images(pruned, small, images),
        "analyze": lambda: analyze(pruned, small, images, tmp_path / "run", progress=False),
    }
    heads = rf"heads_per_layer=\[{', '.join(str(n) for n in pruned.heads_per_layer)}\]"
    for name, call in calls.items():
        with pytest.raises(InputError, match=rf"^{name}: per-head analyses need the full model"):
            call()
        with pytest.raises(InputError, match=rf"{heads}.*unpruned checkpoint.*prune\.json"):
            call()
    assert not (tmp_path / "run").exists()
