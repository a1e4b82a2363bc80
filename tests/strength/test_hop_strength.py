"""hop_strength against the plain double loop, known values, and its input checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp.model.edits import keep_mask
from jaxvit_interp.strength import (
    HopStrength,
    hop_mass_per_query,
    hop_rings,
    hop_strength,
    hop_strength_kernel,
    ring_counts,
)
from jaxvit_interp.strength.reference import hop_strength_loop

FIELDS = ("strength", "mass", "patch_to_cls", "cls_to_patch", "distance", "head_entropy")
GRIDS = [(1, 1), (2, 2), (3, 5), (4, 2), (1, 7), (6, 1), (5, 5)]


def random_attention(seed, lead, num_tokens, scale=3.0):
    """Softmax of random logits; ``scale`` makes rows peaked enough for hops to differ."""
    logits = np.random.default_rng(seed).normal(size=(*lead, num_tokens, num_tokens)) * scale
    return np.array(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))  # writable


def assert_matches_loop(
    result: HopStrength, attention, grid, has_cls_token, patch_size, num_prefix_tokens=None
):
    lead = attention.shape[:-2]
    for index in np.ndindex(*lead):
        expected = hop_strength_loop(
            attention[index].astype(np.float64),
            grid,
            has_cls_token=has_cls_token,
            patch_size=patch_size,
            num_prefix_tokens=num_prefix_tokens,
        )
        for field in FIELDS:
            np.testing.assert_allclose(
                np.asarray(getattr(result, field))[index],
                expected[field],
                rtol=2e-5,
                atol=1e-6,
                err_msg=f"{field} at {index}",
            )


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("has_cls_token", [True, False])
def test_matches_double_loop(grid, has_cls_token):
    n = grid[0] * grid[1] + int(has_cls_token)
    seed = hash((grid, has_cls_token)) % 2**32
    attention = random_attention(seed, (2, 3), n)
    patch_size = (16, 8)
    result = hop_strength(attention, grid, has_cls_token=has_cls_token, patch_size=patch_size)
    k = max(grid)
    assert result.strength.shape == (2, 3, k)
    assert result.mass.shape == (2, 3, k)
    assert result.head_entropy.shape == (2, 3)
    assert_matches_loop(result, attention, grid, has_cls_token, patch_size)
    if not has_cls_token:
        assert np.isnan(result.patch_to_cls).all() and np.isnan(result.cls_to_patch).all()


@pytest.mark.parametrize("grid", [(2, 2), (3, 5), (1, 7)])
@pytest.mark.parametrize("has_cls_token, num_prefix_tokens", [(True, 5), (False, 4), (True, 2)])
def test_special_tokens_stay_off_the_grid(grid, has_cls_token, num_prefix_tokens):
    """CLS, distillation and register tokens first: hop strength sees the patches only, the CLS
    masses are CLS's alone, and rows (all of them) still pass the stochastic check."""
    n = grid[0] * grid[1] + num_prefix_tokens
    attention = random_attention(hash((grid, num_prefix_tokens)) % 2**32, (2, 3), n)
    result = hop_strength(
        attention,
        grid,
        has_cls_token=has_cls_token,
        patch_size=(8, 4),
        num_prefix_tokens=num_prefix_tokens,
    )
    assert_matches_loop(result, attention, grid, has_cls_token, (8, 4), num_prefix_tokens)
    with pytest.raises(ValueError, match="other special token"):
        hop_strength(attention[..., 1:, 1:], grid, num_prefix_tokens=num_prefix_tokens)
    with pytest.raises(ValueError, match="leaves no room for the CLS token"):
        hop_strength(attention, grid, has_cls_token=True, num_prefix_tokens=0)


@pytest.mark.parametrize("grid", [(3, 5), (4, 2), (14, 14)])
def test_hop_masses_of_a_row_sum_to_its_patch_mass(grid):
    n = grid[0] * grid[1] + 1
    attention = random_attention(7, (3,), n)
    per_query = np.asarray(hop_mass_per_query(attention, hop_rings(grid)))
    assert per_query.shape == (3, n - 1, max(grid))
    np.testing.assert_allclose(per_query.sum(-1), attention[:, 1:, 1:].sum(-1), rtol=1e-5)
    # Each entry against the loop's per-query hop mass.
    expected = hop_strength_loop(attention[1], grid)["query_hop_mass"]
    np.testing.assert_allclose(per_query[1], expected, rtol=1e-5, atol=1e-7)
    # Averaged over queries, hop masses plus the CLS mass make up the whole (stochastic) row.
    result = hop_strength(attention, grid)
    np.testing.assert_allclose(
        np.asarray(result.mass).sum(-1), attention[:, 1:, 1:].sum(-1).mean(-1), rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(result.mass).sum(-1) + result.patch_to_cls, 1, rtol=1e-5)


