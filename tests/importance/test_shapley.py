"""Shapley values of heads against a brute-force enumeration of plain masked forward passes."""

import itertools
import math

import numpy as np
import pytest

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.shapley import EXACT_MAX_PLAYERS, head_shapley
from jaxvit_interp.model import ViTConfig, run_model
from jaxvit_interp.progress import Progress

QUIET = Execution(progress=False)

# 8 heads, 255 subsets of them: one model shape for every test, so the programs compile once.
SMALL = dict(
    image_size=(8, 8),
    patch_size=(4, 4),
    hidden_size=12,
    num_layers=4,
    num_heads=2,
    mlp_dim=16,
    num_classes=5,
)


def _brute_force(config, params, images, labels, players, metric, softmax):
    """``[image, player]`` Shapley values: one ``run_model`` with a head mask per subset of
    ``players``, its metric (``prob_drop``, ``kl`` or ``repr``) in float64 numpy, weighed by
    ``|S|! (n - |S| - 1)! / n!``."""
    full = run_model(config, params, images)
    rows = np.arange(len(images))

    def v(subset) -> np.ndarray:
        if not subset:
            return np.zeros(len(images))
        mask = np.ones((config.num_layers, config.num_heads), np.float32)
        for layer, head in subset:
            mask[layer, head] = 0.0
        pruned = run_model(config, params, images, head_mask=mask)
        if metric == "repr":
            z, zq = (np.asarray(o.pre_logits, np.float64) for o in (full, pruned))
            cos = (z * zq).sum(-1) / (np.linalg.norm(z, axis=-1) * np.linalg.norm(zq, axis=-1))
            return 1 - cos
        p, q = (softmax(np.asarray(o.logits, np.float64)) for o in (full, pruned))
        if metric == "prob_drop":
            return p[rows, labels] - q[rows, labels]
        return (p * (np.log(p) - np.log(q))).sum(-1)  # kl

    n = len(players)
    values = {s: v(s) for k in range(n + 1) for s in itertools.combinations(players, k)}
    out = np.zeros((len(images), n))
    for i, player in enumerate(players):
        others = [h for h in players if h != player]
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for subset in itertools.combinations(others, k):
                with_player = tuple(h for h in players if h in subset or h == player)
                out[:, i] += weight * (values[with_player] - values[subset])
    return out


