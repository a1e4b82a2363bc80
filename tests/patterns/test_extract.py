"""Pattern extraction against plainly written loops, known maps, and bad input."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp.patterns import (
    PLANTED_KINDS,
    check_attention,
    cls_pattern,
    extract_patterns,
    normalize_patterns,
    offset_counts,
    patch_pattern,
    pattern_shape,
    planted_attention,
    planted_masks,
)


def random_attention(seed, lead, n):
    """Row-stochastic ``[*lead, n, n]`` from random logits (a fresh draw per seed)."""
    logits = 2.0 * np.random.default_rng(seed).standard_normal((*lead, n, n))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def loop_patch_pattern(a, grid, has_cls, first=None):
    """The definition, one query patch and one key patch at a time: ``a`` is one ``[N, N]`` map
    whose patches start at token ``first`` (by default after the CLS token, if any)."""
    gh, gw = grid
    first = int(has_cls) if first is None else first
    total = np.zeros((2 * gh - 1, 2 * gw - 1))
    count = np.zeros((2 * gh - 1, 2 * gw - 1))
    for qr, qc, kr, kc in itertools.product(range(gh), range(gw), range(gh), range(gw)):
        dr, dc = kr - qr, kc - qc
        total[dr + gh - 1, dc + gw - 1] += a[first + qr * gw + qc, first + kr * gw + kc]
        count[dr + gh - 1, dc + gw - 1] += 1
    return total / count


@pytest.mark.parametrize(
    "grid, has_cls, lead",
    [((8, 8), True, (2, 3)), ((3, 5), True, (4,)), ((4, 2), False, (2, 2)), ((1, 6), False, (3,))],
)
def test_patch_pattern_matches_loop(grid, has_cls, lead):
    n = grid[0] * grid[1] + int(has_cls)
    a = random_attention(sum(grid) + len(lead), lead, n)
    got = np.asarray(extract_patterns(jnp.asarray(a, jnp.float32), grid, has_cls, "patch"))
    assert got.shape == (*lead, *pattern_shape("patch", grid))
    for idx in np.ndindex(*lead):
        np.testing.assert_allclose(got[idx], loop_patch_pattern(a[idx], grid, has_cls), atol=1e-6)


@pytest.mark.parametrize("has_cls, first", [(True, 5), (False, 4), (True, 2)])
def test_special_tokens_are_not_on_the_grid(has_cls, first):
    grid = (3, 4)
    a = random_attention(first, (2,), 12 + first)
    got = np.asarray(
        extract_patterns(
            jnp.asarray(a, jnp.float32), grid, has_cls, "patch", num_prefix_tokens=first
        )
    )
    for i in range(2):
        np.testing.assert_allclose(
            got[i], loop_patch_pattern(a[i], grid, has_cls, first), atol=1e-6
        )
    if has_cls:
        cls = np.asarray(extract_patterns(a, grid, True, "cls", num_prefix_tokens=first))
        np.testing.assert_allclose(cls, a[:, 0, first:].reshape(2, 3, 4), atol=1e-7)
    with pytest.raises(ValueError, match="other special token"):
        extract_patterns(a[:, 1:, 1:], grid, has_cls, "patch", num_prefix_tokens=first)


def test_patch_pattern_14x14_matches_loop():
    # The ViT-B/16 grid, one map: the offsets reach 13 patches each way.
    a = random_attention(3, (), 197)
    got = np.asarray(patch_pattern(jnp.asarray(a, jnp.float32), (14, 14), True))
    np.testing.assert_allclose(got, loop_patch_pattern(a, (14, 14), True), atol=1e-6)


@pytest.mark.parametrize("grid", [(8, 8), (3, 5)])
def test_cls_pattern_matches_loop(grid):
    gh, gw = grid
    a = random_attention(11, (2, 3), gh * gw + 1)
    got = np.asarray(extract_patterns(jnp.asarray(a, jnp.float32), grid, True, "cls"))
    for idx in np.ndindex(2, 3):
        want = np.array([[a[idx][0, 1 + r * gw + c] for c in range(gw)] for r in range(gh)])
        np.testing.assert_allclose(got[idx], want, atol=1e-7)


def test_known_maps():
    gh, gw = 4, 6
    # Every query patch on one key to its right (edge patches on CLS): the map is 1 at offset
    # (0, +1) and 0 elsewhere, because every query that has a right neighbour pays it everything.
    right = planted_masks((gh, gw), True, ("right",))[0]
    got = np.asarray(patch_pattern(jnp.asarray(right), (gh, gw), True))
    want = np.zeros((2 * gh - 1, 2 * gw - 1), np.float32)
    want[gh - 1, gw] = 1.0
    np.testing.assert_array_equal(got, want)
    # Uniform attention over all N tokens: 1/N at every offset.
    n = gh * gw + 1
    got = np.asarray(patch_pattern(jnp.full((n, n), 1.0 / n), (gh, gw), True))
    np.testing.assert_allclose(got, np.full_like(got, 1.0 / n), rtol=1e-6)


def test_offset_counts_cover_every_pair():
    for gh, gw in [(8, 8), (3, 5), (1, 4)]:
        counts = offset_counts((gh, gw))
        assert counts.sum() == (gh * gw) ** 2
        assert counts[gh - 1, gw - 1] == gh * gw  # every patch is its own offset (0, 0)
        assert counts[0, 0] == counts[-1, -1] == 1  # opposite corners pair once


def test_normalize_known_values():
    p = 64
    a = jnp.array([[1.0, 1.0 / p, 1.0 / (2 * p), 0.0]])[None]  # [1, 1, 4]: one "map"
    np.testing.assert_allclose(
        np.asarray(normalize_patterns(a, p, "log"))[0, 0],
        [1.0, np.log(2) / np.log(2 * p), 0.0, 0.0],
        rtol=1e-6,
    )
    maps = jnp.array([[[0.2, 0.6], [0.2, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(normalize_patterns(maps, 4, "max")[0], [[1 / 3, 1], [1 / 3, 0]])
    np.testing.assert_allclose(normalize_patterns(maps, 4, "sum")[0], [[0.2, 0.6], [0.2, 0.0]])
    assert not np.asarray(normalize_patterns(maps, 4, "max")[1]).any()  # zeros stay zeros
    with pytest.raises(ValueError, match="unknown pattern normalisation 'l2'"):
        normalize_patterns(maps, 4, "l2")


def test_planted_attention_targets():
    grid = (5, 4)
    labels = np.arange(len(PLANTED_KINDS))
    a = np.asarray(planted_attention(0, labels, grid, strength=(12.0, 12.0), noise=0.0))
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
    kinds = dict(zip(PLANTED_KINDS, a, strict=True))
    # Query patch (2, 1) is token 1 + 2*4 + 1 = 10; its neighbours by plain index arithmetic.
    q = 10
    assert kinds["self"][q].argmax() == q
    assert kinds["up"][q].argmax() == q - 4
    assert kinds["down"][q].argmax() == q + 4
    assert kinds["left"][q].argmax() == q - 1
    assert kinds["right"][q].argmax() == q + 1
    assert kinds["cls_only"][q].argmax() == 0
    assert kinds["up"][1].argmax() == 0  # the top-left patch has no upper neighbour: CLS
    np.testing.assert_allclose(kinds["row"][q][9:13], kinds["row"][q][9], rtol=1e-6)
    assert kinds["row"][q][9:13].sum() > 0.99
    assert kinds["column"][q][[2, 6, 10, 14, 18]].sum() > 0.99
    np.testing.assert_allclose(kinds["global"], 1 / 21, rtol=1e-6)


def test_bad_attention_is_named():
    grid = (3, 3)
    good = random_attention(5, (2,), 10).astype(np.float32)
    with pytest.raises(ValueError, match=r"attention has shape \(2, 9, 9\): 9 tokens, but a 3x3"):
        extract_patterns(good[:, 1:, 1:], grid, True, "patch")
    with pytest.raises(ValueError, match=r"\(2, 10, 11\)"):
        check_attention(np.zeros((2, 10, 11)), grid, True)
    nan = good.copy()
    nan[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN value\(s\), first at index \(1, 4, 2\)"):
        extract_patterns(nan, grid, True, "cls")
    scaled = good.copy()
    scaled[0, 3] *= 0.5
    with pytest.raises(ValueError, match=r"not row-stochastic: row \(0, 3\) sums to 0.5"):
        extract_patterns(scaled, grid, True, "patch")
    with pytest.raises(ValueError, match="no CLS token"):
        cls_pattern(jnp.asarray(good[:, 1:, 1:]), grid, False)
    with pytest.raises(ValueError, match="unknown pattern kind 'rows'"):
        extract_patterns(good, grid, True, "rows")
