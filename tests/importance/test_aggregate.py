"""Aggregation against plain numpy loops on random per-image scores."""

import dataclasses

import numpy as np
import pytest

from jaxvit_interp.errors import InputError
from jaxvit_interp.importance import (
    HIGHER_IS_MORE_IMPORTANT,
    HeadImportance,
    global_importance,
    head_ranks,
    importance_summary,
    normalize_per_layer,
    per_class_importance,
    rank_by_metric,
    rank_heads,
)


def _random_result(seed, images=23, layers=3, heads=4, classes=5):
    rng = np.random.default_rng(seed)
    shape = (images, layers, heads)
    metrics = {
        m: rng.random(shape).astype(np.float32)
        for m in ("prob", "prob_drop", "kl", "layer", "repr", "taylor")
    }
    labels = rng.integers(0, classes - 1, images)  # the last class has no image
    probs = rng.dirichlet(np.ones(classes), images).astype(np.float32)
    return HeadImportance(
        **metrics,
        flip=rng.random(shape) < 0.3,
        probs=probs,
        predictions=probs.argmax(-1),
        labels=labels,
        labels_are_predictions=False,
        metrics=("prob", "prob_drop", "kl", "layer", "repr", "flip", "taylor"),
    )


def test_global_mean_and_flip_fraction():
    r = _random_result(0)
    g = global_importance(r)
    n, L, H = r.shape
    assert g.num_images == n
    for m in r.metrics:
        expected = np.zeros((L, H))
        for b in range(n):
            expected += r[m][b]
        np.testing.assert_allclose(g.mean[m], expected / n, rtol=1e-6)
    flips = np.array(
        [[sum(bool(r.flip[b, i, h]) for b in range(n)) / n for h in range(H)] for i in range(L)]
    )
    np.testing.assert_allclose(g.flip_fraction, flips)


def test_per_class_means():
    r = _random_result(1)
    c = per_class_importance(r)
    np.testing.assert_array_equal(c.classes, np.unique(r.labels))
    for k, cls in enumerate(c.classes):
        members = [b for b in range(r.num_images) if r.labels[b] == cls]
        assert c.counts[k] == len(members)
        for m in r.metrics:
            expected = sum(r[m][b].astype(np.float64) for b in members) / len(members)
            np.testing.assert_allclose(c.mean[m][k], expected, rtol=1e-6)
    normed = per_class_importance(r, normalize_layers=True)
    np.testing.assert_allclose(normed.mean["kl"], normalize_per_layer(c.mean["kl"]))


def test_per_layer_normalisation():
    rng = np.random.default_rng(2)
    scores = rng.random((3, 4)) - 0.2
    scores[1] = 0  # a layer of zeros stays zero
    out = normalize_per_layer(scores)
    for layer in range(3):
        norm = np.sqrt(sum(v * v for v in scores[layer]))
        expected = scores[layer] / norm if norm else scores[layer]
        np.testing.assert_allclose(out[layer], expected)
    batched = rng.random((2, 3, 4))
    np.testing.assert_allclose(normalize_per_layer(batched)[1], normalize_per_layer(batched[1]))


def test_ranking():
    rng = np.random.default_rng(3)
    scores = rng.random((3, 5))
    scores[2, 4] = scores[0, 1]  # a tie: layer-major order decides
    order = rank_heads(scores)
    expected = sorted(
        ((i, h) for i in range(3) for h in range(5)), key=lambda lh: (-scores[lh], lh)
    )
    assert [tuple(x) for x in order] == expected
    assert [tuple(x) for x in rank_heads(scores, higher_is_more_important=False)] == sorted(
        ((i, h) for i in range(3) for h in range(5)), key=lambda lh: (scores[lh], lh)
    )
    ranks = head_ranks(scores)
    for i, (layer, h) in enumerate(expected):
        assert ranks[layer, h] == i
    with pytest.raises(ValueError, match="layer, head"):
        rank_heads(scores[0])


def test_rank_by_metric_orientation():
    r = _random_result(4)
    assert not HIGHER_IS_MORE_IMPORTANT["prob"] and HIGHER_IS_MORE_IMPORTANT["kl"]
    # Lowest mean prob after pruning = most important.
    mean_prob = r.prob.mean(0)
    assert tuple(rank_by_metric(r, "prob")[0]) == np.unravel_index(
        mean_prob.argmin(), mean_prob.shape
    )
    mean_kl = normalize_per_layer(r.kl.astype(np.float64).mean(0))
    assert tuple(rank_by_metric(r, "kl", normalize_layers=True)[0]) == np.unravel_index(
        mean_kl.argmax(), mean_kl.shape
    )
    without = dataclasses.replace(r, taylor=None, metrics=r.metrics[:-1])
    with pytest.raises(KeyError, match="taylor"):
        rank_by_metric(without, "taylor")


def test_a_result_round_trips_through_its_bundle_part(rng):
    r = _random_result(int(rng.integers(2**32)), images=int(rng.integers(5, 30)))
    part = r.to_part()
    # The part: every metric per image as float32 (flip 0 or 1), with its reductions.
    assert set(part) == set(r.metrics) | set(importance_summary(r, r.probs.shape[1]))
    for m in r.metrics:
        assert part[m].dtype == np.float32
        np.testing.assert_array_equal(part[m], np.where(r[m], 1.0, 0.0) if m == "flip" else r[m])
    images = dict(probs=r.probs, predictions=r.predictions, labels=r.labels)
    back = HeadImportance.from_part(part, **images, labels_are_predictions=False)
    for field in dataclasses.fields(HeadImportance):
        want, got = getattr(r, field.name), getattr(back, field.name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype, field.name
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want, field.name
    # Some metrics, and a backbone's (no classes): no per-class arrays.
    some = HeadImportance.from_part(part, **images, labels_are_predictions=True, metrics=["kl"])
    assert some.metrics == ("kl",) and some.prob is None and some.labels_are_predictions
    backbone = HeadImportance.from_part(
        {m: part[m] for m in ("layer", "repr")}, labels_are_predictions=False
    )
    assert backbone.metrics == ("layer", "repr") and backbone.probs.shape == (r.num_images, 0)
    assert (backbone.labels == -1).all() and (backbone.predictions == -1).all()
    assert set(backbone.to_part()) == {"layer", "repr", "layer_mean", "repr_mean"}
    with pytest.raises(InputError, match=r"lack metric\(s\) \['taylor'\]"):
        HeadImportance.from_part(
            {"kl": part["kl"]}, **images, labels_are_predictions=False, metrics=("kl", "taylor")
        )
