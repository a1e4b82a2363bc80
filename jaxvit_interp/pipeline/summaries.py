"""One jitted model pass per batch that reduces attention to what the analysis keeps.

The attention of a batch exists only inside the compiled program: out come per-head hop strength
and the raw CLS and patch patterns (a few hundred numbers per head instead of ``N x N``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.vit import VisionTransformer
from jaxvit_interp.parallel import to_host
from jaxvit_interp.patterns.extract import cls_pattern, patch_pattern
from jaxvit_interp.strength.hops import rings_for
from jaxvit_interp.strength.kernels import hop_strength_kernel

STRENGTH_FIELDS = ("strength", "mass", "head_entropy", "distance", "patch_to_cls", "cls_to_patch")


@functools.partial(jax.jit, static_argnames=("config",))
def _summaries(config: ViTConfig, params, images, rings):
    attention = VisionTransformer(config).apply({"params": params}, images).attention
    strength, row_sums, _ = hop_strength_kernel(attention, rings)
    out = {name: getattr(strength, name) for name in STRENGTH_FIELDS}
    out["row_sum_error"] = jnp.abs(row_sums - 1.0).max()
    prefix = config.num_prefix_tokens  # CLS, distillation, registers: before the patches
    out["patch_pattern"] = patch_pattern(attention, config.grid, config.has_cls_token, prefix)
    if config.has_cls_token:
        out["cls_pattern"] = cls_pattern(attention, config.grid, True, prefix)
    return out


@functools.partial(jax.jit, static_argnames=("config",))
def _attention(config: ViTConfig, params, images):
    return VisionTransformer(config).apply({"params": params}, images).attention


def attention_summaries(
    config: ViTConfig, params, images, batch_size: int, mesh: jax.sharding.Mesh | None = None
) -> dict[str, np.ndarray]:
    """Hop strength ``[image, layer, head, ...]`` and raw patterns of ``images``, batch by batch.

    The last batch is padded to ``batch_size`` so the program compiles once per shape. With a
    ``mesh``, each batch is split over its devices along the image axis.
    """
    sharding = None
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
        batch_size = -(-batch_size // mesh.size) * mesh.size  # a multiple of the device count
    rings = rings_for(config)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], np.float32)
        valid = len(batch)
        if valid < batch_size:
            batch = np.concatenate(
                [batch, np.zeros((batch_size - valid, *batch.shape[1:]), batch.dtype)]
            )
        batch = jnp.asarray(batch) if sharding is None else jax.device_put(batch, sharding)
        out = {k: to_host(v) for k, v in _summaries(config, params, batch, rings).items()}
        if not np.isfinite(out["row_sum_error"]) or out["row_sum_error"] > 1e-3:
            raise InputError(
                f"the model's attention rows do not sum to 1 (off by {out['row_sum_error']:.3g}) "
                f"on images {start}..{start + valid - 1}: non-finite weights or pixels?"
            )
        for name, value in out.items():
            if name != "row_sum_error":
                parts.setdefault(name, []).append(np.asarray(value)[:valid])
    return {name: np.concatenate(values) for name, values in parts.items()}


def attention_matrices(config: ViTConfig, params, images) -> np.ndarray:
    """Full attention ``[image, layer, head, N, N]`` as float16 (for a few images shown on the site)."""
    return np.asarray(_attention(config, params, jnp.asarray(images, jnp.float32))).astype(
        np.float16
    )
