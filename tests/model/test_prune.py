"""Heads removed physically: the smaller model computes what the full one does with those heads
masked, and survives saving and loading in both formats."""

import json

import numpy as np
import pytest

from jaxvit_interp.errors import InputError
from jaxvit_interp.model import (
    ViTConfig,
    init_params,
    inspect_checkpoint,
    load_checkpoint,
    run_model,
    save_checkpoint,
    save_safetensors,
)
from jaxvit_interp.model.prune import parameter_count, remove_heads

CASES = {
    "plain": dict(num_classes=5),
    "registers_layer_scale_swiglu": dict(
        num_classes=4, num_register_tokens=2, layer_scale=True, mlp_activation="swiglu"
    ),
    "gap_no_qkv_bias": dict(num_classes=3, classifier="gap", qkv_bias=False),
}
SMALL = dict(image_size=(8, 12), patch_size=(4, 4), hidden_size=16, num_layers=3, num_heads=4)


def _random(case, seed):
    config = ViTConfig(**SMALL, mlp_dim=24, **CASES[case])
    params = init_params(config, seed)
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    heads = sorted({(int(rng.integers(3)), int(rng.integers(4))) for _ in range(5)})
    return config, params, images, heads


def _mask(config, heads):
    mask = np.ones((config.num_layers, config.num_heads), np.float32)
    for layer, h in heads:
        mask[layer, h] = 0
    return mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_removed_heads_equal_masked_heads(case, tmp_path):
    seed = int(np.random.default_rng().integers(1 << 30))
    config, params, images, heads = _random(case, seed)
    small_config, small = remove_heads(config, params, heads)
    want = np.asarray(run_model(config, params, images, head_mask=_mask(config, heads)).logits)
    got = np.asarray(run_model(small_config, small, images).logits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")
    # Each removed head takes its query, key and value columns (with biases) and output rows.
    per_head = config.head_dim * config.hidden_size * 4
    per_head += 3 * config.head_dim if config.qkv_bias else 0
    assert parameter_count(params) - parameter_count(small) == len(heads) * per_head
    assert small_config.heads_per_layer == tuple(
        config.num_heads - sum(1 for layer, _ in heads if layer == i) for i in range(3)
    )
    # Both saved forms load back through load_checkpoint to the same outputs: the config saved
    # with them (the heads of each layer) wins over the names, which are vit_jax's.
    saved = [
        save_checkpoint(tmp_path / "own", small_config, small),
        save_safetensors(tmp_path / "m.safetensors", small_config, small),
    ]
    for path in saved:
        report = inspect_checkpoint(path)
        assert report.ok and report.family.startswith("jaxvit-interp"), report
        loaded_config, loaded = load_checkpoint(path)
        assert loaded_config == small_config, path
        np.testing.assert_array_equal(
            np.asarray(run_model(loaded_config, loaded, images).logits), got, err_msg=str(path)
        )


def test_a_layer_with_every_head_removed_runs_saves_and_loads(tmp_path):
    """Greedy pruning may empty a layer: its attention adds nothing (the masked model's output),
    and both saved forms hold it (orbax stores no empty array: the config gives it back)."""
    rng = np.random.default_rng()
    config, params, images, _ = _random("registers_layer_scale_swiglu", int(rng.integers(1 << 30)))
    empty = int(rng.integers(3))
    heads = [(empty, h) for h in range(4)] + [((empty + 1) % 3, int(rng.integers(4)))]
    small_config, small = remove_heads(config, params, heads)
    assert small_config.heads_per_layer[empty] == 0
    want = np.asarray(run_model(config, params, images, head_mask=_mask(config, heads)).logits)
    got = np.asarray(run_model(small_config, small, images).logits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for path in (
        save_checkpoint(tmp_path / "own", small_config, small),
        save_safetensors(tmp_path / "m.safetensors", small_config, small),
    ):
        loaded_config, loaded = load_checkpoint(path)
        assert loaded_config == small_config
        np.testing.assert_array_equal(
            np.asarray(run_model(loaded_config, loaded, images).logits), got, err_msg=str(path)
        )


def test_pruned_models_refuse_head_masks_and_second_pruning():
    config, params, images, heads = _random("plain", 0)
    small_config, small = remove_heads(config, params, heads)
    with pytest.raises(InputError, match="heads removed"):
        run_model(small_config, small, images, head_mask=np.ones((3, 4), np.float32))
    with pytest.raises(InputError, match="already has heads removed"):
        remove_heads(small_config, small, [(0, 0)])
    with pytest.raises(InputError, match="outside"):
        remove_heads(config, params, [(3, 0)])
    with pytest.raises(InputError, match="heads_per_layer"):
        config.replace(heads_per_layer=(4, 5, 1))


def test_prune_command_on_the_digits_model(tmp_path, capsys):
    from jaxvit_interp.cli import main
    from jaxvit_interp.data.digits import load_digits, load_digits_model

    out = tmp_path / "pruned"
    args = ["prune", "--checkpoint", "builtin:digits", "--images", "builtin:digits"]
    args += ["--max-images", "40", "--remove", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "removed 3 of 24 heads" in printed
    report = json.loads((out / "prune.json").read_text())
    config, params = load_digits_model()
    images = load_digits("test")[0][:40]
    removed = [tuple(h) for h in report["removed"]]
    want = run_model(config, params, images, head_mask=_mask(config, removed)).logits
    for saved in ("model", "model.safetensors"):  # both load as the pruned model
        small_config, small = load_checkpoint(out / saved)
        assert sum(small_config.heads_per_layer) == 24 - 3, saved
        got = run_model(small_config, small, images).logits
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert report["max_abs_difference"] < 1e-4
    assert report["parameters_after"] == parameter_count(small)
    # A second run into the same folder is refused before any work.
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
