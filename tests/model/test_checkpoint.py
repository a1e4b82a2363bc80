"""Checkpoint import/export without other libraries: vit_jax / big_vision .npz, own orbax format,
position-embedding resampling, and every bad-input error.

The .npz files are written here from ``init_params`` of small configs, renamed by hand into each
family's layout, so a loader that maps a name or axis wrongly changes the model's outputs.
"""

from __future__ import annotations

import functools
import re
import secrets

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxvit_interp.model import ViTConfig, init_params, run_model
from jaxvit_interp.model.checkpoint import (
    CheckpointError,
    inspect_checkpoint,
    load_checkpoint,
    resample_posemb,
    save_checkpoint,
)
from jaxvit_interp.model.config import IMAGENET_PREPROCESSING, Preprocessing

POSEMB = "Transformer/posembed_input/pos_embedding"


@pytest.fixture
def seed() -> int:
    value = secrets.randbits(31)
    print(f"seed={value}")  # shown by pytest when a test fails, to replay it
    return value


def flat_params(config: ViTConfig, seed: int) -> dict[str, np.ndarray]:
    """Random parameters as a flat '/'-keyed dict, biases and norms randomised too.

    ``init_params`` leaves biases at 0 and LayerNorm scales at 1, which would hide a loader that
    swaps or drops them, so every array is drawn here from its shape.
    """
    rng = np.random.default_rng(seed)
    # Shapes only (eval_shape): the values are redrawn anyway, and an eager init is slow.
    shapes = jax.eval_shape(functools.partial(init_params, config))
    flat = traverse_util.flatten_dict(shapes, sep="/")
    out = {}
    for key, value in flat.items():
        noise = rng.normal(0.0, 0.2, value.shape).astype(np.float32)
        out[key] = noise + (1.0 if key.endswith("/scale") else 0.0)
    return out


def tree(flat):
    return traverse_util.unflatten_dict(flat, sep="/")


def images_for(config: ViTConfig, seed: int, batch: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return rng.normal(size=(batch, *config.image_size, config.channels)).astype(np.float32)


def assert_same_params(loaded, flat: dict[str, np.ndarray]):
    got = traverse_util.flatten_dict(loaded, sep="/")
    assert sorted(got) == sorted(flat)
    for key, value in flat.items():
        assert got[key].dtype == np.float32, key
        np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)


def assert_same_outputs(config, params_a, params_b, seed):
    x = images_for(config, seed)
    a, b = run_model(config, params_a, x), run_model(config, params_b, x)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    np.testing.assert_array_equal(np.asarray(a.attention), np.asarray(b.attention))


CONFIGS = {
    "token": ViTConfig.from_variant("Test/8", image_size=32, num_classes=5),
    "gap_representation": ViTConfig.from_variant(
        "mu/4", image_size=16, num_classes=3, classifier="gap", representation_size=12
    ),
    "three_layers_6_heads": ViTConfig(
        image_size=24,
        patch_size=6,
        hidden_size=24,
        num_layers=3,
        num_heads=6,
        mlp_dim=40,
        num_classes=4,
        channels=1,
    ),
}


def test_vit_b16_parameter_count():
    # The count the vit_jax repository pins for ViT-B/16 with 1000 classes at 224 px.
    config = ViTConfig.from_variant("B/16")
    shapes = jax.eval_shape(functools.partial(init_params, config))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 86_567_656


@pytest.mark.parametrize("name", CONFIGS)
def test_vit_jax_npz(tmp_path, seed, name):
    config = CONFIGS[name]
    flat = flat_params(config, seed)
    np.savez(tmp_path / "vit.npz", **flat)
    loaded_config, params = load_checkpoint(tmp_path / "vit.npz")
    # Everything but the family defaults comes from the tensor shapes.
    assert loaded_config == config.replace(
        layer_norm_eps=1e-6, gelu_approximate=True, preprocessing=Preprocessing()
    )
    assert_same_params(params, flat)
    assert_same_outputs(config, tree(flat), params, seed)


