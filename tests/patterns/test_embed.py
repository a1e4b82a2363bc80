"""Projection, k selection, representatives and per-head positions."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from jaxvit_interp.patterns import choose_k, embed_patterns, kmeans, nearest_members, project
from jaxvit_interp.patterns.embed import place_by_neighbours


def test_choose_k_finds_the_number_of_blobs():
    x, y = make_blobs(300, n_features=6, centers=5, cluster_std=0.5, random_state=3)
    k, scores = choose_k(x, (2, 10))
    assert k == 5 and set(scores) == set(range(2, 11))
    assert adjusted_rand_score(y, kmeans(x, k)[0]) == 1.0
    with pytest.raises(ValueError, match=r"k_range \(2, 8\) is empty for 2 points"):
        choose_k(x[:2], (2, 8))


def test_nearest_members_match_brute_force():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 3))
    labels = rng.integers(0, 4, 200)
    centres = rng.standard_normal((4, 3))
    got = nearest_members(x, labels, centres)
    for c in range(4):
        best = min(np.flatnonzero(labels == c), key=lambda i: np.linalg.norm(x[i] - centres[c]))
        assert got[c] == best


@pytest.mark.parametrize("method", ["umap", "tsne"])
def test_projection_is_seeded_and_keeps_groups_apart(method):
    x, y = make_blobs(120, n_features=8, centers=4, cluster_std=0.3, random_state=1)
    xy = project(x, method, seed=2)
    assert xy.shape == (120, 2)
    np.testing.assert_array_equal(xy, project(x, method, seed=2))  # reproducible
    assert adjusted_rand_score(y, kmeans(xy, 4)[0]) == 1.0
    with pytest.raises(ValueError, match="unknown projection 'pca'"):
        project(x, "pca")


def test_embedding_positions_and_representatives(planted, trained):
    _, patterns = planted
    model, _ = trained
    part = patterns[:20]  # [image 20, head 4, 15, 15]
    emb = embed_patterns(model, part, projection="tsne", k=4, cluster_space="xy")
    assert emb.latents.shape == (20, 4, 8) and emb.xy.shape == (20, 4, 2)
    assert emb.labels.shape == (20, 4) and emb.k == 4 and emb.silhouette == {}
    np.testing.assert_allclose(emb.mean_xy, emb.xy.mean(0))
    assert emb.cluster_sizes.sum() == 80
    np.testing.assert_allclose(emb.latents, model.encode(part), rtol=1e-6)
    flat_xy = emb.xy.reshape(-1, 2)
    flat_labels = emb.labels.ravel()
    for c in range(emb.k):
        members = flat_labels == c
        np.testing.assert_allclose(
            emb.centres[c], emb.latents.reshape(-1, 8)[members].mean(0), rtol=1e-5, atol=1e-6
        )
        idx = tuple(emb.representative_index[c])
        # A real member of its cluster, nearest the centre in the space clustering used.
        assert emb.labels[idx] == c
        np.testing.assert_array_equal(emb.representative[c], part[idx])
        dist = np.linalg.norm(flat_xy[members] - emb.centres_xy[c], axis=1)
        assert np.isclose(np.linalg.norm(emb.xy[idx] - emb.centres_xy[c]), dist.min())
    np.testing.assert_allclose(emb.decoded_centre, model.decode(emb.centres), rtol=1e-6)
    # Majority cluster per head: checked against a plain count.
    majority = emb.majority_labels()
    for h in range(4):
        assert majority[h] == np.bincount(emb.labels[:, h], minlength=emb.k).argmax()
    with pytest.raises(ValueError, match="projection cannot be None"):
        embed_patterns(model, part, projection=None, cluster_space="xy")


def test_placing_by_neighbours_matches_a_brute_force_loop():
    rng = np.random.default_rng(7)
    reference, positions = rng.standard_normal((300, 5)), rng.standard_normal((300, 2))
    queries = np.concatenate([rng.standard_normal((40, 5)), reference[:3]])
    got = place_by_neighbours(reference, positions, queries, k=6)
    for q, placed in zip(queries, got, strict=True):
        dist = np.linalg.norm(reference - q, axis=1)
        near = np.argsort(dist)[:6]
        weight = 1 / np.maximum(dist[near], 1e-12)
        np.testing.assert_allclose(placed, weight @ positions[near] / weight.sum(), rtol=1e-5)
    # A query on a reference point lands on it.
    np.testing.assert_allclose(got[-3:], positions[:3], atol=1e-6)


def test_projection_fitted_on_a_sample_keeps_groups_apart():
    x, y = make_blobs(3000, n_features=8, centers=4, cluster_std=0.3, random_state=1)
    xy = project(x, "umap", seed=2, fit_size=400)
    assert xy.shape == (3000, 2)
    np.testing.assert_array_equal(xy, project(x, "umap", seed=2, fit_size=400))
    assert adjusted_rand_score(y, kmeans(xy, 4)[0]) == 1.0


def test_kmeans_started_on_a_sample_finds_the_blobs():
    x, y = make_blobs(5000, n_features=6, centers=5, cluster_std=0.5, random_state=3)
    labels, centres = kmeans(x, 5, fit_size=500)
    assert adjusted_rand_score(y, labels) == 1.0 and centres.shape == (5, 6)
    assert choose_k(x, (2, 8), fit_size=500)[0] == 5
