"""The reductions a bundle carries, against plain loops over fresh random per-image arrays."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from jaxvit_interp.pipeline.parts import importance_part, partial_part, pattern_part, strength_part
from jaxvit_interp.quantities import CLASS_TOP_HEADS, ENTROPY_BINS, METRIC_NAMES


def _mean_without_nan(values) -> float:
    values = [float(v) for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def test_importance_means_over_images_and_per_class(rng):
    n, L, H, C = int(rng.integers(6, 20)), int(rng.integers(1, 4)), int(rng.integers(1, 4)), 5
    metrics = {m: rng.normal(size=(n, L, H)).astype(np.float32) for m in METRIC_NAMES}
    metrics["flip"] = (rng.random((n, L, H)) < 0.3).astype(np.float32)
    metrics["kl"][rng.random((n, L, H)) < 0.2] = np.nan  # values a metric could not give
    metrics["kl"][:, 0, 0] = np.nan  # a head with no value at all stays NaN
    targets = rng.integers(0, C - 1, n).astype(np.int32)  # the last class has no image
    probs = rng.dirichlet(np.ones(C), n).astype(np.float32)
    part = importance_part(
        metrics,
        probs=probs,
        predictions=probs.argmax(1),
        targets=targets,
        labels_are_predictions=False,
        num_classes=C,
    )
    assert part["class_counts"].tolist() == [int((targets == c).sum()) for c in range(C)]
    for m in METRIC_NAMES:
        for lay in range(L):
            for h in range(H):
                want = _mean_without_nan(metrics[m][:, lay, h])
                assert part[f"{m}_mean"][lay, h] == pytest.approx(want, rel=1e-5, nan_ok=True)
                for c in range(C):
                    got = part[f"{m}_class_mean"][c, lay, h]
                    want = _mean_without_nan(metrics[m][targets == c, lay, h])
                    assert got == pytest.approx(want, rel=1e-5, nan_ok=True)
    assert math.isnan(part["kl_mean"][0, 0]) and np.isnan(part["prob_class_mean"][C - 1]).all()
    # Each class's specificity: its mean minus the mean over all images, negated for prob
    # (smaller is more important); its most specific heads by that, ties and heads without a
    # value (NaN) last in layer-major order; nothing for the class without images.
    top = min(CLASS_TOP_HEADS, L * H)
    for m in METRIC_NAMES:
        sign = -1.0 if m == "prob" else 1.0
        assert part[f"{m}_class_top"].shape == (C, top, 2)
        for c in np.unique(targets):
            spec = []
            for lay in range(L):
                for h in range(H):
                    overall = _mean_without_nan(metrics[m][:, lay, h])
                    mine = _mean_without_nan(metrics[m][targets == c, lay, h])
                    spec.append(sign * (mine - overall))
                    got = part[f"{m}_class_specificity"][c, lay, h]
                    assert got == pytest.approx(spec[-1], rel=1e-5, abs=1e-6, nan_ok=True)
            no_value = [math.isnan(v) for v in spec]
            order = sorted(
                range(L * H), key=lambda k: (no_value[k], 0 if no_value[k] else -spec[k], k)
            )
            want = [[k // H, k % H] for k in order[:top]]
            assert part[f"{m}_class_top"][c].tolist() == want, (m, c)
        empty = np.setdiff1d(np.arange(C), targets)  # the last class, and any other
        assert np.isnan(part[f"{m}_class_specificity"][empty]).all()
        assert (part[f"{m}_class_top"][empty] == -1).all()


def test_strength_summary_over_images(rng):
    n, L, H, K = 9, 2, 3, 4
    local = {
        "strength": rng.uniform(0, 1, (n, L, H, K)),
        "mass": rng.uniform(0, 1, (n, L, H, K)),
        "head_entropy": rng.uniform(0, math.log(K), (n, L, H)),
        "distance": rng.uniform(0, 5, (n, L, H)),
    }
    part = strength_part(local, has_cls_token=False)
    assert "patch_to_cls" not in part and "patch_to_cls_mean" not in part
    np.testing.assert_allclose(part["strength_mean"], local["strength"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(part["head_entropy_mean"], local["head_entropy"].mean(0), rtol=1e-5)
    edges = np.linspace(0, math.log(K), ENTROPY_BINS + 1)
    np.testing.assert_allclose(part["entropy_bin_edges"], edges, rtol=1e-6)
    for lay in range(L):
        for h in range(H):
            want = np.histogram(local["head_entropy"][:, lay, h], edges)[0]
            np.testing.assert_array_equal(part["entropy_histogram"][lay, h], want)
    local["patch_to_cls"] = rng.uniform(0, 1, (n, L, H))
    local["cls_to_patch"] = rng.uniform(0, 1, (n, L, H))
    with_cls = strength_part(local, has_cls_token=True)
    np.testing.assert_allclose(with_cls["cls_to_patch_mean"], local["cls_to_patch"].mean(0), 1e-5)


def test_pattern_head_summaries(rng):
    n, L, H, k = 15, 2, 3, 4
    positions = rng.normal(0, 1, (n, L, H, 2))
    clusters = rng.integers(0, k, (n, L, H))
    reps = rng.uniform(0, 1, (k, 3, 3))
    part = pattern_part(
        "patch", positions=positions, clusters=clusters, representatives=reps, centres=reps
    )
    np.testing.assert_allclose(part["patch_positions_mean"], positions.mean(0), rtol=1e-5)
    assert part["patch_cluster_sizes"].tolist() == np.bincount(clusters.ravel(), None, k).tolist()
    for lay in range(L):
        for h in range(H):
            counts = Counter(clusters[:, lay, h].tolist())
            top = max(counts.values())
            want = min(c for c, count in counts.items() if count == top)  # ties: the lowest
            assert part["patch_head_cluster"][lay, h] == want
    # The density map counts every position in its bin of the returned extent.
    bins = part["patch_density"].shape[0]
    x0, x1, y0, y1 = part["patch_extent"]
    counts = np.zeros((bins, bins))
    for x, y in positions.reshape(-1, 2):
        c = min(bins - 1, math.floor((x - x0) / (x1 - x0) * bins))
        r = min(bins - 1, math.floor((y - y0) / (y1 - y0) * bins))
        counts[r, c] += 1
    want = np.log1p(counts) / np.log1p(counts).max()
    np.testing.assert_allclose(part["patch_density"], want, rtol=1e-5, atol=1e-6)


def test_partial_pruning_means(rng):
    prob = rng.uniform(0, 1, (5, 2, 2, 6))
    prob[1, 0, 0, :] = np.nan
    part = partial_part(np.arange(5), prob, np.zeros((5, 2, 2, 6, 3)), np.zeros((5, 2, 2, 6, 3)))
    for lay, h, m in np.ndindex(2, 2, 6):
        want = _mean_without_nan(prob[:, lay, h, m])
        assert part["prob_mean"][lay, h, m] == pytest.approx(want, rel=1e-5)
