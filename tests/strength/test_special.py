"""Attention to and from the special tokens, against a plain loop, and the model path."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp.execution import Execution
from jaxvit_interp.model import ViTConfig, init_params, run_model
from jaxvit_interp.strength import (
    hop_strength,
    model_strength_over_images,
    special_token_mass,
    special_token_names,
)
from jaxvit_interp.strength.reference import special_token_mass_loop


def random_attention(seed, lead, n):
    logits = 3.0 * np.random.default_rng(seed).normal(size=(*lead, n, n))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("num_special, patches", [(1, 4), (6, 9), (2, 1), (0, 5)])
def test_matches_loop(num_special, patches):
    attention = random_attention(num_special + patches, (2, 3), num_special + patches)
    result = special_token_mass(jnp.asarray(attention), num_special)
    assert result.to_token.shape == (2, 3, num_special)
    assert result.between.shape == (2, 3, num_special, num_special)
    for index in np.ndindex(2, 3):
        want = special_token_mass_loop(attention[index].astype(np.float64), num_special)
        for field in ("to_token", "from_token", "between"):
            got = np.asarray(getattr(result, field))[index]
            np.testing.assert_allclose(got.ravel(), np.ravel(want[field]), rtol=1e-5, atol=1e-7)


def test_cls_entries_agree_with_hop_strength():
    attention = random_attention(3, (4,), 3 + 6)
    special = special_token_mass(attention, 3)
    hops = hop_strength(attention, (2, 3), num_prefix_tokens=3)
    np.testing.assert_allclose(special.to_token[:, 0], hops.patch_to_cls, rtol=1e-6)
    np.testing.assert_allclose(special.from_token[:, 0], hops.cls_to_patch, rtol=1e-6)


def test_names_and_bad_input():
    config = ViTConfig.from_variant(
        "mu/4", image_size=8, distillation_token=True, num_register_tokens=2
    )
    assert special_token_names(config) == ("cls", "distillation", "register_0", "register_1")
    assert special_token_names(config.replace(classifier="map", distillation_token=False)) == (
        "register_0",
        "register_1",
    )
    with pytest.raises(ValueError, match="at least one patch"):
        special_token_mass(np.ones((3, 3)) / 3, 3)
    with pytest.raises(ValueError, match="expected"):
        special_token_mass(np.ones((3, 4)), 1)


def test_model_with_registers_through_strength():
    config = ViTConfig.from_variant(
        "mu/4", image_size=(8, 12), num_classes=3, num_register_tokens=4, position_prefix_tokens=1
    )
    params = init_params(config, 0)
    images = np.random.default_rng(0).normal(size=(3, 8, 12, 3)).astype(np.float32)
    results = model_strength_over_images(
        config, params, images, execution=Execution(batch_size=2, progress=False)
    )
    attention = run_model(config, params, images).attention
    expected = hop_strength(
        attention, config.grid, patch_size=config.patch_size, num_prefix_tokens=5
    )
    np.testing.assert_allclose(results.local.strength, expected.strength, rtol=1e-5, atol=1e-7)
    assert results.num_prefix_tokens == 5
