"""Activation patching against the NumPy reference forward pass: one head's output taken from
the other image of a pair, in both directions, and the normalised score."""

from __future__ import annotations

import re

import numpy as np
import pytest
from families import CASES, SMALL  # noqa: I001  (tests/model is on sys.path via conftest)
from reference_vit import reference_forward

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import ActivationPatching, activation_patching, patching

REGISTERS = {**SMALL, **CASES["dinov2_registers_swiglu"]}
TWO = Execution(batch_size=2, progress=False)


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _patched(config, params, image, source, layer, head):
    """``softmax`` of ``image`` with head ``(layer, head)``'s output taken from ``source``'s
    clean pass."""
    mixed = reference_forward(config, params, source, details=True)[2]["mixed"]
    mask = np.ones((config.num_layers, config.num_heads))
    mask[layer, head] = 0.0
    add = {(layer, head): mixed[layer, head]}
    return _softmax(reference_forward(config, params, image, head_mask=mask, add=add)[0])


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_patching_equals_one_patched_pass_per_head(direction, rng, random_model, random_images):
    config, params = random_model(int(rng.integers(1 << 30)), **REGISTERS)
    clean = random_images(config, 3, int(rng.integers(1 << 30)))
    corrupted = random_images(config, 3, int(rng.integers(1 << 30)))
    corrupted[2] = clean[2]  # a pair that does not tell clean from corrupted: no score
    got = activation_patching(config, params, clean, corrupted, direction=direction, execution=TWO)
    assert isinstance(got, ActivationPatching) and got.direction == direction
    p_clean = np.stack([_softmax(reference_forward(config, params, x)[0]) for x in clean])
    p_corrupt = np.stack([_softmax(reference_forward(config, params, x)[0]) for x in corrupted])
    y = p_clean.argmax(-1)  # no labels: the clean image's prediction
    np.testing.assert_array_equal(got.labels, y)
    assert got.labels_are_predictions
    rows = np.arange(3)
    np.testing.assert_allclose(got.prob_clean, p_clean[rows, y], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.prob_corrupt, p_corrupt[rows, y], rtol=1e-4, atol=1e-6)
    gap = p_clean[rows, y] - p_corrupt[rows, y]
    np.testing.assert_array_equal(got.defined, np.abs(gap) >= 1e-3)
    assert not got.defined[2] and got.defined[:2].all(), gap
    for i in range(3):
        image, source = (
            (corrupted[i], clean[i]) if direction == "denoising" else (clean[i], corrupted[i])
        )
        for layer in range(config.num_layers):
            for head in range(config.num_heads):
                p = _patched(config, params, image, source, layer, head)[y[i]]
                where = f"pair {i} head {(layer, head)}"
                np.testing.assert_allclose(
                    got.prob_patched[i, layer, head], p, rtol=2e-4, atol=2e-5, err_msg=where
                )
                if i < 2:
                    score = (p - p_corrupt[i, y[i]]) / gap[i]
                    np.testing.assert_allclose(
                        got.score[i, layer, head], score, rtol=2e-3, atol=2e-4, err_msg=where
                    )
    assert np.isnan(got.score[2]).all()
    np.testing.assert_allclose(got.mean_score(), got.score[:2].mean(axis=0), rtol=1e-6)
    assert re.search(r"scored +2 of 3 pairs \(\|p_clean - p_corrupt\| >= 0.001\)", repr(got))


def test_given_labels_and_the_gap_are_used(rng, random_model, random_images):
    config, params = random_model(int(rng.integers(1 << 30)), **REGISTERS)
    clean = random_images(config, 2, int(rng.integers(1 << 30)))
    corrupted = random_images(config, 2, int(rng.integers(1 << 30)))
    labels = rng.integers(0, config.num_classes, 2)
    got = activation_patching(config, params, clean, corrupted, labels, min_gap=2.0, execution=TWO)
    np.testing.assert_array_equal(got.labels, labels)
    assert not got.labels_are_predictions
    p_clean = _softmax(reference_forward(config, params, clean[0])[0])[labels[0]]
    np.testing.assert_allclose(got.prob_clean[0], p_clean, rtol=1e-4, atol=1e-6)
    # A gap of probabilities is never 2: no pair is scored.
    assert not got.defined.any() and np.isnan(got.score).all()
    assert np.isnan(got.mean_score()).all()


def test_bad_pairs_are_refused_before_any_work(
    no_model_work, monkeypatch, random_model, random_images
):
    config, params = random_model(0, **REGISTERS)
    clean = random_images(config, 3, 0)
    monkeypatch.setattr(patching, "reduce_over_images", no_model_work)
    bad = [
        (dict(corrupted=clean[:2]), r"clean has 3 images and corrupted 2: .* in pairs"),
        (
            dict(corrupted=np.zeros((3, 8, 8, 3), np.float32)),
            r"corrupted have the wrong size: shape \(3, 8, 8, 3\)",
        ),
        (dict(direction="both"), r"unknown patching direction 'both'; expected one of denois"),
        (dict(min_gap=0.0), r"min_gap must be a positive float, got 0.0"),
        (dict(labels=[0, 1, 9]), r"1 label\(s\) outside the class range \[0, 4\)"),
    ]
    for change, match in bad:
        kwargs = {"corrupted": clean[::-1], "execution": TWO, **change}
        with pytest.raises(InputError, match=match):
            activation_patching(config, params, clean, **kwargs)
    backbone, weights = random_model(0, **SMALL, **CASES["clip_backbone"])
    with pytest.raises(InputError, match=r"activation_patching: metric\(s\) 'prob' need"):
        activation_patching(backbone, weights, clean, clean, execution=TWO)
