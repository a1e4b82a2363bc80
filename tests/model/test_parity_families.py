"""Parity with the libraries that define each ViT family: transformers, timm and OpenCLIP.

Every reference model is built from a small config with random weights (no downloads), saved the
way users get it, loaded with ``load_checkpoint`` and run on fresh random images twice: at the
config's own square size, and at a non-square size different from it, where each library
interpolates its position table its own way.  The logits (or, for backbones, the pooled output)
and every layer's attention must match to 1e-4 relative error, ``max|ours - theirs| /
max|theirs|``; the largest errors measured are printed (``pytest -s``).
"""

from __future__ import annotations

import functools
import json
import re
import secrets

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

from safetensors.torch import save_file  # noqa: E402

from jaxvit_interp.model import ViTConfig, init_params, run_model  # noqa: E402
from jaxvit_interp.model.checkpoint import (  # noqa: E402
    CheckpointError,
    inspect_checkpoint,
    load_checkpoint,
)

pytestmark = pytest.mark.compare
TOLERANCE = 1e-4
NATIVE = (32, 32)  # every reference config: 32 px, patch 8, a 4x4 grid
OTHER = (24, 40)  # a 3x5 grid: non-square and interpolated
SMALL_HF = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    attn_implementation="eager",
)


@pytest.fixture
def seed() -> int:
    value = secrets.randbits(31)
    print(f"seed={value}")
    return value


