"""Ring geometry against brute-force enumeration of grid offsets."""

import itertools
import math

import numpy as np
import pytest

from jaxvit_interp.strength.hops import (
    hop_matrix,
    hop_rings,
    num_hops,
    patch_distances,
    ring_counts,
)

GRIDS = [(1, 1), (2, 2), (3, 5), (4, 2), (1, 7), (6, 1), (14, 14)]


@pytest.mark.parametrize("grid", GRIDS)
def test_ring_counts_match_enumerated_offsets(grid):
    gh, gw = grid
    expected = np.zeros((gh * gw, max(grid)), int)
    # Walk the offsets around each query rather than the key list, a different route to the count.
    for r, c in itertools.product(range(gh), range(gw)):
        for dr, dc in itertools.product(range(-gh, gh), range(-gw, gw)):
            if 0 <= r + dr < gh and 0 <= c + dc < gw:
                expected[r * gw + c, max(abs(dr), abs(dc))] += 1
    np.testing.assert_array_equal(ring_counts(grid), expected)


@pytest.mark.parametrize("grid", GRIDS)
def test_hop_matrix_properties(grid):
    hops = hop_matrix(grid)
    p = grid[0] * grid[1]
    assert hops.shape == (p, p)
    np.testing.assert_array_equal(hops, hops.T)
    np.testing.assert_array_equal(np.diag(hops), 0)
    assert hops.max() == num_hops(grid) - 1
    # Every hop has at least one query with a key there (so strength is defined at every hop).
    assert (ring_counts(grid) > 0).any(axis=0).all()


def test_known_hops_and_distances():
    # 3x5 grid: patch 0 is (0, 0), patch 14 is (2, 4): 2 rows and 4 columns apart.
    assert hop_matrix((3, 5))[0, 14] == 4
    assert hop_matrix((3, 5))[7, 8] == 1
    # Patch size (16, 8): rows 16 px apart, columns 8 px.
    d = patch_distances((3, 5), (16, 8))
    assert d[0, 14] == pytest.approx(math.hypot(2 * 16, 4 * 8))
    assert d[0, 1] == pytest.approx(8.0)
    assert d[0, 5] == pytest.approx(16.0)
    # Corner of a 14x14 grid: 3 keys at hop 1, 27 at hop 13.
    assert ring_counts((14, 14))[0, 1] == 3
    assert ring_counts((14, 14))[0, 13] == 27


@pytest.mark.parametrize("has_cls_token", [True, False])
def test_ring_weights_layout(has_cls_token):
    grid = (3, 4)
    rings = hop_rings(grid, has_cls_token=has_cls_token, patch_size=(2, 3))
    k, first = 4, int(has_cls_token)
    w = np.asarray(rings.weights)
    assert w.shape == (12, 12 + first, k + 2)
    # Each patch key is in exactly one ring of each query; CLS is in none.
    np.testing.assert_array_equal(w[:, first:, :k].sum(-1), 1)
    np.testing.assert_array_equal(w[:, :first, :k], 0)
    np.testing.assert_allclose(w[:, first:, k], patch_distances(grid, (2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(w[:, 0, k + 1], 1 if has_cls_token else 0)
    # Strength weights: summing them over the queries that have a hop gives 1 per key.
    counts = ring_counts(grid)
    sw = np.asarray(rings.strength_weights)
    np.testing.assert_allclose((sw * counts).sum(0), 1, rtol=1e-6)
    assert rings.num_tokens == 12 + first


@pytest.mark.parametrize("bad", [(0, 3), (3, -1), (2, 2, 2), "ab", (2.5, 2)])
def test_bad_grid_is_named(bad):
    with pytest.raises(ValueError, match="grid"):
        hop_rings(bad)