def test_vit_jax_pre_linen_prefix(tmp_path, seed):
    config = CONFIGS["token"]
    flat = flat_params(config, seed)
    stored = {"opt/target/" + k: v for k, v in flat.items()}
    stored["opt/state/step"] = np.array(3)  # optimizer state beside the target: ignored
    np.savez(tmp_path / "old.npz", **stored)
    loaded_config, params = load_checkpoint(tmp_path / "old.npz")
    assert loaded_config == config
    assert_same_params(params, flat)
    report = inspect_checkpoint(tmp_path / "old.npz")
    assert report.ok and report.keys("ignored") == ["opt/state/step"]
    assert "pre-linen" in report.family


def to_big_vision(flat: dict[str, np.ndarray], has_cls: bool) -> dict[str, np.ndarray]:
    """This model's names -> big_vision's, written out independently of the loader's table."""
    out = {}
    for key, value in flat.items():
        if key == POSEMB:
            # big_vision adds position embeddings to patches only.
            out["pos_embedding"] = value[:, 1:] if has_cls else value
            continue
        key = key.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
        key = key.replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0")
        out[key] = value
    return out


@pytest.mark.parametrize("name", ["token", "gap_representation"])
def test_big_vision_npz(tmp_path, seed, name):
    config = CONFIGS[name]
    flat = flat_params(config, seed)
    if config.has_cls_token:
        flat[POSEMB][:, 0] = 0.0  # big_vision's CLS token has no position embedding
    np.savez(tmp_path / "bv.npz", **to_big_vision(flat, config.has_cls_token))
    loaded_config, params = load_checkpoint(tmp_path / "bv.npz")
    assert loaded_config == config.replace(gelu_approximate=True, layer_norm_eps=1e-6)
    assert_same_params(params, flat)
    assert_same_outputs(config, tree(flat), params, seed)


def test_big_vision_scanned_layers(tmp_path, seed):
    config = CONFIGS["three_layers_6_heads"]
    flat = flat_params(config, seed)
    flat[POSEMB][:, 0] = 0.0
    named = to_big_vision(flat, has_cls=True)
    stored = {}
    per_layer = re.compile(r"^Transformer/encoderblock_(\d+)/(.*)$")
    for key, value in named.items():
        if m := per_layer.match(key):
            stored.setdefault("params/Transformer/encoderblock/" + m.group(2), {})[
                int(m.group(1))
            ] = value
        else:
            stored["params/" + key] = value
    stored = {
        k: np.stack([v[i] for i in range(config.num_layers)]) if isinstance(v, dict) else v
        for k, v in stored.items()
    }
    np.savez(tmp_path / "scan.npz", **stored)
    loaded_config, params = load_checkpoint(tmp_path / "scan.npz")
    assert loaded_config.num_layers == 3 and loaded_config.num_heads == 6
    assert loaded_config.channels == 1
    assert_same_params(params, flat)
    assert_same_outputs(config, tree(flat), params, seed)


def test_own_format_round_trip(tmp_path, seed):
    config = ViTConfig(
        image_size=(16, 24),
        patch_size=(4, 8),
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=24,
        num_classes=6,
        layer_norm_eps=1e-12,
        gelu_approximate=False,
        qkv_bias=False,
        preprocessing=IMAGENET_PREPROCESSING,
    )
    flat = flat_params(config, seed)
    save_checkpoint(tmp_path / "ckpt", config, tree(flat))
    loaded_config, params = load_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    assert_same_params(params, flat)
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ckpt", config, tree(flat))
    other = flat_params(config, seed + 1)
    save_checkpoint(tmp_path / "ckpt", config, tree(other), overwrite=True)
    assert_same_params(load_checkpoint(tmp_path / "ckpt")[1], other)


