"""The gradient methods against PyTorch autograd on Hugging Face transformers' ViT.

A random-weight ``ViTForImageClassification`` (eager attention, float64; built as the model
parity tests build theirs) is loaded into ours through the Hugging Face checkpoint loader; each method is written out on the PyTorch model
from its definition: the attention probabilities (``output_attentions``) and hidden states
(``output_hidden_states``) keep their gradients, the pixels take theirs.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_parity_hf import hf_model as random_hf_model  # noqa: E402

from jaxvit_interp.execution import Execution  # noqa: E402
from jaxvit_interp.explain import explain, relevance_rollout  # noqa: E402
from jaxvit_interp.model.checkpoint import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.compare

HF = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    image_size=16,
    patch_size=4,
    num_labels=6,
)
GRID = HF["image_size"] // HF["patch_size"]


@pytest.fixture
def hf_model(rng, tmp_path):
    """``(theirs in float64, our config, our params)`` of one random model."""
    model = random_hf_model(int(rng.integers(1 << 30)), **HF)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    config, params = load_checkpoint(tmp_path / "hf")
    return model.double().eval(), config, params


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64))


def _label_logit_sum(logits: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    return logits[torch.arange(len(labels)), torch.from_numpy(labels)].sum()


def _theirs_grad_rollout(model, images, labels) -> np.ndarray:
    out = model(pixel_values=_pixels(images), output_attentions=True)
    for attention in out.attentions:
        attention.retain_grad()
    _label_logit_sum(out.logits, labels).backward()
    n = out.attentions[0].shape[-1]
    relevance = torch.eye(n, dtype=torch.float64).expand(len(images), n, n)
    for attention in out.attentions:  # [image, head, N, N]
        mixed = (attention.grad * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + mixed @ relevance
    return relevance[:, 0, 1:].reshape(len(images), GRID, GRID).detach().numpy()


def _theirs_gradcam(model, images, labels) -> np.ndarray:
    out = model(pixel_values=_pixels(images), output_hidden_states=True)
    tokens = out.hidden_states[-2]  # the input of the last layer
    tokens.retain_grad()
    _label_logit_sum(out.logits, labels).backward()
    weights = tokens.grad[:, 1:].mean(dim=1, keepdim=True)
    cam = (weights * tokens[:, 1:]).sum(-1).clamp(min=0)
    return cam.reshape(len(images), GRID, GRID).detach().numpy()


def _theirs_integrated_gradients(model, images, labels, baselines, steps):
    x, x0 = _pixels(images), _pixels(baselines)
    summed = torch.zeros_like(x)
    for k in range(steps):
        point = (x0 + (k + 0.5) / steps * (x - x0)).requires_grad_(True)
        _label_logit_sum(model(pixel_values=point).logits, labels).backward()
        summed += point.grad
    attribution = ((x - x0) * summed / steps).numpy().transpose(0, 2, 3, 1)
    p = HF["patch_size"]
    maps = attribution.reshape(len(images), GRID, p, GRID, p, 3).sum(axis=(2, 4, 5))
    with torch.no_grad():
        change = model(pixel_values=x).logits - model(pixel_values=x0).logits
    change = change[torch.arange(len(labels)), torch.from_numpy(labels)].numpy()
    return maps, attribution.sum(axis=(1, 2, 3)) - change


def _scaled_close(got, want, rtol):
    """Equal up to ``rtol`` of the reference's largest magnitude (maps hold near-zero entries
    whose relative error is meaningless)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max())


def test_grad_rollout_and_gradcam_equal_torch_autograd(hf_model, rng):
    model, config, params = hf_model
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, HF["num_labels"], size=3)
    got = explain(
        config,
        params,
        images,
        labels,
        methods=("grad_rollout", "gradcam"),
        execution=Execution(batch_size=2, progress=False),  # a padded last batch
    )
    _scaled_close(got.maps["grad_rollout"], _theirs_grad_rollout(model, images, labels), 1e-4)
    model.zero_grad()
    _scaled_close(got.maps["gradcam"], _theirs_gradcam(model, images, labels), 1e-4)
    np.testing.assert_array_equal(got.labels, labels)


def test_integrated_gradients_equal_torch_autograd(hf_model, rng):
    model, config, params = hf_model
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    baselines = rng.normal(scale=0.3, size=images.shape).astype(np.float32)
    labels = rng.integers(0, HF["num_labels"], size=3)
    steps = int(rng.integers(3, 8))
    got = explain(
        config,
        params,
        images,
        labels,
        methods=("integrated_gradients",),
        ig_steps=steps,
        ig_baseline=baselines,
        execution=Execution(batch_size=2, progress=False),  # a padded last batch
    )
    maps, gap = _theirs_integrated_gradients(model, images, labels, baselines, steps)
    _scaled_close(got.maps["integrated_gradients"], maps, 1e-4)
    np.testing.assert_allclose(got.integrated_gradients_gap, gap, rtol=0, atol=1e-3)


def test_relevance_rollout_is_the_layer_by_layer_rule(rng):
    weighted = rng.normal(size=(2, 3, 4, 5, 5)).astype(np.float32)  # [image, layer, head, N, N]
    want = np.broadcast_to(np.eye(5), (2, 5, 5)).astype(np.float64)
    for layer in range(3):
        mixed = np.maximum(weighted[:, layer], 0).mean(axis=1)
        want = want + mixed @ want
    np.testing.assert_allclose(np.asarray(relevance_rollout(weighted)), want, rtol=1e-5)