@pytest.mark.parametrize(
    "metric, heads, classes",
    [
        ("prob_drop", None, 5),
        ("kl", [(3, 1), (0, 0), (2, 1), (1, 0), (3, 0)], 5),
        ("repr", [(2, 0), (0, 1), (3, 1)], 0),
    ],
    ids=["prob_drop-all-heads", "kl-five-heads", "repr-backbone-three-heads"],
)
def test_exact_values_equal_a_brute_force_enumeration(
    metric, heads, classes, rng, random_model, random_images, softmax
):
    seed = int(rng.integers(1 << 30))
    config, params = random_model(seed, **dict(SMALL, num_classes=classes))
    images = random_images(config, 3, seed + 1)
    labels = rng.integers(0, classes, len(images)) if classes else None
    players = heads or [(layer, h) for layer in range(4) for h in range(2)]
    want = _brute_force(config, params, images, labels, players, metric, softmax)

    # exact=None: 2^n - 1 sets are no more than 128 permutations of n sets each, so exact.
    got = head_shapley(config, params, images, labels, heads=heads, metric=metric, execution=QUIET)
    assert got.exact and got.sampling is None and got.permutations == 0
    assert got.set_ablations == 2 ** len(players) - 1
    layer, head = np.asarray(players).T
    np.testing.assert_allclose(got.per_image[:, layer, head], want, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(got.values[layer, head], want.mean(0), rtol=1e-3, atol=2e-5)
    assert np.all(got.stderr[layer, head] == 0)
    others = np.ones((config.num_layers, config.num_heads), bool)
    others[layer, head] = False
    assert np.isnan(got.values[others]).all() and np.isnan(got.per_image[:, others]).all()
    # Efficiency: the values add up to the effect of ablating every player.
    assert got.v_all == pytest.approx(want.sum(1).mean(), rel=1e-3, abs=2e-5)
    assert np.nansum(got.values) == pytest.approx(got.v_all, rel=1e-9, abs=1e-12)
    assert f"{len(players)} players" in repr(got)


@pytest.mark.parametrize("sampling", ["antithetic", "independent"])
def test_sampled_values_are_within_their_error_of_the_exact_ones(
    sampling, rng, random_model, random_images
):
    seed = int(rng.integers(1 << 30))
    config, params = random_model(seed, **SMALL)
    images = random_images(config, 3, seed + 1)
    exact = head_shapley(config, params, images, exact=True, execution=QUIET)
    sampled = head_shapley(
        config,
        params,
        images,
        exact=False,
        permutations=128,
        target_stderr=None,
        sampling=sampling,
        seed=seed,
        execution=QUIET,
    )
    assert not sampled.exact and sampled.sampling == sampling
    assert sampled.permutations == 128 and not sampled.converged
    assert sampled.set_ablations <= 255
    assert np.all(sampled.stderr > 0)
    error = np.abs(sampled.values - exact.values)
    assert np.all(error <= 4 * sampled.stderr + 1e-6), (error / sampled.stderr, f"seed {seed}")
    # Efficiency holds for a sample too: each permutation's marginals telescope, per image.
    assert sampled.v_all == pytest.approx(exact.v_all, rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(
        sampled.per_image.sum(axis=(1, 2)), exact.per_image.sum(axis=(1, 2)), rtol=1e-4, atol=1e-6
    )
    assert np.sum(sampled.values) == pytest.approx(sampled.v_all, rel=1e-9, abs=1e-12)


def test_sampling_stops_at_the_target_error_and_reports_progress(random_model, random_images):
    config, params = random_model(7, **SMALL)
    images = random_images(config, 3, 8)
    stage = Progress(total=3)
    loose = head_shapley(
        config,
        params,
        images,
        exact=False,
        permutations=64,
        target_stderr=1.0,
        execution=Execution(progress=stage.share(1)),
    )
    # The rule waits for 16 permutations (two rounds of 8), then the error is below 1.
    assert loose.converged and loose.permutations == 16
    assert np.all(loose.stderr < 1.0)
    strict = head_shapley(
        config,
        params,
        images,
        exact=False,
        permutations=24,
        target_stderr=1e-9,
        execution=Execution(progress=stage.share(2)),
    )
    assert not strict.converged and strict.permutations == 24
    assert stage.done == pytest.approx(3)
    # The same seed draws the same permutations: 16 of them without a target are the loose run's.
    again = head_shapley(
        config,
        params,
        images,
        exact=False,
        permutations=16,
        target_stderr=None,
        execution=QUIET,
    )
    np.testing.assert_allclose(again.values, loose.values, rtol=1e-6, atol=1e-9)


def test_bad_input_is_refused_before_any_work(random_model, random_images):
    config, _ = random_model(0, **SMALL)
    images = random_images(config, 2, 1)
    big = ViTConfig(**dict(SMALL, num_heads=4))  # 16 heads

    def refused(match, config=config, **kwargs):
        # params=None: any model work would fail with another error than InputError.
        with pytest.raises(InputError, match=match):
            head_shapley(config, None, images, execution=QUIET, **kwargs)

    refused(r"head \(layer=4, head=0\) is outside", heads=[(0, 1), (4, 0)])
    refused("duplicates", heads=[(0, 1), (1, 1), (0, 1)])
    refused(
        rf"16 heads enumerate 2\^16 - 1 = 65,535 head sets; exact=True takes at most "
        rf"{EXACT_MAX_PLAYERS} players.*pass heads=",
        config=big,
        exact=True,
    )
    refused(r"unknown Shapley metric 'flop'", metric="flop")
    refused(r"metric 'layer' makes no game: a set's layer change is read at", metric="layer")
    refused(r"permutations=5 with sampling='antithetic'.*an even number", permutations=5)
    refused(r"permutations=1 with sampling='independent'", permutations=1, sampling="independent")
    refused(r"unknown sampling 'stratified'", sampling="stratified")
    refused(r"target_stderr must be a positive", target_stderr=-0.1)
    refused(r"exact must be True, False or None", exact="yes")
    refused(r"labels have shape", labels=[0, 1, 2])