@pytest.mark.parametrize(
    "options",
    [
        dict(num_register_tokens=2, position_prefix_tokens=1, layer_scale=True, num_classes=0),
        dict(classifier="map", position_embedding="sincos2d", mlp_activation="quick_gelu"),
        dict(distillation_token=True, distillation_head=True, pre_norm=True, patch_bias=False),
        dict(classifier="gap", class_token=True, fc_norm=True, mlp_activation="swiglu"),
    ],
)
def test_own_format_round_trip_of_every_option(tmp_path, seed, options):
    config = ViTConfig.from_variant(
        "mu/4", image_size=(8, 12), position_interpolation="bicubic", **options
    )
    flat = flat_params(config, seed)
    save_checkpoint(tmp_path / "ckpt", config, tree(flat))
    loaded_config, params = load_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    assert_same_params(params, flat)


def test_save_checkpoint_checks_params_against_config(tmp_path, seed):
    config = CONFIGS["token"]
    flat = flat_params(config, seed)
    with pytest.raises(CheckpointError, match=r"head/kernel: config needs \[32, 7\]"):
        save_checkpoint(tmp_path / "bad", config.replace(num_classes=7), tree(flat))
    assert not (tmp_path / "bad").exists()


def scipy_resample(posemb: np.ndarray, old, new, num_prefix: int) -> np.ndarray:
    """Independent reference: scipy's order-1 zoom with pixel-centre alignment, edges clamped."""
    ndimage = pytest.importorskip("scipy.ndimage")
    grid = posemb[0, num_prefix:].reshape(*old, -1).astype(np.float64)
    zoom = (new[0] / old[0], new[1] / old[1], 1)
    out = ndimage.zoom(grid, zoom, order=1, grid_mode=True, mode="nearest")
    assert out.shape[:2] == tuple(new)
    return np.concatenate([posemb[:, :num_prefix], out.reshape(1, -1, grid.shape[-1])], axis=1)


@pytest.mark.parametrize(
    "old, new, num_prefix", [((3, 4), (5, 7), 1), ((6, 6), (4, 3), 0), ((2, 2), (8, 8), 1)]
)
def test_resample_posemb_matches_scipy(seed, old, new, num_prefix):
    rng = np.random.default_rng(seed)
    posemb = rng.normal(size=(1, num_prefix + old[0] * old[1], 5)).astype(np.float32)
    got = np.asarray(resample_posemb(posemb, old_grid=old, new_grid=new, num_prefix=num_prefix))
    want = scipy_resample(posemb, old, new, num_prefix)
    np.testing.assert_array_equal(got[:, :num_prefix], posemb[:, :num_prefix])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_load_at_new_image_size(tmp_path, seed):
    config = CONFIGS["token"]  # 32 px, patch 8: grid 4x4
    flat = flat_params(config, seed)
    np.savez(tmp_path / "vit.npz", **flat)
    wanted = config.replace(image_size=(40, 56))  # grid 5x7
    loaded_config, params = load_checkpoint(tmp_path / "vit.npz", config=wanted)
    assert loaded_config == wanted
    got = traverse_util.flatten_dict(params, sep="/")
    np.testing.assert_allclose(
        np.asarray(got[POSEMB]),
        scipy_resample(flat[POSEMB], (4, 4), (5, 7), 1),
        rtol=1e-5,
        atol=1e-6,
    )
    for key in flat:
        if key != POSEMB:
            np.testing.assert_array_equal(np.asarray(got[key]), flat[key], err_msg=key)
    out = run_model(wanted, params, images_for(wanted, seed))
    assert out.logits.shape == (2, 5) and out.attention.shape == (2, 2, 4, 36, 36)
    assert np.isfinite(np.asarray(out.logits)).all()
    report = inspect_checkpoint(tmp_path / "vit.npz", config=wanted)
    assert report.ok and any("resampled" in n for n in report.notes)


# ---- bad input --------------------------------------------------------------------------------