@pytest.mark.parametrize("has_cls_token", [True, False])
def test_identity_attention_is_all_at_hop_zero(has_cls_token):
    grid = (4, 6)
    n = 24 + int(has_cls_token)
    result = hop_strength(np.eye(n, dtype=np.float32), grid, has_cls_token=has_cls_token)
    expected = np.zeros(6)
    expected[0] = 1
    np.testing.assert_allclose(result.strength, expected, atol=1e-7)
    np.testing.assert_allclose(result.mass, expected, atol=1e-7)
    assert float(result.head_entropy) == 0.0
    assert float(result.distance) == 0.0
    if has_cls_token:
        assert float(result.patch_to_cls) == 0.0 and float(result.cls_to_patch) == 0.0


@pytest.mark.parametrize("grid", [(2, 2), (3, 5), (7, 7)])
def test_uniform_attention_has_equal_strength_and_maximal_entropy(grid):
    p = grid[0] * grid[1]
    n = p + 1
    result = hop_strength(np.full((n, n), 1.0 / n, np.float32), grid, patch_size=16)
    k = max(grid)
    # Every neighbour gets 1/N whatever its hop, also at far hops that only edge queries have.
    np.testing.assert_allclose(result.strength, np.full(k, 1.0 / n), rtol=1e-5)
    np.testing.assert_allclose(result.mass, ring_counts(grid).mean(0) / n, rtol=1e-5)
    assert float(result.head_entropy) == pytest.approx(math.log(k), abs=1e-5)
    assert float(result.patch_to_cls) == pytest.approx(1.0 / n)
    assert float(result.cls_to_patch) == pytest.approx(p / n)
    if grid == (2, 2):
        # From any corner the patches lie 0, 16, 16 and 16*sqrt(2) pixels away.
        assert float(result.distance) == pytest.approx((32 + 16 * math.sqrt(2)) / 4, rel=1e-6)


def test_neighbour_attention_counts_neighbours_per_query():
    # 1x5 strip, each patch looks only at its right neighbour (the last at its left): all mass
    # at hop 1, but end patches have one hop-1 neighbour and middle ones two.
    n = 5
    attention = np.zeros((n, n), np.float32)
    for i in range(n):
        attention[i, i + 1 if i < n - 1 else i - 1] = 1
    result = hop_strength(attention, (1, 5), has_cls_token=False, patch_size=(4, 10))
    np.testing.assert_allclose(result.mass, [0, 1, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(result.strength, [0, (1 + 0.5 + 0.5 + 0.5 + 1) / 5, 0, 0, 0])
    assert float(result.head_entropy) == 0.0
    assert float(result.distance) == pytest.approx(10.0)  # one column = patch width


def test_pruned_attention_gives_nan_where_undefined():
    grid = (3, 3)
    attention = random_attention(3, (), 10) * keep_mask("patch_to_patch", 10)
    with pytest.raises(ValueError, match="not row-stochastic"):
        hop_strength(attention, grid)
    result = hop_strength(attention, grid, check_stochastic=False)
    np.testing.assert_array_equal(result.strength, 0)
    assert np.isnan(result.head_entropy) and np.isnan(result.distance)
    # The CLS row and column survive this mode.
    assert float(result.cls_to_patch) == pytest.approx(attention[0, 1:].sum(), rel=1e-6)
    assert float(result.patch_to_cls) == pytest.approx(attention[1:, 0].mean(), rel=1e-6)


def test_any_leading_axes_and_dtypes():
    grid = (2, 3)
    attention = random_attention(11, (2, 1, 3, 2), 7)
    batched = hop_strength(attention, grid)
    assert batched.strength.shape == (2, 1, 3, 2, 3)
    single = hop_strength(attention[1, 0, 2, 1], grid)
    assert single.strength.shape == (3,) and single.distance.shape == ()
    for field in FIELDS:
        np.testing.assert_allclose(
            getattr(single, field), np.asarray(getattr(batched, field))[1, 0, 2, 1], rtol=1e-6
        )
    half = hop_strength(jnp.asarray(attention, jnp.bfloat16), grid)
    assert half.strength.dtype == jnp.float32
    np.testing.assert_allclose(half.strength, batched.strength, atol=1e-2)


def test_head_blocks_do_not_change_results():
    grid = (3, 5)
    rings = hop_rings(grid)
    attention = jnp.asarray(random_attention(9, (5, 8), 16))  # 40 heads: 16 + 16 + a rest of 8
    whole = hop_strength_kernel(attention, rings, head_block=0)
    for block in (None, 7):
        blocked = hop_strength_kernel(attention, rings, head_block=block)
        for got, expected in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"head_block={block}")
    assert_matches_loop(
        hop_strength_kernel(attention, rings, head_block=7)[0],
        np.asarray(attention),
        grid,
        True,
        (1, 1),
    )


def test_kernel_composes_with_vmap_and_jit():
    grid = (3, 4)
    rings = hop_rings(grid)
    attention = jnp.asarray(random_attention(5, (4, 2), 13))
    direct = hop_strength_kernel(attention, rings)[0]
    mapped = jax.jit(jax.vmap(lambda a: hop_strength_kernel(a, rings)[0]))(attention)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(mapped, field), getattr(direct, field), rtol=1e-6)