def randomize(model, seed: int):
    """Every parameter random; norms' and layer scales' weights around 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            scale_like = any(s in name for s in ("norm", "lambda1", "gamma", "ls1", "ls2"))
            if scale_like and not name.endswith("bias"):
                p.add_(1.0)
    return model.eval()


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def images_at(size, seed: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, *size)).astype(np.float32)


def compare(name, theirs, path, seed, head_mask_ok=False, pooled=False, sizes=(NATIVE, OTHER)):
    """Load ``path`` at each size, run both models and assert parity; returns the loaded config.

    ``theirs(images NCHW, head_mask or None) -> (output [B, ...], [attention [B, H, N, N] per
    layer])``; ``pooled`` compares our ``pre_logits`` instead of the logits.  With
    ``head_mask_ok`` the second size runs with a random head mask (zeros included), so each size
    compiles one program.
    """
    config, _ = load_checkpoint(path)
    worst = {"output": 0.0, "attention": 0.0}
    for index, size in enumerate(sizes):
        loaded, params = load_checkpoint(path, config=config.replace(image_size=size))
        images = images_at(size, seed + size[1])
        mask = None
        if head_mask_ok and index == 1:
            rng = np.random.default_rng(seed)
            shape = (loaded.num_layers, loaded.num_heads)
            mask = (rng.uniform(size=shape) * (rng.uniform(size=shape) > 0.3)).astype(np.float32)
            mask[:, 0] = 1.0
        with torch.no_grad():
            out, attentions = theirs(
                torch.from_numpy(images), None if mask is None else torch.from_numpy(mask)
            )
        with jax.default_matmul_precision("float32"):
            ours = run_model(loaded, params, images.transpose(0, 2, 3, 1), head_mask=mask)
        mine = ours.pre_logits if pooled else ours.logits
        err = relative_error(mine, out.numpy())
        assert err < TOLERANCE, f"{name} output at {size}, mask {mask is not None}: {err:.2e}"
        worst["output"] = max(worst["output"], err)
        attention = np.asarray(ours.attention)
        if mask is not None:
            # The reference multiplies the probabilities by the mask; ours gate the output.
            attention = attention * mask[None, :, :, None, None]
        theirs_attention = np.stack([a.numpy() for a in attentions], axis=1)
        assert attention.shape == theirs_attention.shape, (
            attention.shape,
            theirs_attention.shape,
        )
        scale = np.abs(theirs_attention).max()
        for layer in range(attention.shape[1]):
            err = np.abs(attention[:, layer] - theirs_attention[:, layer]).max() / scale
            assert err < TOLERANCE, f"{name} attention {layer} at {size}: {err:.2e}"
            worst["attention"] = max(worst["attention"], float(err))
    print(
        f"{name}: max relative error {worst['output']:.1e} output, {worst['attention']:.1e} attention"
    )
    return loaded


# ---- Hugging Face ------------------------------------------------------------------------------


def hf_runner(model, output: str, interpolate: bool = True):
    def run(images, head_mask):
        kwargs = dict(pixel_values=images, output_attentions=True)
        if interpolate:
            kwargs["interpolate_pos_encoding"] = True
        if head_mask is not None:
            kwargs["head_mask"] = head_mask
        out = model(**kwargs)
        return getattr(out, output), out.attentions

    return run


def test_hf_vit_interpolated(tmp_path, seed):
    config = transformers.ViTConfig(**SMALL_HF, intermediate_size=64, num_labels=5)
    model = randomize(transformers.ViTForImageClassification(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    compare("HF ViT", hf_runner(model, "logits"), tmp_path, seed, head_mask_ok=True)


def test_hf_vit_model_is_a_backbone(tmp_path, seed):
    """ViTModel: no prefix, no classifier; its pooler (dense + tanh) is ignored, and the pooled
    vector is the normalised CLS token."""
    config = transformers.ViTConfig(**SMALL_HF, intermediate_size=64)
    model = randomize(transformers.ViTModel(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    base = hf_runner(model, "last_hidden_state")

    def run(images, head_mask):
        hidden, attentions = base(images, head_mask)
        return hidden[:, 0], attentions

    loaded = compare("HF ViTModel", run, tmp_path, seed, head_mask_ok=True, pooled=True)
    assert loaded.num_classes == 0
    assert inspect_checkpoint(tmp_path).keys("ignored") == [
        "pooler.dense.bias",
        "pooler.dense.weight",
    ]


@pytest.mark.parametrize("teacher", [True, False])
def test_hf_deit(tmp_path, seed, teacher):
    config = transformers.DeiTConfig(**SMALL_HF, intermediate_size=64, num_labels=5)
    cls = (
        transformers.DeiTForImageClassificationWithTeacher
        if teacher
        else transformers.DeiTForImageClassification
    )
    model = randomize(cls(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = compare(
        f"HF DeiT (teacher={teacher})", hf_runner(model, "logits"), tmp_path, seed, True
    )
    assert loaded.distillation_token and loaded.distillation_head == teacher
    assert loaded.position_interpolation == "bicubic" and loaded.num_tokens == 2 + 15


@pytest.mark.parametrize("swiglu", [False, True])
def test_hf_dinov2(tmp_path, seed, swiglu):
    config = transformers.Dinov2Config(
        **SMALL_HF, mlp_ratio=3, use_swiglu_ffn=swiglu, layerscale_value=0.5
    )
    model = randomize(transformers.Dinov2Model(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    run = hf_runner(model, "pooler_output", interpolate=False)
    loaded = compare(f"HF DINOv2 (swiglu={swiglu})", run, tmp_path, seed, True, pooled=True)
    assert loaded.layer_scale and loaded.num_classes == 0
    assert loaded.mlp_activation == ("swiglu" if swiglu else "gelu")
    assert inspect_checkpoint(tmp_path).keys("ignored") == ["embeddings.mask_token"]


def test_hf_dinov2_with_registers(tmp_path, seed):
    config = transformers.Dinov2WithRegistersConfig(**SMALL_HF, mlp_ratio=2, num_register_tokens=4)
    model = randomize(transformers.Dinov2WithRegistersModel(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    run = hf_runner(model, "pooler_output", interpolate=False)
    loaded = compare("HF DINOv2 with registers", run, tmp_path, seed, True, pooled=True)
    assert loaded.num_register_tokens == 4 and loaded.position_prefix_tokens == 1
    assert loaded.position_interpolation == "bicubic_antialias"


def test_hf_dinov2_takes_its_processors_image_size(tmp_path, seed):
    config = transformers.Dinov2Config(**{**SMALL_HF, "image_size": 64}, mlp_ratio=2)
    randomize(transformers.Dinov2Model(config), seed).save_pretrained(tmp_path)
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    processor.save_pretrained(tmp_path)
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.image_size == (32, 32) and loaded.preprocessing.resize == 40
    assert any("crop_size" in n for n in inspect_checkpoint(tmp_path).notes)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_hf_dinov2_saved_alone_loads_at_its_config_size_or_at_image_size(tmp_path, seed, size):
    config = transformers.Dinov2WithRegistersConfig(
        **{**SMALL_HF, "image_size": 64}, mlp_ratio=2, num_register_tokens=4
    )
    model = randomize(transformers.Dinov2WithRegistersModel(config), seed)
    model.save_pretrained(tmp_path)  # no preprocessor_config.json: the table's 64 px
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.image_size == (64, 64)
    assert any("no preprocessor_config.json" in n for n in inspect_checkpoint(tmp_path).notes)
    # At another size: the table resampled as transformers does it for that input, and
    # DINOv2's preprocessing for that size (shorter side to 256/224 of it, centre crop).
    small, params = load_checkpoint(tmp_path, image_size=size)
    assert small.image_size == size and small.preprocessing.resize == round(min(size) * 256 / 224)
    images = images_at(size, seed)
    with torch.no_grad():
        theirs = model(pixel_values=torch.from_numpy(images)).pooler_output.numpy()
    with jax.default_matmul_precision("float32"):
        ours = run_model(small, params, images.transpose(0, 2, 3, 1)).pre_logits
    assert relative_error(ours, theirs) < TOLERANCE
    with pytest.raises(CheckpointError, match="either in config= or as image_size="):
        load_checkpoint(tmp_path, config=loaded, image_size=size)


@pytest.mark.parametrize("projection", [True, False])
def test_hf_clip_vision(tmp_path, seed, projection):
    config = transformers.CLIPVisionConfig(**SMALL_HF, intermediate_size=64, projection_dim=12)
    cls = transformers.CLIPVisionModelWithProjection if projection else transformers.CLIPVisionModel
    model = randomize(cls(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    output = "image_embeds" if projection else "pooler_output"
    loaded = compare(
        f"HF CLIP (projection={projection})", hf_runner(model, output), tmp_path, seed, pooled=True
    )
    assert loaded.mlp_activation == "quick_gelu" and loaded.pre_norm and not loaded.patch_bias
    assert loaded.projection_dim == (12 if projection else None)


def test_hf_clip_two_towers_ignores_the_text_tower(tmp_path, seed):
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=50, max_position_embeddings=8)  # fmt: skip
    vision = {k: v for k, v in SMALL_HF.items() if k != "attn_implementation"}
    config = transformers.CLIPConfig(
        text_config=text, vision_config={**vision, "intermediate_size": 64}, projection_dim=12
    )
    model = randomize(transformers.CLIPModel(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    report = inspect_checkpoint(tmp_path)
    assert report.ok and any(k.startswith("text_model.") for k in report.keys("ignored"))
    loaded, params = load_checkpoint(tmp_path)
    images = images_at(NATIVE, seed)
    with torch.no_grad():
        theirs = model.get_image_features(pixel_values=torch.from_numpy(images))
    ours = run_model(loaded, params, images.transpose(0, 2, 3, 1)).pre_logits
    assert relative_error(ours, theirs.numpy()) < TOLERANCE


def test_hf_siglip_vision(tmp_path, seed):
    config = transformers.SiglipVisionConfig(**SMALL_HF, intermediate_size=64)
    model = randomize(transformers.SiglipVisionModel(config), seed)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = compare("HF SigLIP", hf_runner(model, "pooler_output"), tmp_path, seed, pooled=True)
    assert loaded.classifier == "map" and not loaded.has_cls_token and loaded.num_classes == 0
    # The attention-pooling head's own attention, against torch's MultiheadAttention weights.
    _, params = load_checkpoint(tmp_path)
    images = images_at(NATIVE, seed)
    with torch.no_grad():
        hidden = model(pixel_values=torch.from_numpy(images)).last_hidden_state
        head = model.vision_model.head
        probe = head.probe.repeat(len(images), 1, 1)
        _, weights = head.attention(probe, hidden, hidden, average_attn_weights=False)
    ours = run_model(loaded.replace(image_size=NATIVE), params, images.transpose(0, 2, 3, 1))
    assert relative_error(ours.pool_attention, weights.numpy()) < TOLERANCE


# ---- timm -------------------------------------------------------------------------------------

TIMM_SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


def timm_runner(model, pooled: bool):
    captured = []
    blocks = list(model.blocks)
    for block in blocks:
        block.attn.fused_attn = False  # the explicit path, whose probabilities a hook can see
        block.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    if getattr(model, "attn_pool", None) is not None:
        model.attn_pool.fused_attn = False

    def run(images, head_mask):
        assert head_mask is None
        captured.clear()
        if pooled:
            out = model.forward_head(model.forward_features(images), pre_logits=True)
        else:
            out = model(images)
        return out, list(captured)

    return run


def save_timm(model, folder, architecture):
    folder.mkdir(exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    hub = {"architecture": architecture, "model_args": {"num_heads": TIMM_SMALL["num_heads"]},
           "pretrained_cfg": {"input_size": [3, *NATIVE]}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(hub))
    return folder / "model.safetensors"


TIMM_MODELS = {
    "vit": ("vit_base_patch16_224", dict(num_classes=5), {}),
    "mae_avg_fc_norm": ("vit_base_patch16_224", dict(num_classes=5, global_pool="avg"), dict(fc_norm=True, classifier="gap")),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(num_classes=5), dict(distillation_head=True)),
    "dinov2": ("vit_small_patch14_dinov2", dict(num_classes=0), dict(layer_scale=True)),
    "dinov2_swiglu": ("vit_giant_patch14_dinov2", dict(num_classes=0), dict(mlp_activation="swiglu")),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(num_classes=0), dict(num_register_tokens=4, position_prefix_tokens=0)),
    "clip": ("vit_base_patch16_clip_224", dict(num_classes=7), dict(pre_norm=True, layer_norm_eps=1e-5, patch_bias=False)),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(num_classes=0), dict(mlp_activation="quick_gelu")),
    "siglip": ("vit_base_patch16_siglip_224", dict(num_classes=0), dict(classifier="map")),
}  # fmt: skip


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm(tmp_path, seed, name):
    architecture, kwargs, expected = TIMM_MODELS[name]
    model = timm.create_model(
        architecture, pretrained=False, dynamic_img_size=True, **TIMM_SMALL, **kwargs
    )
    randomize(model, seed)
    path = save_timm(model, tmp_path / "timm", architecture)
    backbone = kwargs.get("num_classes") == 0
    loaded = compare(
        f"timm {architecture}", timm_runner(model, backbone), path, seed, pooled=backbone
    )
    for field, value in expected.items():
        assert getattr(loaded, field) == value, field
    assert loaded.position_interpolation == "bicubic_antialias"


# A hub folder as timm writes it (timm.models._hub.save_for_hf): its config.json names the
# architecture and holds only the model_args that differ from it, so never num_heads. Full widths
# (the name's), one block and small images keep them small.
TIMM_HUB = {
    "vit_small_patch16_224": dict(num_classes=5),
    "deit_tiny_distilled_patch16_224": dict(num_classes=5),
    "deit3_medium_patch16_224": dict(num_classes=4),
    "vit_small_patch14_reg4_dinov2": dict(num_classes=0),
    "vit_little_patch16_reg4_gap_256": dict(num_classes=3),
    "vit_base_patch16_gap_224": dict(num_classes=3),  # 16 heads, not base's 12
    "vit_base_patch16_siglip_224": dict(num_classes=0),
}


@pytest.mark.parametrize("architecture", TIMM_HUB)
def test_timm_hub_folder_gets_its_heads_from_the_architecture_name(tmp_path, seed, architecture):
    import warnings

    from timm.models._hub import save_for_hf

    patch = 14 if "patch14" in architecture else 16
    model = timm.create_model(
        architecture, pretrained=False, depth=1, img_size=2 * patch, dynamic_img_size=True,
        **TIMM_HUB[architecture],
    )  # fmt: skip
    randomize(model, seed)
    save_for_hf(model, tmp_path / "hub", safe_serialization=True)
    hub = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert hub["architecture"] == architecture and "num_heads" not in hub.get("model_args", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config, _ = load_checkpoint(tmp_path / "hub" / "model.safetensors")
        report = inspect_checkpoint(tmp_path / "hub")
    assert config.num_heads == model.blocks[0].attn.num_heads
    assert not [w for w in caught if "num_heads" in str(w.message)], caught
    assert any(f"from config.json architecture '{architecture}'" in n for n in report.notes)
    # The heads are right where it matters: the outputs and every head's attention are timm's.
    backbone = not model.num_classes
    sizes = ((2 * patch, 2 * patch), (2 * patch, 3 * patch))
    compare(architecture, timm_runner(model, backbone), tmp_path / "hub", seed,
            pooled=backbone, sizes=sizes)  # fmt: skip


# The other sizes timm names (built on the meta device: shapes only, nothing allocated).
TIMM_NAMED_SIZES = [
    "vit_tiny_patch16_224", "vit_xsmall_patch16_clip_224", "vit_wee_patch16_reg1_gap_256",
    "vit_betwixt_patch16_reg4_gap_256", "vit_base_patch16_plus_240", "vit_so150m2_patch16_reg1_gap_256",
    "vit_so150m_patch16_reg4_gap_256", "vit_large_patch14_clip_224", "eva_large_patch14_196",
    "vit_so400m_patch14_siglip_224", "deit3_huge_patch14_224", "vit_giant_patch14_clip_224",
    "vit_giant_patch14_reg4_dinov2", "vit_giantopt_patch16_siglip_256", "vit_gigantic_patch14_clip_224",
]  # fmt: skip


def test_timm_size_words_give_timm_heads_and_other_widths_give_none():
    from jaxvit_interp.model.checkpoint.timm_names import heads_from_architecture

    for architecture in TIMM_NAMED_SIZES:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False, depth=1)
        width, mlp = model.embed_dim, model.blocks[0].mlp.fc2.in_features
        heads = model.blocks[0].attn.num_heads
        assert heads_from_architecture(f"timm/{architecture}.tag", width, mlp)[0] == heads
        # Built with another width or MLP ratio, the name says nothing.
        assert heads_from_architecture(architecture, width + 64, mlp) is None
        assert heads_from_architecture(architecture, width, 2 * mlp) is None


def test_a_remaining_guess_is_one_clean_line_on_the_command_line(tmp_path, seed, capsys):
    import warnings

    from jaxvit_interp.cli import main

    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1, img_size=32)
    path = tmp_path / "weights.safetensors"  # no config.json beside it: the heads are a guess
    save_file({k: v.contiguous() for k, v in randomize(model, seed).state_dict().items()}, path)
    args = ["analyze", "--checkpoint", str(path), "--images", str(tmp_path / "none"), "--out"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, str(tmp_path / "run")]) == 2  # the missing images, after loading
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "num_heads" in line]
    assert len(lines) == 1 and lines[0].startswith("jaxvit-interp: warning: "), err
    assert "num_heads=6 assumed" in lines[0] and path.name in lines[0]
    assert not [w for w in caught if "num_heads" in str(w.message)], caught


# ---- OpenCLIP ---------------------------------------------------------------------------------


def openclip_model(image_size, ls_init_value):
    vision = open_clip.model.CLIPVisionCfg(
        layers=2, width=32, head_width=8, mlp_ratio=2, patch_size=8, image_size=image_size,
        ls_init_value=ls_init_value,
    )  # fmt: skip
    text = open_clip.model.CLIPTextCfg(context_length=8, vocab_size=50, width=16, heads=2, layers=1)
    return open_clip.model.CLIP(embed_dim=12, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def openclip_runner(model):
    captured, busy = [], []

    def hook(module, args, kwargs, output):
        if busy:
            return
        busy.append(1)
        q, k, v = args[:3]
        _, weights = module(q, k, v, need_weights=True, average_attn_weights=False)
        captured.append(weights)
        busy.clear()

    for block in model.visual.transformer.resblocks:
        block.attn.register_forward_hook(hook, with_kwargs=True)

    def run(images, head_mask):
        assert head_mask is None
        captured.clear()
        return model.encode_image(images), list(captured)

    return run


@pytest.mark.parametrize("ls_init_value", [None, 0.5])
def test_openclip_visual_tower(tmp_path, seed, ls_init_value):
    model = randomize(openclip_model(NATIVE, ls_init_value), seed)
    state = model.state_dict()
    save_file(
        {k: v.contiguous() for k, v in state.items()}, tmp_path / "open_clip_model.safetensors"
    )
    vision = dict(layers=2, width=32, head_width=8, patch_size=8, image_size=32)
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"embed_dim": 12, "quick_gelu": True, "vision_cfg": vision}})
    )
    path = tmp_path / "open_clip_model.safetensors"
    name = f"OpenCLIP (layer scale {ls_init_value})"
    loaded = compare(name, openclip_runner(model), path, seed, pooled=True, sizes=(NATIVE,))
    assert loaded.mlp_activation == "quick_gelu" and loaded.projection_dim == 12
    assert loaded.layer_scale == (ls_init_value is not None)
    # At another size: OpenCLIP resizes the table when loading into a model built for it.
    other = openclip_model(OTHER, ls_init_value).eval()
    resized = dict(state)
    open_clip.model.resize_pos_embed(resized, other)
    other.load_state_dict(resized)
    compare(name + " resized", openclip_runner(other), path, seed, pooled=True, sizes=(OTHER,))


def test_openclip_bare_visual_state_dict(tmp_path, seed):
    model = randomize(openclip_model(NATIVE, None), seed)
    visual = {k: v.contiguous() for k, v in model.visual.state_dict().items()}
    save_file(visual, tmp_path / "visual.safetensors")
    config = ViTConfig(image_size=NATIVE, patch_size=8, hidden_size=32, num_layers=2, num_heads=4,
                       mlp_dim=64, num_classes=0, pre_norm=True, patch_bias=False, projection_dim=12,
                       layer_norm_eps=1e-5, gelu_approximate=False, mlp_activation="quick_gelu",
                       position_interpolation="bicubic_antialias")  # fmt: skip
    loaded, params = load_checkpoint(tmp_path / "visual.safetensors", config=config)
    images = images_at(NATIVE, seed)
    with torch.no_grad():
        theirs = model.encode_image(torch.from_numpy(images)).numpy()
    ours = run_model(loaded, params, images.transpose(0, 2, 3, 1)).pre_logits
    assert relative_error(ours, theirs) < TOLERANCE


# ---- parameter counts -------------------------------------------------------------------------


def our_count(config: ViTConfig) -> int:
    shapes = jax.eval_shape(functools.partial(init_params, config))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def torch_count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


S16 = dict(patch_size=16, hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536)
S14 = dict(patch_size=14, hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536)
B16 = dict(patch_size=16, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072)
COUNTS = {
    "DeiT-S/16 distilled": (
        ViTConfig(**S16, distillation_token=True, distillation_head=True),
        lambda: timm.create_model("deit_small_distilled_patch16_224", pretrained=False),
        22_436_432,
    ),
    "DINOv2-S/14": (
        ViTConfig(**S14, image_size=518, num_classes=0, layer_scale=True),
        lambda: timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0),
        22_056_192,
    ),
    "DINOv2-S/14 reg4": (
        ViTConfig(
            **S14,
            image_size=518,
            num_classes=0,
            layer_scale=True,
            num_register_tokens=4,
            position_prefix_tokens=0,
        ),  # fmt: skip
        lambda: timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0),
        22_057_344,
    ),
    "CLIP ViT-B/16 vision": (
        ViTConfig(**B16, num_classes=0, pre_norm=True, patch_bias=False, projection_dim=512),
        lambda: transformers.CLIPVisionModelWithProjection(
            transformers.CLIPVisionConfig(patch_size=16, projection_dim=512)
        ),
        86_192_640,
    ),
    "SigLIP B/16": (
        ViTConfig(**B16, num_classes=0, classifier="map"),
        lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig()),
        92_884_224,
    ),
}


@pytest.mark.parametrize("name", COUNTS)
def test_parameter_counts(name):
    config, build, pinned = COUNTS[name]
    assert our_count(config) == torch_count(build) == pinned


# ---- refused families -------------------------------------------------------------------------


def test_swin_and_beit_are_refused_by_name(tmp_path):
    swin = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                   num_heads=[1, 2], window_size=2, num_labels=3)  # fmt: skip
    transformers.SwinForImageClassification(swin).save_pretrained(tmp_path / "swin")
    with pytest.raises(CheckpointError, match=r"model_type 'swin'.*windowed attention"):
        load_checkpoint(tmp_path / "swin")
    (tmp_path / "swin" / "config.json").unlink()  # the keys alone
    with pytest.raises(CheckpointError, match=r"Swin Transformer.*relative position bias"):
        load_checkpoint(tmp_path / "swin")
    beit = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32,
                             embed_dim=32, depth=1, num_heads=4, num_classes=3)  # fmt: skip
    (tmp_path / "beit").mkdir()
    save_file({k: v.contiguous() for k, v in beit.state_dict().items()},
              tmp_path / "beit" / "model.safetensors")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"BEiT-style.*relative position bias"):
        load_checkpoint(tmp_path / "beit" / "model.safetensors")


# ---- the command line -------------------------------------------------------------------------


def test_cli_inspect_names_the_family_and_each_keys_action(tmp_path, capsys):
    from jaxvit_interp.cli import main

    architecture = "vit_small_patch14_reg4_dinov2"
    model = timm.create_model(architecture, pretrained=False, num_classes=0, **TIMM_SMALL)
    path = save_timm(model, tmp_path, architecture)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "family: timm VisionTransformer, DINOv2-style, 4 register tokens, layer scale, "
        "backbone without a classifier (with config.json)" in out
    )
    assert re.search(
        r"blocks\.0\.attn\.qkv\.weight\s+\[96, 32\]\s+\[96, 32\]\s+ok\s+-> Transformer/"
        r"encoderblock_0/MultiHeadDotProductAttention_1/query/kernel, .*/key/kernel, .*/value/"
        r"kernel \(fused projections split, transposed, split into heads\)",
        out,
    )
    assert re.search(r"reg_token\s+\[1, 4, 32\]\s+\[1, 4, 32\]\s+ok\s+-> registers \(copied\)", out)
    assert re.search(r"blocks\.1\.ls2\.gamma\s+\[32\]\s+\[32\]\s+ok\s+-> .*LayerScale_3/scale", out)


def test_cli_refuses_swin_in_one_line(tmp_path, capsys):
    from jaxvit_interp.cli import main

    swin = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                   num_heads=[1, 2], window_size=2, num_labels=3)  # fmt: skip
    transformers.SwinForImageClassification(swin).save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("jaxvit-interp: error: Hugging Face model_type 'swin' is not")
    assert "windowed attention" in err[0] and len(err) == 1
