"""The Flax ViT against a plainly written NumPy forward pass, on fresh random weights and images."""

import jax
import numpy as np
import pytest
from reference_vit import reference_forward  # noqa: I001  (tests/model is on sys.path via conftest)

from jaxvit_interp import AttentionEdit, ViTConfig, init_params, run_model
from jaxvit_interp.model.edits import PRUNING_MODES, keep_mask
from jaxvit_interp.model.vit import VisionTransformer

CONFIGS = {
    "token-nonsquare": ViTConfig.from_variant(
        "mu/4", image_size=(12, 8), num_classes=5, gelu_approximate=False, layer_norm_eps=1e-12
    ),
    "gap-tanh": ViTConfig.from_variant("mu/2", image_size=(6, 6), classifier="gap", num_classes=3),
    "token-prelogits": ViTConfig.from_variant(
        "Test/4", image_size=(8, 12), num_classes=4, representation_size=12, channels=1
    ),
}


def _random_case(config, rng):
    params = init_params(config, int(rng.integers(1 << 30)))
    images = rng.standard_normal((2, *config.image_size, config.channels)).astype(np.float32)
    return params, images


def _relerr(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_reference(name, rng):
    config = CONFIGS[name]
    params, images = _random_case(config, rng)
    head_mask = (rng.random((config.num_layers, config.num_heads)) > 0.4).astype(np.float32)
    out = run_model(config, params, images, head_mask=head_mask)
    assert out.logits.shape == (2, config.num_classes)
    n = config.num_tokens
    assert out.attention.shape == (2, config.num_layers, config.num_heads, n, n)
    for i in range(2):
        logits, attention = reference_forward(config, params, images[i], head_mask=head_mask)
        assert _relerr(out.logits[i], logits) < 1e-4
        assert _relerr(out.attention[i], attention) < 1e-4


@pytest.mark.parametrize("mode", PRUNING_MODES)
def test_partial_pruning_matches_reference(mode, rng):
    config = CONFIGS["token-nonsquare"]
    params, images = _random_case(config, rng)
    layer, head = int(rng.integers(config.num_layers)), int(rng.integers(config.num_heads))
    edit = AttentionEdit.partial_pruning(config, mode, layer, head)
    out = run_model(config, params, images, attention_edit=edit)
    keep = np.ones((config.num_layers, config.num_heads, config.num_tokens, config.num_tokens))
    keep[layer, head] = keep_mask(mode, config.num_tokens)
    for i in range(2):
        logits, attention = reference_forward(config, params, images[i], keep=keep)
        assert _relerr(out.logits[i], logits) < 1e-4
        assert _relerr(out.attention[i], attention) < 1e-4


def test_whole_head_edit_equals_head_mask(rng):
    config = CONFIGS["token-prelogits"]
    params, images = _random_case(config, rng)
    mask = np.ones((config.num_layers, config.num_heads), np.float32)
    mask[1, 3] = 0
    by_mask = run_model(config, params, images, head_mask=mask).logits
    by_edit = run_model(
        config, params, images, attention_edit=AttentionEdit.partial_pruning(config, "head", 1, 3)
    ).logits
    np.testing.assert_allclose(by_mask, by_edit, rtol=1e-5, atol=1e-6)
    assert np.abs(by_mask - run_model(config, params, images).logits).max() > 1e-4


def test_keep_masks_zero_the_right_entries():
    n = 5
    zeroed = {mode: np.argwhere(keep_mask(mode, n) == 0).tolist() for mode in PRUNING_MODES}
    assert zeroed["none"] == []
    assert len(zeroed["head"]) == n * n
    assert zeroed["cls_to_cls"] == [[0, 0]]
    assert sorted(map(tuple, zeroed["cls"])) == sorted(
        {(0, j) for j in range(n)} | {(i, 0) for i in range(n)}
    )
    assert sorted(map(tuple, zeroed["cls_patch"])) == sorted(
        {(0, j) for j in range(1, n)} | {(i, 0) for i in range(1, n)}
    )
    assert sorted(map(tuple, zeroed["patch_to_patch"])) == [
        (i, j) for i in range(1, n) for j in range(1, n)
    ]
    with pytest.raises(ValueError, match="needs a CLS token"):
        keep_mask("cls", n, has_cls_token=False)
    with pytest.raises(ValueError, match="unknown pruning mode"):
        keep_mask("rows", n)


@pytest.mark.parametrize("start_layer", [1, 2])
def test_start_layer_resumes_from_residual(start_layer, rng):
    config = ViTConfig.from_variant("mu/2", image_size=(4, 6), num_layers=3, num_classes=3)
    params, images = _random_case(config, rng)
    mask = np.ones((3, config.num_heads), np.float32)
    mask[start_layer, 0] = 0  # a change at or above start_layer only
    full = run_model(config, params, images, head_mask=mask)
    resumed = VisionTransformer(config).apply(
        {"params": params}, full.residual[:, start_layer], head_mask=mask, start_layer=start_layer
    )
    np.testing.assert_allclose(resumed.logits, full.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        resumed.attention, full.attention[:, start_layer:], rtol=1e-5, atol=1e-7
    )


def test_vit_b16_parameter_count():
    config = ViTConfig.from_variant("B/16")
    shapes = jax.eval_shape(lambda: init_params(config, 0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) == 86_567_656


def test_bad_inputs_are_named():
    config = CONFIGS["gap-tanh"]
    params = init_params(config, 0)
    with pytest.raises(ValueError, match=r"images have shape \(1, 5, 6, 3\)"):
        run_model(config, params, np.zeros((1, 5, 6, 3)))
    with pytest.raises(ValueError, match="head_mask has shape"):
        run_model(config, params, np.zeros((1, 6, 6, 3)), head_mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="does not divide by patch width"):
        ViTConfig(image_size=(16, 18), patch_size=(4, 4))
    with pytest.raises(ValueError, match="unknown ViT variant"):
        ViTConfig.from_variant("XXL/16")
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        ViTConfig.from_dict({"hidden": 3})


def test_config_round_trips_through_json(rng):
    config = CONFIGS["token-prelogits"]
    import json

    assert ViTConfig.from_dict(json.loads(config.to_json())) == config
