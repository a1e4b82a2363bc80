"""Parity with Hugging Face transformers' ViTForImageClassification (PyTorch) and timm names.

Random-weight PyTorch models are saved the way users get them (``save_pretrained`` to
safetensors, a timm-named state dict, a pickle), loaded with ``load_checkpoint`` and run on
fresh random images: logits and every layer's attention must match PyTorch's eager attention,
with and without a head mask.

Relative error is ``max|ours - theirs| / max|theirs|``: over the logits, and for attention per
layer with ``max|theirs|`` over all layers (a fully masked layer's attention is all zero).
"""

from __future__ import annotations

import secrets
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxvit_interp.model import ViTConfig, run_model  # noqa: E402
from jaxvit_interp.model.checkpoint import CheckpointError, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.compare
TOLERANCE = 1e-4

# Hugging Face configs: depth, heads, width, patch, image size (one non-square), labels,
# channels and qkv bias all vary; exact GELU and epsilon 1e-12 as Hugging Face trains.
HF_CONFIGS = {
    "square_4_heads": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=10,
    ),
    "wide_image_no_qkv_bias": dict(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=80,
        image_size=[16, 24],
        patch_size=4,
        num_labels=7,
        qkv_bias=False,
    ),
    "one_layer_8_heads_grey": dict(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=8,
        intermediate_size=96,
        image_size=48,
        patch_size=16,
        num_labels=3,
        num_channels=1,
    ),
}


@pytest.fixture
def seed() -> int:
    value = secrets.randbits(31)
    print(f"seed={value}")  # shown by pytest when a test fails, to replay it
    return value


def hf_model(seed: int, **overrides):
    """A ViTForImageClassification with every parameter random (biases and norms included)."""
    fields = dict(hidden_act="gelu", layer_norm_eps=1e-12, attn_implementation="eager")
    fields.update(overrides)
    config = transformers.ViTConfig(**fields)
    model = transformers.ViTForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            if "layernorm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def compare(model, config: ViTConfig, params, seed: int):
    """Run both on fresh images, with no head mask and with a random one; assert parity."""
    rng = np.random.default_rng(seed + 1)
    c = model.config
    size = c.image_size if isinstance(c.image_size, (list, tuple)) else (c.image_size,) * 2
    images = rng.normal(size=(3, c.num_channels, *size)).astype(np.float32)  # NCHW for torch
    # Gates in [0, 1) with about a third exactly 0 (pruned heads).
    shape = (c.num_hidden_layers, c.num_attention_heads)
    mask = (rng.uniform(size=shape) * (rng.uniform(size=shape) > 0.3)).astype(np.float32)
    mask[0, 0] = 1.0  # at least one head left, so nothing divides by an all-zero output
    for head_mask in (None, mask):
        with torch.no_grad():
            theirs = model(
                pixel_values=torch.from_numpy(images),
                head_mask=None if head_mask is None else torch.from_numpy(head_mask),
                output_attentions=True,
            )
        with jax.default_matmul_precision("float32"):
            ours = run_model(config, params, images.transpose(0, 2, 3, 1), head_mask=head_mask)
        attention = np.asarray(ours.attention)
        if head_mask is not None:
            # transformers returns probabilities already multiplied by the mask; ours are the
            # softmax itself, with the gate applied to the head's output.
            attention = attention * head_mask[None, :, :, None, None]
        err = relative_error(ours.logits, theirs.logits.numpy())
        assert err < TOLERANCE, f"logits, head_mask={head_mask is not None}: {err:.2e}"
        theirs_attention = np.stack([a.numpy() for a in theirs.attentions], axis=1)
        scale = np.abs(theirs_attention).max()  # whole tensor: a fully masked layer is all 0
        for layer in range(c.num_hidden_layers):
            err = np.abs(attention[:, layer] - theirs_attention[:, layer]).max() / scale
            assert err < TOLERANCE, (
                f"attention layer {layer}, head_mask={head_mask is not None}: {err:.2e}"
            )


