"""Small random models and the plain per-head reference the engine is checked against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp.model import ViTConfig, init_params, run_model


def _random_model(seed: int, **fields) -> tuple[ViTConfig, dict]:
    """A config from ``fields`` and random parameters of the model's shapes.

    Every leaf is drawn at random (biases, CLS token and LayerNorm offsets included, which a fresh
    initialisation would leave at 0 or 1 and so hide mistakes in the code that uses them).  Shapes
    come from ``jax.eval_shape``, which traces the initialiser without compiling it.
    """
    config = ViTConfig(**fields)
    shapes = jax.eval_shape(lambda: init_params(config, 0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        fan_in = np.prod(leaf.shape[:-1]) if "kernel" in name else 1
        if "kernel" in name and "out" in name:  # [head, head_dim, hidden]: fan-in is heads*dim
            fan_in = leaf.shape[0] * leaf.shape[1]
        scale = 1.0 / np.sqrt(fan_in) if "kernel" in name else 0.2
        base = 1.0 if "scale" in name else 0.0
        return jnp.asarray(base + scale * rng.normal(size=leaf.shape), jnp.float32)

    return config, jax.tree_util.tree_map_with_path(draw, shapes)


def _random_images(config: ViTConfig, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, *config.image_size, config.channels)).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _reference_importance(config, params, images, labels=None) -> dict[str, np.ndarray]:
    """Every ablation metric from one full ``run_model`` per pruned head, in float64 numpy.

    For a backbone without classes only ``layer`` and ``repr`` are meaningful; the others are
    left at 0.
    """
    full = run_model(config, params, images)
    logits = np.asarray(full.logits, np.float64)
    if not config.num_classes:  # stand-in logits so the shared arithmetic below runs
        logits = np.zeros((len(images), 2))
    p = _softmax(logits)
    pred = logits.argmax(-1)
    y = pred if labels is None else np.asarray(labels)
    rows = np.arange(len(images))
    z = np.asarray(full.pre_logits, np.float64)
    out_full = np.asarray(full.block_outputs, np.float64)
    L, H = config.num_layers, config.num_heads
    names = ("prob", "prob_drop", "kl", "layer", "repr", "flip", "margin")
    ref = {m: np.zeros((len(images), L, H)) for m in names}
    for layer in range(L):
        for head in range(H):
            mask = np.ones((L, H), np.float32)
            mask[layer, head] = 0
            o = run_model(config, params, images, head_mask=mask)
            lp = np.asarray(o.logits, np.float64) if config.num_classes else logits
            q = _softmax(lp)
            zp = np.asarray(o.pre_logits, np.float64)
            diff = out_full[:, layer] - np.asarray(o.block_outputs, np.float64)[:, layer]
            top2 = np.sort(lp, axis=-1)[:, -2:]
            ref["prob"][:, layer, head] = q[rows, y]
            ref["prob_drop"][:, layer, head] = p[rows, y] - q[rows, y]
            ref["kl"][:, layer, head] = (p * (np.log(p) - np.log(q))).sum(-1)
            ref["layer"][:, layer, head] = np.linalg.norm(
                diff.reshape(len(images), -1), axis=1
            ) / np.linalg.norm(out_full[:, layer].reshape(len(images), -1), axis=1)
            ref["repr"][:, layer, head] = 1 - (z * zp).sum(-1) / (
                np.linalg.norm(z, axis=-1) * np.linalg.norm(zp, axis=-1)
            )
            ref["flip"][:, layer, head] = lp.argmax(-1) != pred
            # Distance of the pruned top-1 from a tie: where tiny, argmax may differ by rounding.
            ref["margin"][:, layer, head] = top2[:, 1] - top2[:, 0]
    ref["probs"], ref["predictions"], ref["labels"] = p, pred, y
    return ref


@pytest.fixture
def random_model():
    return _random_model


@pytest.fixture
def no_model_work(monkeypatch):
    """The engines refuse to start: a test of bad input shows it is refused before any work."""
    from jaxvit_interp.importance import ablation, partial, sets

    def refuse(*args, **kwargs):
        raise AssertionError("model work started before the input was checked")

    monkeypatch.setattr(ablation, "run_engine", refuse)
    monkeypatch.setattr(partial, "run_engine", refuse)
    monkeypatch.setattr(sets, "run_sets", refuse)
    return refuse


@pytest.fixture
def random_images():
    return _random_images


@pytest.fixture
def reference_importance():
    return _reference_importance


@pytest.fixture
def softmax():
    return _softmax
