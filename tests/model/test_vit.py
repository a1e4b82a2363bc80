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


# Every architecture option, each in a config small enough for the per-head NumPy loop.
FAMILY_CONFIGS = {
    "distilled-registers": ViTConfig.from_variant(
        "mu/4",
        image_size=(8, 12),
        num_classes=4,
        distillation_token=True,
        distillation_head=True,
        num_register_tokens=2,
        gelu_approximate=False,
    ),
    "dinov2-registers-swiglu": ViTConfig.from_variant(
        "mu/4",
        image_size=(12, 8),
        num_classes=0,
        num_register_tokens=3,
        position_prefix_tokens=1,
        layer_scale=True,
        mlp_activation="swiglu",
    ),
    "clip-projection": ViTConfig.from_variant(
        "mu/4",
        image_size=(8, 8),
        num_classes=0,
        pre_norm=True,
        mlp_activation="quick_gelu",
        projection_dim=6,
        patch_bias=False,
        layer_norm_eps=1e-5,
    ),
    "siglip-map-sincos": ViTConfig.from_variant(
        "mu/4", image_size=(8, 12), num_classes=3, classifier="map", position_embedding="sincos2d"
    ),
    "mae-gap-fc-norm": ViTConfig.from_variant(
        "mu/4",
        image_size=(12, 12),
        num_classes=5,
        classifier="gap",
        class_token=True,
        fc_norm=True,
        layer_scale=True,
    ),
    "registers-no-positions": ViTConfig.from_variant(
        "mu/4", image_size=(8, 8), num_classes=2, num_register_tokens=2, position_prefix_tokens=0
    ),
}


def random_params(config, seed):
    """Every leaf drawn at random (tokens, biases, norms, layer scales), from the tree's shapes."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: init_params(config, 0))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        base = 1.0 if "scale" in name else 0.0
        scale = 0.5 / np.sqrt(np.prod(leaf.shape[:-1])) if "kernel" in name else 0.2
        return np.asarray(base + scale * rng.normal(size=leaf.shape), np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


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


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_architecture_options_match_reference(name, rng):
    config = FAMILY_CONFIGS[name]
    params = random_params(config, int(rng.integers(1 << 30)))
    images = rng.standard_normal((2, *config.image_size, config.channels)).astype(np.float32)
    head_mask = (rng.random((config.num_layers, config.num_heads)) > 0.4).astype(np.float32)
    out = run_model(config, params, images, head_mask=head_mask)
    n = config.num_tokens
    assert out.attention.shape == (2, config.num_layers, config.num_heads, n, n)
    assert out.logits.shape == (2, config.num_classes)
    assert out.pre_logits.shape == (2, config.pooled_size)
    for i in range(2):
        logits, attention, more = reference_forward(
            config, params, images[i], head_mask=head_mask, details=True
        )
        if config.num_classes:
            assert _relerr(out.logits[i], logits) < 1e-4
        assert _relerr(out.pre_logits[i], more["pooled"]) < 1e-4
        assert _relerr(out.attention[i], attention) < 1e-4
        if config.classifier == "map":
            assert _relerr(out.pool_attention[i], more["pool_attention"]) < 1e-4
        else:
            assert out.pool_attention is None


def test_configs_without_new_fields_load_with_the_old_meaning():
    """A stored config dict from before the architecture options loads unchanged, and the
    shipped digits model's parameter tree is the one its config declares."""
    import json
    from importlib import resources

    stored = json.loads(
        resources.files("jaxvit_interp.data.builtin").joinpath("digits_vit.json").read_text()
    )["config"]
    config = ViTConfig.from_dict(stored)
    assert config.has_cls_token and config.num_prefix_tokens == 1 and not config.layer_scale
    assert config.mlp_activation == "gelu" and config.position_embedding == "learned"
    assert config.num_tokens == config.num_patches + 1 and config.pooled_size == 48
    gap = ViTConfig.from_dict({**stored, "classifier": "gap"})
    assert not gap.has_cls_token and gap.num_tokens == gap.num_patches
    from jaxvit_interp.data.digits import load_digits_model

    loaded_config, params = load_digits_model()
    assert loaded_config == config
    shapes = jax.eval_shape(lambda: init_params(config, 0))
    assert jax.tree.structure(shapes) == jax.tree.structure(params)


def test_canonical_config_fields_and_bad_combinations():
    base = ViTConfig.from_variant("mu/4", image_size=8)
    assert base.replace(class_token=True) == base  # what "token" implies anyway
    regs = base.replace(num_register_tokens=2, position_prefix_tokens=3)
    assert regs.position_prefix_tokens is None and regs.num_position_prefix_rows == 3
    assert regs.replace(position_prefix_tokens=1).num_position_prefix_rows == 1
    for bad, match in [
        (dict(class_token=False), "reads the CLS token"),
        (dict(distillation_head=True), "needs distillation_token"),
        (dict(classifier="map", mlp_activation="swiglu"), "plain MLP"),
        (dict(position_prefix_tokens=2), "position_prefix_tokens 2"),
        (dict(mlp_activation="relu"), "mlp_activation must be one of"),
        (dict(position_interpolation="nearest"), "position_interpolation must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            base.replace(**bad)


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


@pytest.mark.parametrize("mode", PRUNING_MODES)
def test_partial_pruning_with_special_tokens_matches_reference(mode, rng):
    config = FAMILY_CONFIGS["distilled-registers"]
    params = random_params(config, int(rng.integers(1 << 30)))
    images = rng.standard_normal((2, *config.image_size, config.channels)).astype(np.float32)
    layer, head = int(rng.integers(config.num_layers)), int(rng.integers(config.num_heads))
    edit = AttentionEdit.partial_pruning(config, mode, layer, head)
    out = run_model(config, params, images, attention_edit=edit)
    keep = np.ones((config.num_layers, config.num_heads, config.num_tokens, config.num_tokens))
    keep[layer, head] = keep_mask(mode, config.num_tokens, True, config.num_prefix_tokens)
    for i in range(2):
        logits, attention = reference_forward(config, params, images[i], keep=keep)
        assert _relerr(out.logits[i], logits) < 1e-4
        assert _relerr(out.attention[i], attention) < 1e-4


def test_keep_masks_know_where_patches_start():
    # CLS, distillation, two registers, then 3 patches.
    n, first = 7, 4
    zeroed = lambda mode: sorted(map(tuple, np.argwhere(keep_mask(mode, n, True, first) == 0)))  # noqa: E731
    assert zeroed("patch_to_patch") == [(i, j) for i in range(4, 7) for j in range(4, 7)]
    assert zeroed("cls_patch") == sorted(
        {(0, j) for j in range(4, 7)} | {(i, 0) for i in range(4, 7)}
    )
    assert zeroed("cls_to_cls") == [(0, 0)]
    assert len(zeroed("cls")) == 2 * n - 1
    with pytest.raises(ValueError, match="does not fit"):
        keep_mask("head", n, True, 0)


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


@pytest.mark.parametrize("name", ["token-prelogits", *FAMILY_CONFIGS])
def test_config_round_trips_through_json(name):
    config = {**CONFIGS, **FAMILY_CONFIGS}[name]
    import json

    assert ViTConfig.from_dict(json.loads(config.to_json())) == config