def expected_config(model) -> ViTConfig:
    c = model.config
    return ViTConfig(
        image_size=c.image_size,
        patch_size=c.patch_size,
        channels=c.num_channels,
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        mlp_dim=c.intermediate_size,
        num_classes=c.num_labels,
        layer_norm_eps=c.layer_norm_eps,
        gelu_approximate=False,
        qkv_bias=c.qkv_bias,
        position_interpolation="bicubic",
    )


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_hugging_face_folder_and_single_file(tmp_path, seed, name):
    model = hf_model(seed, **HF_CONFIGS[name])
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert (tmp_path / "hf" / "model.safetensors").exists()

    config, params = load_checkpoint(tmp_path / "hf")
    assert config == expected_config(model)
    compare(model, config, params, seed)

    # The weights file alone, nothing beside it: the caller's config supplies the heads.
    (tmp_path / "alone").mkdir()
    shutil.copy(tmp_path / "hf" / "model.safetensors", tmp_path / "alone" / "weights.safetensors")
    config2, params2 = load_checkpoint(
        tmp_path / "alone" / "weights.safetensors", config=expected_config(model)
    )
    assert config2 == config
    compare(model, config2, params2, seed + 2)


def test_hugging_face_preprocessor_config(tmp_path, seed):
    model = hf_model(seed, **HF_CONFIGS["square_4_heads"])
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor = transformers.ViTImageProcessor(
        size={"height": 40, "width": 40},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(tmp_path)
    config, _ = load_checkpoint(tmp_path)
    p = config.preprocessing
    assert p.mean == pytest.approx((0.485, 0.456, 0.406)) and p.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    assert p.resize == (40, 40) and p.resample == "bicubic" and not p.crop
    # A resize straight to the model's own size is recorded as "model size".
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    assert load_checkpoint(tmp_path)[0].preprocessing.resize is None


def hf_to_timm(state: dict) -> dict:
    """Hugging Face ViT names -> timm names, fusing query/key/value as timm stores them."""
    out = {
        "cls_token": state["vit.embeddings.cls_token"],
        "pos_embed": state["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["vit.layernorm.weight"],
        "norm.bias": state["vit.layernorm.bias"],
        "head.weight": state["classifier.weight"],
        "head.bias": state["classifier.bias"],
    }
    layers = {int(k.split(".")[3]) for k in state if k.startswith("vit.encoder.layer.")}
    for i in range(len(layers)):
        hf, timm = f"vit.encoder.layer.{i}.", f"blocks.{i}."
        att = hf + "attention.attention."
        for kind in ("weight", "bias"):
            parts = [state.get(f"{att}{n}.{kind}") for n in ("query", "key", "value")]
            if parts[0] is not None:
                out[f"{timm}attn.qkv.{kind}"] = torch.cat(parts, dim=0)
        for ours, theirs in [
            ("norm1", "layernorm_before"),
            ("attn.proj", "attention.output.dense"),
            ("norm2", "layernorm_after"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ]:
            for kind in ("weight", "bias"):
                out[f"{timm}{ours}.{kind}"] = state[f"{hf}{theirs}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def test_timm_names_with_config(tmp_path, seed):
    from safetensors.torch import save_file

    model = hf_model(seed, **HF_CONFIGS["wide_image_no_qkv_bias"])
    save_file(hf_to_timm(model.state_dict()), tmp_path / "timm.safetensors")
    config, params = load_checkpoint(tmp_path / "timm.safetensors", config=expected_config(model))
    compare(model, config, params, seed)


def test_timm_names_without_config_use_timm_defaults(tmp_path, seed):
    from safetensors.torch import save_file

    # Width 128 with 2 heads follows the head-width-64 rule; epsilon 1e-6 and exact GELU are
    # timm's, so the inferred config must reproduce this model exactly.
    model = hf_model(
        seed,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=160,
        image_size=24,
        patch_size=8,
        num_labels=4,
        layer_norm_eps=1e-6,
    )
    save_file(hf_to_timm(model.state_dict()), tmp_path / "timm.safetensors")
    with pytest.warns(UserWarning, match="num_heads=2 assumed"):
        config, params = load_checkpoint(tmp_path / "timm.safetensors")
    assert config.num_heads == 2 and config.layer_norm_eps == 1e-6 and not config.gelu_approximate
    assert config.preprocessing.resample == "bicubic" and config.preprocessing.crop
    compare(model, config, params, seed)


def test_pickled_state_dict(tmp_path, seed):
    model = hf_model(seed, **HF_CONFIGS["square_4_heads"])
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_checkpoint(tmp_path)
    config, params = load_checkpoint(tmp_path, allow_pickle=True)
    compare(model, config, params, seed)
    # A timm training checkpoint wraps the state dict and names it timm's way.
    torch.save({"model": hf_to_timm(model.state_dict()), "epoch": 3}, tmp_path / "deit.pth")
    config2, params2 = load_checkpoint(tmp_path / "deit.pth", config=config, allow_pickle=True)
    compare(model, config2, params2, seed + 2)


def test_fc_norm_is_mean_pooling_with_the_norm_after_it(tmp_path, seed):
    """timm's global_pool="avg" models keep the final norm as fc_norm (their parity with timm
    is in test_parity_families)."""
    from safetensors.torch import save_file

    model = hf_model(seed, **HF_CONFIGS["square_4_heads"])
    state = hf_to_timm(model.state_dict())
    state["fc_norm.weight"], state["fc_norm.bias"] = (
        state.pop("norm.weight"),
        state.pop("norm.bias"),
    )
    save_file(state, tmp_path / "gap.safetensors")
    wanted = expected_config(model).replace(classifier="gap", class_token=True, fc_norm=True)
    config, params = load_checkpoint(tmp_path / "gap.safetensors", config=wanted)
    assert config.classifier == "gap" and config.fc_norm and config.has_cls_token
    assert "fc_norm" in params and "encoder_norm" not in params["Transformer"]


def test_hugging_face_heads_contradiction(tmp_path, seed):
    model = hf_model(seed, **HF_CONFIGS["square_4_heads"])
    model.save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(CheckpointError, match=r"num_heads: config has 8, .*config.json"):
        load_checkpoint(tmp_path, config=expected_config(model).replace(num_heads=8))


def test_class_names_from_hugging_face_id2label_and_timm_label_names(tmp_path, seed):
    """id2label names the classes (transformers' placeholder LABEL_i does not); a timm hub
    config's label_names too, with ImageNet synset ids turned into ImageNet's names."""
    import json

    from safetensors.torch import save_file

    from jaxvit_interp.data.imagenet import imagenet1k

    names = {0: "cat", 1: "dog", 2: "owl"}
    model = hf_model(seed, **{**HF_CONFIGS["one_layer_8_heads_grey"], "id2label": names})
    model.save_pretrained(tmp_path / "named", safe_serialization=True)
    assert load_checkpoint(tmp_path / "named")[0].class_names == ("cat", "dog", "owl")
    plain = hf_model(seed, **HF_CONFIGS["one_layer_8_heads_grey"])
    plain.save_pretrained(tmp_path / "plain", safe_serialization=True)
    assert load_checkpoint(tmp_path / "plain")[0].class_names is None

    timm = tmp_path / "timm"
    timm.mkdir()
    model = hf_model(seed, **{**HF_CONFIGS["square_4_heads"], "num_labels": 1000})
    save_file(hf_to_timm(model.state_dict()), timm / "model.safetensors")
    synsets = [imagenet1k().aliases[i][0] for i in range(1000)]
    hub = {"architecture": "vit", "pretrained_cfg": {"input_size": [3, 32, 32]},
           "model_args": {"num_heads": 4}, "label_names": synsets}  # fmt: skip
    (timm / "config.json").write_text(json.dumps(hub))
    assert load_checkpoint(timm / "model.safetensors")[0].class_names == imagenet1k().names
    hub["label_names"] = [f"kind {i}" for i in range(1000)]
    (timm / "config.json").write_text(json.dumps(hub))
    assert load_checkpoint(timm / "model.safetensors")[0].class_names[7] == "kind 7"
