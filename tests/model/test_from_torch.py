"""``from_torch``: a live PyTorch model loads exactly as the file its library saves.

Every listed family is built small with random weights, saved the way users get it, and loaded
both ways: configs equal and every array equal. The file importer's parity with each library
(outputs and every attention, at two image sizes) is proved in test_parity_families, so that
equality carries it over; a few families' outputs are checked against the live module here too,
and so are what only a live module has: weights changed in place, a head count that no file
name says, another image size, bfloat16 weights, wrappers, and modules that are not a ViT.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

from flax import traverse_util  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_checkpoint import assert_same_params  # noqa: E402
from test_parity_families import (  # noqa: E402
    NATIVE,
    OTHER,
    SMALL_HF,
    TIMM_SMALL,
    TOLERANCE,
    images_at,
    openclip_model,
    randomize,
    relative_error,
)

import jaxvit_interp as jvi  # noqa: E402
from jaxvit_interp.model import run_model  # noqa: E402
from jaxvit_interp.model.checkpoint import CheckpointError, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.compare


@pytest.fixture
def seed(rng) -> int:
    return int(rng.integers(2**31))


def hf(cls, config_cls, **fields):
    def build():
        return getattr(transformers, cls)(getattr(transformers, config_cls)(**SMALL_HF, **fields))

    return build


def hf_clip_two_towers():
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=50, max_position_embeddings=8)  # fmt: skip
    vision = {k: v for k, v in SMALL_HF.items() if k != "attn_implementation"}
    config = transformers.CLIPConfig(
        text_config=text, vision_config={**vision, "intermediate_size": 64}, projection_dim=12
    )
    return transformers.CLIPModel(config)


def timm_vit(architecture, **kwargs):
    def build():
        return timm.create_model(
            architecture, pretrained=False, dynamic_img_size=True, **{**TIMM_SMALL, **kwargs}
        )

    return build


def save_hf(model, folder):
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def save_timm_hub(model, folder):
    from timm.models._hub import save_for_hf

    save_for_hf(model, folder, safe_serialization=True)
    return folder


def save_openclip(model, folder):
    """The whole CLIP model's state dict, and an open_clip_config.json with the model config
    OpenCLIP's hub folders hold (as test_parity_families writes it)."""
    import json

    folder.mkdir()
    whole = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(whole, folder / "open_clip_model.safetensors")
    tower = model.visual
    vision = dict(layers=2, width=32, head_width=8, patch_size=8, image_size=list(NATIVE))
    config = {"model_cfg": {"embed_dim": tower.output_dim, "quick_gelu": True,
                            "vision_cfg": vision}}  # fmt: skip
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder / "open_clip_model.safetensors"


def hf_output(field):
    return lambda model, images: getattr(model(pixel_values=images), field)


# name: (build the module, save it as users get it, what the module outputs: (module, images) ->
# the array our logits, or our pooled features for a backbone, must equal). Each forward pass
# compiles a program, seconds on the CPU: one per lineage here (the outputs of HF ViT and timm's
# CLS, mean-pooling and register models are checked by the tests below it), None for the rest,
# whose equality with the file importer carries test_parity_families' parity over.
FAMILIES = {
    "hf_vit": (hf("ViTForImageClassification", "ViTConfig", intermediate_size=64, num_labels=5),
               save_hf, None),
    "hf_deit_teacher": (hf("DeiTForImageClassificationWithTeacher", "DeiTConfig",
                           intermediate_size=64, num_labels=5), save_hf, hf_output("logits")),
    "hf_dinov2": (hf("Dinov2Model", "Dinov2Config", mlp_ratio=2), save_hf, None),
    "hf_dinov2_registers": (hf("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                               mlp_ratio=2, num_register_tokens=3), save_hf,
                            hf_output("pooler_output")),
    "hf_clip_vision": (hf("CLIPVisionModelWithProjection", "CLIPVisionConfig",
                          intermediate_size=64, projection_dim=12), save_hf, None),
    "hf_clip_two_towers": (hf_clip_two_towers, save_hf,
                           lambda model, images: model.get_image_features(pixel_values=images)),
    "hf_siglip_vision": (hf("SiglipVisionModel", "SiglipVisionConfig", intermediate_size=64),
                         save_hf, None),
    "timm_vit": (timm_vit("vit_small_patch16_224", num_classes=5), save_timm_hub, None),
    "timm_deit_distilled": (timm_vit("deit_tiny_distilled_patch16_224", num_classes=5),
                            save_timm_hub, None),
    "timm_reg4_gap_no_cls": (timm_vit("vit_little_patch16_reg4_gap_256", num_classes=3),
                             save_timm_hub, None),
    "timm_siglip": (timm_vit("vit_base_patch16_siglip_224", num_classes=0), save_timm_hub, None),
    "timm_clip_quickgelu": (timm_vit("vit_base_patch16_clip_quickgelu_224", num_classes=0),
                            save_timm_hub, None),
    "timm_dinov2_swiglu": (timm_vit("vit_giant_patch14_dinov2", num_classes=0), save_timm_hub,
                           None),
    "openclip": (lambda: openclip_model(NATIVE, 0.5), save_openclip,
                 lambda model, images: model.encode_image(images)),
}  # fmt: skip


def assert_same_load(ours, theirs):
    """Two ``(config, params)``: the configs equal, every array equal and float32."""
    assert ours[0] == theirs[0]
    flat = traverse_util.flatten_dict(theirs[1], sep="/")
    assert_same_params(ours[1], {k: np.asarray(v) for k, v in flat.items()})


def assert_matches_module(config, params, output, model, seed):
    """Our logits (a backbone: pooled features) against the module's on fresh random images."""
    images = images_at(config.image_size, seed)
    with torch.no_grad():
        theirs = output(model, torch.from_numpy(images)).numpy()
    with jax.default_matmul_precision("float32"):
        ours = run_model(config, params, images.transpose(0, 2, 3, 1))
    mine = ours.logits if config.num_classes else ours.pre_logits
    assert relative_error(mine, theirs) < TOLERANCE


@pytest.mark.parametrize("name", FAMILIES)
def test_from_torch_equals_the_file_importer(tmp_path, seed, name):
    build, save, output = FAMILIES[name]
    model = randomize(build(), seed)
    live = jvi.from_torch(model)
    assert_same_load(live, load_checkpoint(save(model, tmp_path / "saved")))
    if output is not None:
        assert_matches_module(*live, output, model, seed)


def test_weights_changed_in_place_are_read_and_later_changes_do_not_leak(seed):
    """A fine-tuned model: what counts is the module's weights when from_torch is called; the
    parameters returned are a copy, so the module training on does not change them."""
    model = randomize(FAMILIES["hf_vit"][0](), seed)
    with torch.no_grad():
        model.vit.encoder.layer[0].attention.attention.query.weight.mul_(-1.0)
        model.classifier.bias.add_(3.0)
    config, params = jvi.from_torch(model)
    assert_matches_module(config, params, hf_output("logits"), model, seed)
    kept = np.array(params["head"]["bias"])
    np.testing.assert_array_equal(kept, model.classifier.bias.detach().numpy())
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    np.testing.assert_array_equal(np.asarray(params["head"]["bias"]), kept)


def test_a_custom_head_count_that_no_name_says(seed):
    """timm's fused qkv hides the heads and a width of 48 matches no size: a file needs its
    config.json, the live module says them itself."""
    model = randomize(
        timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8,
                          embed_dim=48, depth=2, num_heads=3, num_classes=4),
        seed,
    )  # fmt: skip
    config, params = jvi.from_torch(model)
    assert config.num_heads == 3
    assert_matches_module(config, params, lambda m, x: m(x), model, seed)
    open_tower = randomize(openclip_model(NATIVE, None), seed).visual  # head width 8: 4 heads
    assert jvi.from_torch(open_tower)[0].num_heads == 4
    # Built directly rather than by create_model: no pretrained_cfg, no architecture name.
    from timm.models.vision_transformer import VisionTransformer

    direct = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
    assert jvi.from_torch(direct)[0].num_heads == 3


