"""Direct logit attribution (``importance/direct.py``).

Every term of the decomposition against one written out plainly, in float64 NumPy, from the
activations PyTorch computes in timm's models (random weights, hooked): each head's output
through its slice of the output projection, the MLPs, the projection biases and the tokens
entering block 0, each through the final norm with its scale frozen and the classifier.  The
terms add up to the label logit on every readout family; the ablation drop is one masked forward
pass per head; what the analysis cannot take is refused before any work.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp import ViTConfig, direct_logit_attribution, init_params
from jaxvit_interp.budget import direct_attribution_bytes
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import direct
from jaxvit_interp.model import run_model

QUIET = Execution(progress=False)
# Two images a batch: five images make a padded last batch.
PAIRS = Execution(batch_size=2, progress=False)
TINY = dict(image_size=(8, 8), patch_size=(4, 4), hidden_size=16, num_layers=3, num_heads=2)
READOUTS = {
    "cls_token": dict(mlp_dim=24, num_classes=5),
    "distillation_token": dict(
        mlp_dim=24, num_classes=4, distillation_token=True, distillation_head=True
    ),
    "registers_layer_scale_swiglu": dict(
        mlp_dim=12,
        num_classes=3,
        num_register_tokens=2,
        layer_scale=True,
        mlp_activation="swiglu",
    ),
    "mean_pooling": dict(mlp_dim=24, num_classes=6, classifier="gap"),
    "mean_pooling_fc_norm": dict(
        mlp_dim=24, num_classes=3, classifier="gap", class_token=True, fc_norm=True
    ),
    "clip_projection": dict(
        mlp_dim=24,
        num_classes=4,
        pre_norm=True,
        mlp_activation="quick_gelu",
        projection_dim=6,
        patch_bias=False,
        position_embedding="sincos2d",
    ),
}


def _terms(result) -> np.ndarray:
    """``[image, term]`` every direct term of the result, in float64."""
    parts = (
        result.direct.reshape(len(result.direct), -1),
        result.attention_bias,
        result.mlp,
        result.embedding[:, None],
        result.readout_bias[:, None],
    )
    return np.concatenate([np.asarray(p, np.float64) for p in parts], axis=1)


@pytest.mark.parametrize("readout", sorted(READOUTS))
def test_the_terms_add_up_to_the_label_logit(readout, rng, random_model):
    config, params = random_model(int(rng.integers(1 << 30)), **TINY, **READOUTS[readout])
    images = rng.normal(size=(5, *config.image_size, config.channels)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, size=5)
    result = direct_logit_attribution(
        config, params, images, labels, ablation=None, execution=PAIRS
    )

    logits = np.asarray(run_model(config, params, images).logits, np.float64)
    label_logit = logits[np.arange(5), labels]
    terms = _terms(result)
    # float32 rounding of a sum of terms: relative to the terms' magnitudes, not their sum.
    scale = np.abs(terms).sum(axis=1)
    np.testing.assert_array_less(np.abs(terms.sum(axis=1) - label_logit), 1e-5 * scale)
    np.testing.assert_allclose(result.total, label_logit, atol=1e-5 * scale.max())
    np.testing.assert_array_equal(result.labels, labels)
    assert result.ablation_drop is None and result.indirect is None
    # Every head writes something: a term that vanished would still add up.
    assert (np.abs(result.direct) > 0).all()


# ---- each term against PyTorch's own activations ------------------------------------------------

torch_cases = {
    # architecture, timm arguments
    "cls_token": ("vit_base_patch16_224", dict(num_classes=5)),
    "distillation_token": ("deit_tiny_distilled_patch16_224", dict(num_classes=4)),
    "registers_layer_scale": (
        "vit_base_patch16_224",
        dict(num_classes=3, reg_tokens=2, init_values=0.5),
    ),
    "mean_pooling": (
        "vit_base_patch16_224",
        dict(num_classes=6, global_pool="avg", class_token=False, fc_norm=False),
    ),
    "mean_pooling_fc_norm": ("vit_base_patch16_224", dict(num_classes=3, global_pool="avg")),
}


def _timm_model(architecture: str, kwargs: dict, seed: int, folder):
    """A timm ViT of random weights (norm and layer-scale factors around 1), saved as a timm hub
    folder and loaded back by ``load_checkpoint``: ``(model, config, params)``."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from jaxvit_interp.model.checkpoint import load_checkpoint

    small = dict(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=3)
    model = timm.create_model(architecture, pretrained=False, **small, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            around_one = ("norm" in name or "gamma" in name) and not name.endswith("bias")
            p.copy_(0.3 * torch.randn(p.shape, generator=generator) + float(around_one))
    folder.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    hub = {"architecture": architecture, "model_args": {"num_heads": 3},
           "pretrained_cfg": {"input_size": [3, 16, 16]}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(hub))
    config, params = load_checkpoint(folder / "model.safetensors")
    return model, config, params


def _f64(t) -> np.ndarray:
    return t.detach().double().numpy()


def _reference_terms(model, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each direct term of ``logit_y``, from the activations of one PyTorch forward pass.

    Hooks take the tokens entering the first block, every head's mixed values (the input of
    the output projection, heads side by side) and every MLP's output, and the final norm's
    input, whose standard deviation is frozen; each term then goes through the norm without
    its offset and the classifier, as the readout reads it.
    """
    import torch

    seen: dict[str, list] = {"mixed": [], "mlp": [], "stream": [], "norm": []}
    norm = model.fc_norm if isinstance(model.fc_norm, torch.nn.LayerNorm) else model.norm
    hooks = [
        model.blocks[0].register_forward_pre_hook(lambda m, a: seen["stream"].append(a[0])),
        norm.register_forward_pre_hook(lambda m, a: seen["norm"].append(a[0])),
    ]
    for block in model.blocks:
        projection = block.attn.proj
        hooks.append(projection.register_forward_pre_hook(lambda m, a: seen["mixed"].append(a[0])))
        hooks.append(block.mlp.register_forward_hook(lambda m, a, out: seen["mlp"].append(out)))
    with torch.no_grad():
        logits = _f64(model(torch.from_numpy(images.transpose(0, 3, 1, 2))))
    for hook in hooks:
        hook.remove()

    rows = np.arange(len(images))
    prefix, pooled = model.num_prefix_tokens, model.global_pool == "avg"
    fc_norm = norm is model.fc_norm
    std = np.sqrt(_f64(seen["norm"][0]).var(axis=-1) + norm.eps)  # [image, token] or [image]
    gain, offset = _f64(norm.weight), _f64(norm.bias)
    readers = [(0, model.head)]
    if getattr(model, "head_dist", None) is not None:  # DeiT: the mean of two heads
        readers.append((1, model.head_dist))

    def through_readout(term):
        """A term ``[image, token, hidden]`` of the stream -> its share of ``logit_y``."""
        total = 0.0
        for token, head in readers:
            column = _f64(head.weight)[labels]  # [image, hidden]
            centred = term - term.mean(-1, keepdims=True)
            if pooled and fc_norm:  # pool, then normalise the mean
                normed = centred[:, prefix:].mean(1) / std[:, None]
            elif pooled:  # normalise each patch, then pool
                normed = (centred / std[..., None])[:, prefix:].mean(1)
            else:
                normed = centred[:, token] / std[:, token, None]
            total = total + (normed * gain * column).sum(-1)
        return total / len(readers)

    def scaled(block, name):
        scale = getattr(block, name)
        return _f64(scale.gamma) if hasattr(scale, "gamma") else 1.0

    heads, width = model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    ref = {"direct": np.zeros((len(images), len(model.blocks), heads))}
    ref["attention_bias"], ref["mlp"] = np.zeros((2, len(images), len(model.blocks)))
    for layer, block in enumerate(model.blocks):
        mixed, kernel = _f64(seen["mixed"][layer]), _f64(block.attn.proj.weight)
        for h in range(heads):
            part = slice(h * width, (h + 1) * width)
            output = mixed[..., part] @ kernel[:, part].T * scaled(block, "ls1")
            ref["direct"][:, layer, h] = through_readout(output)
        bias = _f64(block.attn.proj.bias) * scaled(block, "ls1")
        ref["attention_bias"][:, layer] = through_readout(np.broadcast_to(bias, mixed.shape))
        ref["mlp"][:, layer] = through_readout(_f64(seen["mlp"][layer]) * scaled(block, "ls2"))
    ref["embedding"] = through_readout(_f64(seen["stream"][0]))
    ref["readout_bias"] = sum(
        _f64(head.weight)[labels] @ offset + _f64(head.bias)[labels] for _, head in readers
    ) / len(readers)
    ref["label_logit"] = logits[rows, labels]
    return ref


@pytest.mark.compare
@pytest.mark.parametrize("case", sorted(torch_cases))
def test_each_term_matches_one_written_from_pytorch_activations(case, rng, tmp_path):
    architecture, kwargs = torch_cases[case]
    model, config, params = _timm_model(
        architecture, kwargs, int(rng.integers(1 << 30)), tmp_path / "timm"
    )
    images = rng.normal(size=(3, *config.image_size, config.channels)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, size=3)
    ref = _reference_terms(model, images, labels)
    # The reference is complete too: it is the decomposition, not a rearrangement of ours.
    reference_total = (
        ref["direct"].sum((1, 2))
        + ref["attention_bias"].sum(1)
        + ref["mlp"].sum(1)
        + ref["embedding"]
        + ref["readout_bias"]
    )
    np.testing.assert_allclose(reference_total, ref["label_logit"], rtol=1e-6, atol=1e-6)

    with jax.default_matmul_precision("float32"):
        result = direct_logit_attribution(
            config, params, images, labels, ablation=None, execution=QUIET
        )
    for name in ("direct", "attention_bias", "mlp", "embedding", "readout_bias"):
        ours = np.asarray(getattr(result, name), np.float64)
        scale = np.abs(ref[name]).max()
        assert np.abs(ours - ref[name]).max() <= 1e-4 * scale, (name, ours, ref[name])


# ---- the ablation beside it ----------------------------------------------------------------


def test_ablation_drop_is_one_masked_pass_per_head(rng, random_model):
    """``ablation_drop`` against one plain forward pass per zeroed head, on DeiT's two heads
    (the readout whose last block the engine runs for two tokens), labels from the prediction."""
    config, params = random_model(
        int(rng.integers(1 << 30)), **TINY, **READOUTS["distillation_token"]
    )
    images = rng.normal(size=(5, *config.image_size, config.channels)).astype(np.float32)
    result = direct_logit_attribution(config, params, images, execution=PAIRS)

    out = run_model(config, params, images)
    predictions = np.asarray(out.logits).argmax(-1)
    np.testing.assert_array_equal(result.labels, predictions)
    assert result.labels_are_predictions
    rows = np.arange(len(images))
    label_logit = np.asarray(out.logits, np.float64)[rows, predictions]
    L, H = config.num_layers, config.num_heads
    drop = np.zeros((len(images), L, H))
    for layer in range(L):
        for head in range(H):
            mask = np.ones((L, H), np.float32)
            mask[layer, head] = 0.0
            pruned = np.asarray(run_model(config, params, images, head_mask=mask).logits)
            drop[:, layer, head] = label_logit - pruned[rows, predictions]
    np.testing.assert_allclose(result.ablation_drop, drop, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.indirect, drop - result.direct, rtol=1e-4, atol=1e-5)

    # The summary names the heads of largest mean direct term and largest mean gap first.
    text = repr(result)
    for row, values in (("top heads", result.direct), ("most indirect", drop - result.direct)):
        layer, head = np.unravel_index(np.argmax(values.mean(0)), (L, H))
        line = next(line for line in text.splitlines() if line.strip().startswith(row))
        assert f": ({layer}, {head}) " in line, (row, text)


# ---- refusals --------------------------------------------------------------------------------


def test_what_it_cannot_take_is_refused_before_any_work(rng, random_model, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("model work started before the input was checked")

    monkeypatch.setattr(direct, "_direct_batch", no_work)
    monkeypatch.setattr(direct, "run_engine", no_work)
    seed = int(rng.integers(1 << 30))
    images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    cls = READOUTS["cls_token"]
    cases = [
        # (config fields, arguments after params, keyword arguments, what the message names)
        ({**cls, "representation_size": 7}, (images,), {}, r"tanh pre-logits.*size=7"),
        ({**cls, "classifier": "map"}, (images,), {}, r'attention head \(classifier="map"'),
        ({**cls, "num_classes": 0}, (images,), {}, "backbone without a classifier.*with_probe"),
        ({**cls, "heads_per_layer": (2, 1, 2)}, (images,), {}, r"heads_per_layer=\[2, 1, 2\]"),
        (cls, (images, [0, 5]), {}, r"outside the class range \[0, 5\).*labels\[1\]=5"),
        (cls, (images, [0]), {}, "one label per image"),
        (cls, (images[:, :4],), {}, "images have the wrong size"),
        (cls, (images,), {"ablation": 0}, "ablation must be the name of a kind"),
        (cls, (images,), {"execution": 2}, "execution must be a jaxvit_interp.Execution"),
        (cls, (images,), {"execution": Execution(memory_budget_bytes=1024)}, "budget of 1,024"),
    ]
    for fields, args, kwargs, match in cases:
        config, params = random_model(seed, **TINY, **fields)
        with pytest.raises(InputError, match=match):
            direct_logit_attribution(config, params, *args, **kwargs)


# ---- memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        dict(num_heads=4, classifier="token"),  # attention dominates
        dict(num_heads=4, classifier="gap"),  # every patch read
        # wide tokens: the stream, not the attention, dominates
        dict(
            num_heads=2,
            hidden_size=128,
            mlp_dim=512,
            distillation_token=True,
            distillation_head=True,
        ),
    ],
)
def test_estimate_covers_xla_memory_analysis(fields):
    """What XLA allocates per image for the pass (the slope between two batch sizes, so that
    the parameters and constant buffers drop out) stays within the planner's estimate, which is
    not loose by more than 3x."""
    config = ViTConfig.from_variant(
        "mu/2", image_size=(32, 32), num_layers=2, num_classes=3, **fields
    )
    params = jax.eval_shape(lambda: init_params(config, 0))

    def allocated(batch):
        images = jax.ShapeDtypeStruct((batch, *config.image_size, config.channels), jnp.float32)
        labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
        program = direct._direct_batch.lower(config, params, images, labels).compile()
        memory = program.memory_analysis()
        return memory.temp_size_in_bytes + memory.output_size_in_bytes

    per_image = (allocated(4) - allocated(2)) / 2
    estimate = direct_attribution_bytes(config)
    assert per_image <= estimate <= 3 * per_image, (per_image, estimate)