@pytest.fixture
def npz_flat(seed):
    return flat_params(CONFIGS["token"], seed)


def test_missing_extra_and_misshaped_keys_are_listed(tmp_path, npz_flat):
    flat = dict(npz_flat)
    del flat["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    flat["Transformer/encoderblock_0/Adapter/kernel"] = np.zeros((32, 4), np.float32)
    flat["head/bias"] = np.zeros((6,), np.float32)  # head/kernel says 5 classes
    np.savez(tmp_path / "bad.npz", **flat)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.npz")
    message = str(info.value)
    assert "missing (1):" in message
    assert "Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias  expected [32]" in message
    assert (
        "extra (1):" in message
        and "Transformer/encoderblock_0/Adapter/kernel  found [32, 4]" in message
    )
    assert "mis-shaped (1):" in message and "head/bias  expected [5], found [6]" in message
    assert isinstance(info.value, ValueError)
    report = inspect_checkpoint(tmp_path / "bad.npz")
    assert not report.ok
    assert report.keys("missing") == ["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    assert report.keys("extra") == ["Transformer/encoderblock_0/Adapter/kernel"]
    assert report.keys("mis-shaped") == ["head/bias"]
    assert re.search(r"head/bias\s+\[6\]\s+\[5\]\s+mis-shaped", str(report))


def test_config_contradicting_tensors_names_the_field(tmp_path, npz_flat):
    np.savez(tmp_path / "vit.npz", **npz_flat)
    config = CONFIGS["token"]
    with pytest.raises(CheckpointError, match=r"num_layers: config has 3, the checkpoint has 2"):
        load_checkpoint(tmp_path / "vit.npz", config=config.replace(num_layers=3))
    with pytest.raises(CheckpointError, match=r"num_heads: config has 2.*has 4"):
        load_checkpoint(tmp_path / "vit.npz", config=config.replace(num_heads=2))
    with pytest.raises(CheckpointError, match=r"patch_size"):
        load_checkpoint(tmp_path / "vit.npz", config=config.replace(patch_size=4))
    report = inspect_checkpoint(tmp_path / "vit.npz", config=config.replace(num_classes=9))
    assert not report.ok and report.contradictions[0].startswith("num_classes")


def test_unknown_format_lists_accepted_ones(tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format '\.h5'") as info:
        load_checkpoint(tmp_path / "weights.h5")
    assert ".npz" in str(info.value) and ".safetensors" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing.npz")


def test_unknown_names_and_not_npz(tmp_path):
    np.savez(tmp_path / "other.npz", **{"conv1/kernel": np.zeros((3, 3, 3, 8), np.float32)})
    with pytest.raises(CheckpointError, match="follow no known ViT naming.*conv1/kernel"):
        load_checkpoint(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises((CheckpointError, OSError)):
        load_checkpoint(tmp_path / "broken.npz")


def test_pickle_refused_without_allow_pickle(tmp_path):
    # Refused before a single byte is unpickled, so the content does not matter.
    for name in ("model.bin", "model.pth"):
        (tmp_path / name).write_bytes(b"\x80\x04not really")
        with pytest.raises(CheckpointError, match="allow_pickle=True") as info:
            load_checkpoint(tmp_path / name)
        assert "arbitrary code" in str(info.value)


@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_big_vision_siglip_image_tower(tmp_path, seed, posemb):
    """SigLIP's .npz: the image tower under params/img/ beside the text tower, MAP pooling, no
    head (a backbone), learned or sin-cos positions (the latter not stored)."""
    config = ViTConfig.from_variant(
        "Test/8",
        image_size=32,
        num_classes=0,
        classifier="map",
        position_embedding="learned" if posemb == "learn" else "sincos2d",
    )
    flat = flat_params(config, seed)
    stored = {"params/img/" + k: v for k, v in to_big_vision(flat, has_cls=False).items()}
    stored["params/txt/Embed_0/embedding"] = np.zeros((10, 8), np.float32)
    stored["params/t"] = np.ones((1,), np.float32)
    np.savez(tmp_path / "siglip.npz", **stored)
    loaded, params = load_checkpoint(tmp_path / "siglip.npz")
    # Nothing in a sin-cos file fixes the image size: 224 is assumed, and said.
    assert loaded.image_size == ((32, 32) if posemb == "learn" else (224, 224))
    loaded = loaded.replace(image_size=32)
    assert loaded == config.replace(gelu_approximate=True, layer_norm_eps=1e-6)
    assert_same_params(params, flat)
    assert_same_outputs(config, tree(flat), params, seed)
    report = inspect_checkpoint(tmp_path / "siglip.npz")
    assert report.ok and sorted(report.keys("ignored")) == [
        "params/t",
        "params/txt/Embed_0/embedding",
    ]
    assert ("sin-cos" in " ".join(report.notes)) == (posemb == "sincos2d")
    # Sin-cos positions are computed for any grid: another size needs no resampling.
    wide = load_checkpoint(tmp_path / "siglip.npz", config=loaded.replace(image_size=(24, 40)))[0]
    assert wide.grid == (3, 5)


def test_report_names_the_family_and_each_keys_action(tmp_path, npz_flat):
    np.savez(
        tmp_path / "bv.npz", **to_big_vision(npz_flat, has_cls=True) | {"extra/w": np.zeros(2)}
    )
    text = str(inspect_checkpoint(tmp_path / "bv.npz"))
    assert "family: big_vision" in text
    assert re.search(r"pos_embedding\s+\[1, 16, 32\]\s+\[1, 16, 32\]\s+ok\s+-> Transformer/"
                     r"posembed_input/pos_embedding \(a zero row prepended", text)  # fmt: skip
    assert re.search(r"extra/w\s+\[2\]\s+-\s+extra\s+unknown to this family", text)


def test_non_square_grid_needs_config(tmp_path, seed):
    config = ViTConfig.from_variant("mu/4", image_size=(8, 12), num_classes=2)  # grid 2x3
    flat = flat_params(config, seed)
    np.savez(tmp_path / "wide.npz", **flat)
    with pytest.raises(CheckpointError, match="6 patches, which is not a square grid"):
        load_checkpoint(tmp_path / "wide.npz")
    loaded_config, params = load_checkpoint(tmp_path / "wide.npz", config=config)
    assert loaded_config == config
    assert_same_params(params, flat)


def test_class_names_travel_with_the_checkpoint(tmp_path, seed):
    """A 1,000-class file without names gets ImageNet-1k's, said in the report; names given
    to a nameless model are kept by the own format; other class counts stay nameless."""
    from jaxvit_interp.data.imagenet import imagenet1k

    config = ViTConfig.from_variant("mu/4", image_size=8, num_classes=1000)
    np.savez(tmp_path / "in1k.npz", **flat_params(config, seed))
    loaded, _ = load_checkpoint(tmp_path / "in1k.npz")
    assert loaded.class_names == imagenet1k().names
    assert "ImageNet-1k" in str(inspect_checkpoint(tmp_path / "in1k.npz"))

    small = CONFIGS["token"]
    np.savez(tmp_path / "five.npz", **flat_params(small, seed))
    assert load_checkpoint(tmp_path / "five.npz")[0].class_names is None
    named = small.replace(class_names=("a", "b", "c", "d", "e"))
    # A caller's config without names takes the file's; one with names keeps its own.
    assert load_checkpoint(tmp_path / "in1k.npz", config=config)[0].class_names == (
        imagenet1k().names
    )
    save_checkpoint(tmp_path / "own", named, tree(flat_params(small, seed)))
    assert load_checkpoint(tmp_path / "own")[0].class_names == ("a", "b", "c", "d", "e")
    with pytest.raises(ValueError, match="class_names gives 2 names for a model with 5"):
        small.replace(class_names=("a", "b"))