def test_another_image_size_resamples_as_the_library_does(tmp_path, seed):
    build, save, _ = FAMILIES["timm_reg4_gap_no_cls"]
    model = randomize(build(), seed)
    live = jvi.from_torch(model, image_size=OTHER)
    assert live[0].image_size == OTHER
    assert_same_load(live, load_checkpoint(save(model, tmp_path / "saved"), image_size=OTHER))
    # timm's dynamic_img_size resamples its table for each input.
    assert_matches_module(*live, lambda m, x: m(x), model, seed)


def test_an_image_processor_gives_the_preprocessing_and_dinov2s_size(tmp_path, seed):
    config = transformers.Dinov2Config(**{**SMALL_HF, "image_size": 64}, mlp_ratio=2)
    model = randomize(transformers.Dinov2Model(config), seed)
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    live = jvi.from_torch(model, processor=processor)
    assert live[0].image_size == (32, 32) and live[0].preprocessing.resize == 40
    assert_same_load(live, load_checkpoint(tmp_path))
    with pytest.raises(CheckpointError, match="processor= is for transformers models"):
        jvi.from_torch(timm_vit("vit_small_patch16_224")(), processor=processor)


def test_bfloat16_weights_and_wrappers(seed):
    model = randomize(FAMILIES["hf_siglip_vision"][0](), seed).to(torch.bfloat16)
    expected = jvi.from_torch(randomize(FAMILIES["hf_siglip_vision"][0](), seed)
                              .to(torch.bfloat16).to(torch.float32))  # fmt: skip
    assert_same_load(jvi.from_torch(model), expected)
    assert_same_load(jvi.from_torch(torch.nn.DataParallel(model)), expected)


def test_what_is_not_a_supported_vit_is_refused_by_class_before_any_work():
    swin = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                   num_heads=[1, 2], window_size=2, num_labels=3)  # fmt: skip
    with pytest.raises(CheckpointError, match=r"SwinForImageClassification.*windowed attention"):
        jvi.from_torch(transformers.SwinForImageClassification(swin))
    resnet_stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    with pytest.raises(CheckpointError, match=r"torch.nn.modules.container.Sequential is not a "
                       r"supported vision transformer; accepted:\n  - transformers: ViTModel"):  # fmt: skip
        jvi.from_torch(resnet_stem)
    with pytest.raises(CheckpointError, match="takes a torch.nn.Module, got dict"):
        jvi.from_torch({"patch_embed.proj.weight": torch.zeros(4, 3, 2, 2)})
    with pytest.raises(CheckpointError, match="global_pool='max' is not supported"):
        jvi.from_torch(timm_vit("vit_small_patch16_224", global_pool="max")())
    with pytest.raises(CheckpointError, match=r"image_size must be .* got \(0, 3\)"):
        jvi.from_torch(resnet_stem, image_size=(0, 3))