@pytest.mark.parametrize(
    "shape, grid, has_cls, match",
    [
        ((2, 17, 17), (4, 4), False, r"17 tokens.*no CLS token, 4x4 patches = 16 tokens.*has_cls"),
        ((2, 16, 16), (4, 4), True, r"16 tokens.*a CLS token plus 4x4 patches = 17.*short"),
        ((2, 17, 16), (4, 4), True, r"shape \(2, 17, 16\).*equal length"),
        ((17,), (4, 4), True, r"shape \(17,\)"),
        ((3, 20, 20), (3, 5), True, r"shape \(3, 20, 20\) with 20 tokens.*3x5 patches = 16"),
    ],
)
def test_token_count_must_match_grid(shape, grid, has_cls, match):
    with pytest.raises(ValueError, match=match):
        hop_strength(np.ones(shape, np.float32) / shape[-1], grid, has_cls_token=has_cls)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
@pytest.mark.parametrize("check_stochastic", [True, False])
def test_non_finite_is_rejected_and_located(bad_value, check_stochastic):
    attention = random_attention(2, (2, 3), 10)
    attention[1, 2, 4, 7] = bad_value
    with pytest.raises(
        ValueError, match=r"shape \(2, 3, 10, 10\) contains NaN or inf.*\(1, 2, 4\)"
    ):
        hop_strength(attention, (3, 3), check_stochastic=check_stochastic)
    # In the CLS row and in the CLS column of a patch row too.
    attention = random_attention(2, (10,), 10)
    attention[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hop_strength(attention, (3, 3))
    attention = random_attention(2, (10,), 10)
    attention[3, 6, 0] = np.nan
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        hop_strength(attention, (3, 3))


def test_row_stochastic_check_and_tolerance():
    attention = random_attention(4, (2,), 10)
    attention[1, 3] *= 0.99  # row sums to 0.99
    with pytest.raises(ValueError, match=r"row \(1, 3\) sums to 0\.99 \(tolerance 0\.001"):
        hop_strength(attention, (3, 3))
    hop_strength(attention, (3, 3), atol=0.02)
    hop_strength(attention, (3, 3), check_stochastic=False)
    # Negative entries are not probabilities even if the row still sums to 1.
    attention = random_attention(4, (2,), 10)
    shift = attention[0, 2, 3] + 0.05
    attention[0, 2, 3] -= shift
    attention[0, 2, 4] += shift
    with pytest.raises(ValueError, match=r"row \(0, 2\) has a negative entry"):
        hop_strength(attention, (3, 3))
    # Small float error is within tolerance.
    attention = random_attention(4, (2,), 10) * (1 + 1e-5)
    hop_strength(attention, (3, 3))
