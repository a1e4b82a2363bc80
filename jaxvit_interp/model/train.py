"""Training a ViT classifier from scratch with optax (used for the built-in digits model)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.run import run_model
from jaxvit_interp.model.vit import VisionTransformer, init_params, with_position_embeddings
from jaxvit_interp.progress import ProgressArg, start_progress


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
      steps: optimiser steps.
      batch_size: images per step.
      learning_rate: peak AdamW learning rate (linear warm-up, then cosine decay to 0).
      warmup_steps: steps of linear warm-up.
      weight_decay: AdamW weight decay.
      label_smoothing: cross-entropy label smoothing.
      max_shift: random translation augmentation in pixels (0 disables it).
      seed: seeds initialisation, batching and augmentation.
    """

    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 300
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    max_shift: int = 1
    seed: int = 0


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_optimizer(train_config: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train_config.learning_rate, train_config.warmup_steps, train_config.steps
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=train_config.weight_decay),
    )


def random_shift(rng, images, max_shift: int, fill: float):
    """Translate each image by up to ``max_shift`` pixels, filling with ``fill`` (the background)."""
    b, h, w, _ = images.shape
    padded = jnp.pad(
        images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)), constant_values=fill
    )
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(  # noqa: E731
        img, (off[0], off[1], 0), (h, w, img.shape[-1])
    )
    return jax.vmap(crop)(padded, offsets)


def sincos_position_embedding(config: ViTConfig, temperature: float = 10_000.0) -> jax.Array:
    """2-D sin-cos position table ``[1, N, D]`` (zeros for the CLS token), as in MAE / big_vision."""
    gh, gw = config.grid
    d = config.hidden_size
    if d % 4:
        raise InputError(f"sin-cos position embedding needs hidden_size divisible by 4, got {d}")
    rows, cols = jnp.meshgrid(jnp.arange(gh), jnp.arange(gw), indexing="ij")
    omega = 1.0 / temperature ** (jnp.arange(d // 4) / (d // 4))
    angles_r = rows.reshape(-1, 1) * omega
    angles_c = cols.reshape(-1, 1) * omega
    table = jnp.concatenate(
        [jnp.sin(angles_r), jnp.cos(angles_r), jnp.sin(angles_c), jnp.cos(angles_c)], axis=1
    )
    if config.has_cls_token:
        table = jnp.concatenate([jnp.zeros((1, d)), table], axis=0)
    return table[None].astype(jnp.float32)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(config: ViTConfig, train_config: TrainConfig, background: float) -> Callable:
    model = VisionTransformer(config)
    optimizer = make_optimizer(train_config)

    @jax.jit
    def train_step(state: TrainState, images, labels, rng) -> tuple[TrainState, dict]:
        if train_config.max_shift:
            images = random_shift(rng, images, train_config.max_shift, background)

        def loss_fn(params):
            logits = model.apply({"params": params}, images).logits
            loss = cross_entropy(logits, labels, config.num_classes, train_config.label_smoothing)
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = (logits.argmax(-1) == labels).mean()
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {"loss": loss, "accuracy": accuracy}

    return train_step


def evaluate(config: ViTConfig, params, images, labels, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``params`` on ``images`` ``[B, H, W, C]`` with integer ``labels``."""
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = run_model(config, params, images[start : start + batch_size]).logits
        correct += int((np.asarray(logits).argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train_classifier(
    config: ViTConfig,
    train_config: TrainConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    background: float = 0.0,
    progress: ProgressArg = True,
) -> tuple[Any, list[dict[str, float]]]:
    """Train a ViT from scratch; returns ``(params, history)``.

    ``history`` holds the mean training loss and accuracy every 100 steps. Batches are drawn
    by a NumPy generator seeded with ``train_config.seed`` so a run is reproducible.
    """
    rng = jax.random.PRNGKey(train_config.seed)
    init_rng, rng = jax.random.split(rng)
    params = init_params(config, init_rng)
    # Small random position embeddings leave a ViT blind to layout for hundreds of steps when
    # each token is one pixel; starting from the 2-D sin-cos table (as MAE and big_vision do)
    # gives position from step one, and the table stays trainable.
    params = with_position_embeddings(params, sincos_position_embedding(config))
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(train_config).init(params),
    )
    train_step = make_train_step(config, train_config, background)
    batches = np.random.default_rng(train_config.seed)
    images = jnp.asarray(train_images, jnp.float32)
    labels = jnp.asarray(train_labels, jnp.int32)
    history, window = [], []
    bar = start_progress(progress, total=train_config.steps, desc="training", unit="step")
    start = time.perf_counter()
    for step in range(train_config.steps):
        idx = batches.choice(len(images), train_config.batch_size, replace=False)
        rng, step_rng = jax.random.split(rng)
        state, metrics = train_step(state, images[idx], labels[idx], step_rng)
        window.append(metrics)
        if (step + 1) % 100 == 0 or step + 1 == train_config.steps:
            mean = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
            mean["step"] = step + 1
            mean["seconds"] = time.perf_counter() - start
            history.append(mean)
            window = []
            bar.note(loss=f"{mean['loss']:.3f}", acc=f"{mean['accuracy']:.3f}")
        bar.update(1)
    bar.close()
    return state.params, history
