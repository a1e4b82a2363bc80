"""What a model is, for a results bundle and the site: its checkpoint file, or, for a model
given as arrays, its configuration in words and a digest of its parameters.

An identity is a JSON dict: from a checkpoint file (the command line) ``path`` and ``sha256`` of
the file; from a hub repository (:func:`hub_identity`) the repository and the commit its
revision resolved to; from arrays (:func:`model_identity`) ``description`` and ``sha256`` of the
parameters. Either way the run's fingerprint includes it, so a run folder analysed with other
weights is refused rather than resumed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np

from jaxvit_interp.model.config import VARIANTS, ViTConfig

# Hex digits of a digest that a description shows (the bundle keeps all of it).
SHOWN_DIGITS = 12


def describe_config(config: ViTConfig) -> str:
    """``"ViT-S/16, 224x224 px, 1,000 classes"``, or the shape of a model of no named size:
    ``"ViT of 7 layers x 6 heads, width 96, 4x4 patches, 32x32 px, a backbone (no classes)"``."""
    size = next(
        (
            f"ViT-{name}/{config.patch_size[0]}"
            for name, fields in VARIANTS.items()
            if all(getattr(config, k) == v for k, v in fields.items())
            and config.patch_size[0] == config.patch_size[1]
        ),
        None,
    )
    if size is None:
        size = (
            f"ViT of {config.num_layers} layers x {config.num_heads} heads, width "
            f"{config.hidden_size}, {config.patch_size[0]}x{config.patch_size[1]} patches"
        )
    classes = f"{config.num_classes:,} classes" if config.num_classes else "a backbone (no classes)"
    return f"{size}, {config.image_size[0]}x{config.image_size[1]} px, {classes}"


def parameter_digest(params: Any) -> str:
    """sha256 of a parameter tree: every leaf's path, dtype, shape and bytes, in path order
    (equal trees give equal digests, whatever device or container holds them)."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        value = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{value.dtype.str}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def model_identity(config: ViTConfig, params: Any) -> dict[str, Any]:
    """The identity of a model given as arrays, without a checkpoint file: its configuration in
    words and its parameters' sha256 (:func:`parameter_digest`)."""
    digest = parameter_digest(params)
    return {
        "description": (
            f"{describe_config(config)}, given as arrays (parameters sha256 "
            f"{digest[:SHOWN_DIGITS]})"
        ),
        "sha256": digest,
    }


def hub_identity(repo_id: str, commit: str) -> dict[str, Any]:
    """The identity of a hub model: ``repo_id`` at ``commit``. A commit fixes every file of the
    repository, so it stands for the weights' digest, wherever the local cache is; a branch
    that has moved on since names another model, and a run of the old one is not resumed."""
    name = f"hf-hub:{repo_id}@{commit}"
    return {
        "path": name,
        "repo_id": repo_id,
        "revision": commit,
        "sha256": hashlib.sha256(name.encode()).hexdigest(),
    }


def identity_label(identity: dict[str, Any] | None) -> str:
    """How a results bundle's ``checkpoint`` names the model: its file's path, else its
    description (bundles written before these carried neither)."""
    identity = identity or {}
    return identity.get("path") or identity.get("description") or "unknown checkpoint"
