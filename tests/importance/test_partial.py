"""Partial pruning vs run_model with AttentionEdit.partial_pruning, one run per (head, mode)."""

import numpy as np
import pytest

from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import head_importance, partial_pruning
from jaxvit_interp.model import PRUNING_MODES, AttentionEdit, run_model

QUIET = Execution(progress=False)


def _reference(config, params, images, labels, heads, modes, softmax):
    n = len(images)
    prob = np.zeros((n, len(heads), len(modes)))
    top = np.zeros((n, len(heads), len(modes), 5))
    classes = np.zeros((n, len(heads), len(modes), 5), int)
    clear = np.zeros((n, len(heads), len(modes), 5), bool)  # rank k not within rounding of k+-1
    for i, (layer, head) in enumerate(heads):
        for j, mode in enumerate(modes):
            edit = AttentionEdit.partial_pruning(config, mode, layer, head)
            p = softmax(
                np.asarray(
                    run_model(config, params, images, attention_edit=edit).logits, np.float64
                )
            )
            prob[:, i, j] = p[np.arange(n), labels]
            classes[:, i, j] = np.argsort(-p, axis=-1, kind="stable")[:, :5]
            top[:, i, j] = np.take_along_axis(p, classes[:, i, j], axis=-1)
            ranked = -np.sort(-p, axis=-1)[:, :6]
            gap = np.abs(np.diff(ranked, axis=-1))  # [n, 5]: gap between rank k and k+1
            before = np.concatenate([np.full((n, 1), np.inf), gap[:, :4]], axis=-1)
            clear[:, i, j] = np.minimum(gap, before) > 1e-5
    return prob, top, classes, clear


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_matches_attention_edit_reference(classifier, random_model, random_images, softmax):
    config, params = random_model(
        21,
        image_size=(8, 8),
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        mlp_dim=24,
        num_classes=8,
        classifier=classifier,
    )
    images = random_images(config, 5, 21)
    labels = np.random.default_rng(21).integers(0, 8, 5)
    # Heads from two layers, unevenly (two in layer 2, one in layer 0), out of order.
    heads = [(2, 1), (0, 0), (2, 0)]
    result = partial_pruning(
        config, params, images, labels, heads, execution=Execution(batch_size=2, progress=False)
    )
    modes = PRUNING_MODES if classifier == "token" else ("none", "head", "patch_to_patch")
    assert result.modes == modes
    np.testing.assert_array_equal(result.heads, heads)
    prob, top, classes, clear = _reference(config, params, images, labels, heads, modes, softmax)
    np.testing.assert_allclose(result.prob, prob, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.top_probs, top, rtol=1e-4, atol=1e-5)
    # Classes agree wherever neighbouring probabilities are not within rounding of each other.
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(result.top_classes[clear], classes[clear])
    # "none" is the unpruned model.
    j = modes.index("none")
    unpruned = np.broadcast_to(result.probs[np.arange(5), labels][:, None], (5, len(heads)))
    np.testing.assert_allclose(result.prob[:, :, j], unpruned, atol=1e-6)


def test_whole_head_mode_equals_head_importance_prob(random_model, random_images):
    config, params = random_model(
        22,
        image_size=(8, 8),
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        mlp_dim=24,
        num_classes=6,
    )
    images = random_images(config, 4, 22)
    partial = partial_pruning(config, params, images, modes=("head", "cls_to_cls"), execution=QUIET)
    assert partial.labels_are_predictions
    assert partial.prob.shape == (4, config.num_layers * config.num_heads, 2)
    full = head_importance(config, params, images, metrics=("prob",), execution=QUIET)
    per_head = partial.prob[:, :, 0].reshape(4, config.num_layers, config.num_heads)
    np.testing.assert_allclose(per_head, full.prob, rtol=1e-5, atol=1e-6)
    assert partial.head_index(1, 2) == config.num_heads + 2


def test_bad_partial_requests(random_model, random_images):
    config, params = random_model(
        23,
        image_size=(8, 8),
        patch_size=(4, 4),
        hidden_size=8,
        num_layers=2,
        num_heads=2,
        mlp_dim=8,
        num_classes=3,
        classifier="gap",
    )
    images = random_images(config, 2, 0)
    with pytest.raises(ValueError, match="needs a CLS token"):
        partial_pruning(config, params, images, modes=("cls",), execution=QUIET)
    with pytest.raises(ValueError, match="outside the model"):
        partial_pruning(config, params, images, heads=[(2, 0)], execution=QUIET)
    with pytest.raises(ValueError, match="unknown pruning mode"):
        partial_pruning(config, params, images, modes=("rows",), execution=QUIET)
    with pytest.raises(ValueError, match="top_k=5 exceeds"):
        partial_pruning(config, params, images, execution=QUIET)
