"""Mean and resample ablation against Hugging Face transformers' ViT on PyTorch, written with
forward hooks: the input of each layer's attention output projection (the heads' outputs side
by side, ``[batch, token, heads * head_dim]``) is recorded on the reference images' clean passes,
and a head's slice of it replaced by their mean or by the paired reference image's.  The
random-weight model is loaded into ours through the Hugging Face checkpoint loader."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxvit_interp.execution import Execution  # noqa: E402
from jaxvit_interp.importance import ablate, head_importance  # noqa: E402
from jaxvit_interp.model.checkpoint import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.compare

HF = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    image_size=16,
    patch_size=8,
    num_labels=6,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    attn_implementation="eager",
)


class HookedViT:
    """The transformers model in float64 with a forward pre-hook on every layer's attention
    output projection, which records its input or replaces heads' slices of it."""

    def __init__(self, model):
        self.model = model.double().eval()
        self.layers = self.model.vit.encoder.layer
        c = self.model.config
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.recorded: dict[int, torch.Tensor] = {}
        self.replace: dict[tuple[int, int], torch.Tensor] = {}
        for layer, block in enumerate(self.layers):
            block.attention.output.dense.register_forward_pre_hook(self._hook(layer))

    def _hook(self, layer):
        def hook(module, args):
            heads = args[0].clone()  # [batch, token, heads * head_dim]
            self.recorded[layer] = heads
            for (at, head), value in self.replace.items():
                if at == layer:
                    heads[:, :, head * self.head_dim : (head + 1) * self.head_dim] = value
            return (heads, *args[1:])

        return hook

    def probs(self, images: np.ndarray, replace=None) -> np.ndarray:
        """``softmax`` of images ``[batch, H, W, C]`` with ``replace`` ``{(layer, head): value
        [batch or 1, token, head_dim]}``."""
        self.replace = replace or {}
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64))
        with torch.no_grad():
            logits = self.model(pixel_values=pixels).logits
        self.replace = {}
        return torch.softmax(logits, -1).numpy()

    def head_outputs(self, images: np.ndarray) -> np.ndarray:
        """Every head's output on a clean pass, ``[image, layer, head, token, head_dim]``."""
        self.probs(images)
        stacked = torch.stack([self.recorded[i] for i in range(len(self.layers))], dim=1)
        b, layers, tokens, _ = stacked.shape
        return stacked.reshape(b, layers, tokens, -1, self.head_dim).transpose(2, 3).numpy()


@pytest.mark.parametrize("kind", ["mean", "resample"])
def test_kinds_equal_hooked_transformers(kind, tmp_path, rng):
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**HF))
    with torch.no_grad():  # every parameter random, biases and norms included
        for name, p in model.named_parameters():
            p.copy_(0.2 * torch.randn(p.shape))
            if "layernorm" in name and name.endswith("weight"):
                p.add_(1.0)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    config, params = load_checkpoint(tmp_path / "hf")
    theirs = HookedViT(model)

    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    reference = rng.normal(size=(3 if kind == "resample" else 5, 16, 16, 3)).astype(np.float32)
    outputs = theirs.head_outputs(reference)  # [image, layer, head, token, head_dim]
    table = outputs.mean(axis=0, keepdims=True) if kind == "mean" else outputs
    p = theirs.probs(images)
    y = p.argmax(-1)
    rows = np.arange(len(images))

    def patched(heads):
        replace = {(layer, head): torch.from_numpy(table[:, layer, head]) for layer, head in heads}
        q = theirs.probs(images, replace)
        return q[rows, y], (p * (np.log(p) - np.log(q))).sum(-1)

    options = dict(
        ablation=kind, reference=reference, execution=Execution(batch_size=2, progress=False)
    )
    got = head_importance(config, params, images, metrics=("prob", "kl"), **options)
    for layer in range(config.num_layers):
        for head in range(config.num_heads):
            prob, kl = patched([(layer, head)])
            where = f"head {(layer, head)}"
            np.testing.assert_allclose(
                got.prob[:, layer, head], prob, rtol=1e-4, atol=1e-5, err_msg=where
            )
            np.testing.assert_allclose(
                got.kl[:, layer, head], kl, rtol=1e-3, atol=1e-5, err_msg=where
            )
    sets = [[(0, 1), (2, 3)], [(1, 0), (1, 2), (2, 0)]]
    got = ablate(config, params, images, sets, metrics=("prob", "kl"), **options)
    for s, heads in enumerate(sets):
        prob, kl = patched(heads)
        np.testing.assert_allclose(got.prob[:, s], prob, rtol=1e-4, atol=1e-5, err_msg=str(heads))
        np.testing.assert_allclose(got.kl[:, s], kl, rtol=1e-3, atol=1e-5, err_msg=str(heads))
