"""The ablation as a value the engines take: its kinds ("zero" the default), anything else
refused, and consulted by the kernels of both engines where a head's output is removed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import (
    ABLATION_KINDS,
    Ablation,
    ablate,
    head_importance,
    pairwise_interactions,
    partial_pruning,
    pruning_curves,
)
from jaxvit_interp.importance import ablation as ablation_module
from jaxvit_interp.importance import partial as partial_module
from jaxvit_interp.importance import sets as sets_module
from jaxvit_interp.model import run_model
from jaxvit_interp.pipeline.prune import choose_heads

QUIET = Execution(progress=False)
SMALL = dict(
    image_size=(8, 12),
    patch_size=(4, 4),
    hidden_size=16,
    num_layers=3,
    num_heads=2,
    mlp_dim=24,
    num_classes=5,
)


@dataclasses.dataclass(frozen=True)
class _Halved(Ablation):
    """Half of an ablated head's output taken away. Not a kind the package offers: it exists to
    show that a kind is only what the kernels consult, its two methods, and that both engines
    and their drivers carry it as it is. Both must then equal the model with a head mask of 1/2
    on the ablated heads."""

    kind: str = "halved"

    def __post_init__(self):
        pass  # not one of ABLATION_KINDS: the package's own check would refuse it

    def removed(self, mixed, replacement=None):
        return 0.5 * mixed

    def masked(self, mixed, keep, replacement=None):
        return mixed * (0.5 + 0.5 * keep)


def _masked_pass(config, params, images, mask) -> tuple[np.ndarray, np.ndarray]:
    """``(probs [image, class], block outputs [image, layer, token, hidden])`` of one plain
    forward pass with head mask ``mask``, in float64."""
    out = run_model(config, params, images, head_mask=mask)
    logits = np.asarray(out.logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), np.asarray(out.block_outputs, np.float64)


def _layer_change(full: np.ndarray, masked: np.ndarray, layer: int) -> np.ndarray:
    """``||O_l - O'_l|| / ||O_l||`` per image from two passes' block outputs."""
    flat = lambda a: a[:, layer].reshape(len(a), -1)  # noqa: E731
    return np.linalg.norm(flat(full - masked), axis=1) / np.linalg.norm(flat(full), axis=1)


def test_zero_is_the_default(random_model, random_images):
    assert ABLATION_KINDS == ("zero", "mean", "resample")
    assert Ablation() == Ablation("zero")
    config, params = random_model(int(np.random.default_rng().integers(1 << 30)), **SMALL)
    images = random_images(config, 2, 1)
    default = head_importance(config, params, images, metrics=("kl",), execution=QUIET)
    for given in ("zero", Ablation("zero")):
        got = head_importance(
            config, params, images, metrics=("kl",), ablation=given, execution=QUIET
        )
        np.testing.assert_array_equal(got.kl, default.kl)


def test_another_kind_is_refused_by_name_before_any_work(random_model, random_images, monkeypatch):
    config, params = random_model(0, **SMALL)
    images = random_images(config, 2, 0)

    def no_work(*args, **kwargs):
        raise AssertionError("the engine ran before the ablation was checked")

    monkeypatch.setattr(ablation_module, "run_engine", no_work)
    monkeypatch.setattr(partial_module, "run_engine", no_work)
    monkeypatch.setattr(sets_module, "run_sets", no_work)
    calls = {
        "head_importance": lambda a: head_importance(
            config, params, images, ablation=a, execution=QUIET
        ),
        "partial_pruning": lambda a: partial_pruning(
            config, params, images, top_k=2, ablation=a, execution=QUIET
        ),
        "ablate": lambda a: ablate(config, params, images, [[(0, 1)]], ablation=a, execution=QUIET),
        "pairwise_interactions": lambda a: pairwise_interactions(
            config, params, images, [(0, 0), (2, 1)], ablation=a, execution=QUIET
        ),
        "pruning_curves": lambda a: pruning_curves(
            config, params, images, orders=("random",), ablation=a, execution=QUIET
        ),
        "choose_heads": lambda a: choose_heads(
            config, params, images, None, remove=1, ablation=a, execution=QUIET
        ),
    }
    for call in calls.values():  # a failure shows which call it was
        with pytest.raises(
            InputError, match=r"unknown ablation 'median'; expected one of zero, mean, resample"
        ):
            call("median")
        with pytest.raises(
            InputError, match=r"ablation must be the name of a kind \(zero, mean, resample\).*3"
        ):
            call(3)


def test_both_engines_carry_the_kind_to_their_kernels(random_model, random_images, rng):
    """A kind that takes half of a head's output away, through the single-head engine and the
    set engine unchanged, equals plain forward passes with a head mask of 1/2."""
    config, params = random_model(int(rng.integers(1 << 30)), **SMALL)
    images = random_images(config, 3, int(rng.integers(1 << 30)))
    L, H = config.num_layers, config.num_heads
    p, blocks_full = _masked_pass(config, params, images, np.ones((L, H), np.float32))
    pred = p.argmax(-1)
    rows = np.arange(len(images))
    # Batches of 2 images: the second one padded.
    options = dict(
        metrics=("prob", "layer"),
        ablation=_Halved(),
        execution=Execution(batch_size=2, progress=False),
    )
    got = head_importance(config, params, images, **options)
    for layer in range(L):
        for head in range(H):
            mask = np.ones((L, H), np.float32)
            mask[layer, head] = 0.5
            q, blocks = _masked_pass(config, params, images, mask)
            np.testing.assert_allclose(
                got.prob[:, layer, head], q[rows, pred], rtol=1e-4, atol=2e-6
            )
            change = _layer_change(blocks_full, blocks, layer)
            np.testing.assert_allclose(got.layer[:, layer, head], change, rtol=1e-4, atol=1e-6)
    sets = [[(0, 1)], [(0, 0), (2, 1)], [(1, 1), (2, 0), (2, 1)], [(2, 0)]]
    got = ablate(config, params, images, sets, **options)
    for i, heads in enumerate(sets):
        mask = np.ones((L, H), np.float32)
        for layer, head in heads:
            mask[layer, head] = 0.5
        q, blocks = _masked_pass(config, params, images, mask)
        np.testing.assert_allclose(got.prob[:, i], q[rows, pred], rtol=1e-4, atol=2e-6)
        change = _layer_change(blocks_full, blocks, min(layer for layer, _ in heads))
        np.testing.assert_allclose(got.layer[:, i], change, rtol=1e-4, atol=1e-6)


def test_the_two_methods_agree_for_every_kind(rng):
    """``masked(m, keep, r) == m - (1 - keep) * removed(m, r)``: the single-head engine's term
    and the set engine's masked heads are one replacement; ``r`` is None for zero."""
    mixed = rng.normal(size=(3, 4, 5, 6))  # [batch, head, token, head_dim]
    keep = (rng.uniform(size=(4, 1, 1)) > 0.5).astype(float)
    for kind in ABLATION_KINDS:
        a = Ablation(kind)
        r = None if a.replacement is None else rng.normal(size=(1, 4, 5, 6))
        want = mixed * keep + (0.0 if r is None else r * (1 - keep))
        # Float64 rounding: entries where the two spellings cancel to near 0 differ by ulps.
        np.testing.assert_allclose(a.masked(mixed, keep, r), want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            a.masked(mixed, keep, r),
            mixed - (1 - keep) * a.removed(mixed, r),
            rtol=1e-12,
            atol=1e-14,
        )
