"""A model given as arrays is named by its configuration and a digest of its parameters."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.model import ViTConfig, init_params
from jaxvit_interp.model.identity import (
    describe_config,
    identity_label,
    model_identity,
    parameter_digest,
)


def test_a_config_in_words():
    s16 = ViTConfig.from_variant("S/16", image_size=224, num_classes=1000)
    assert describe_config(s16) == "ViT-S/16, 224x224 px, 1,000 classes"
    odd = ViTConfig(
        image_size=(32, 48), patch_size=(4, 4), hidden_size=96, num_layers=7, num_heads=6,
        mlp_dim=64, num_classes=0, classifier="gap",
    )  # fmt: skip
    assert describe_config(odd) == (
        "ViT of 7 layers x 6 heads, width 96, 4x4 patches, 32x48 px, a backbone (no classes)"
    )


def test_the_parameter_digest_follows_every_value_and_no_container(rng):
    config = ViTConfig.from_variant("mu/2", image_size=(8, 8), num_classes=3)
    params = jax.tree.map(np.asarray, init_params(config, int(rng.integers(1 << 30))))
    digest = parameter_digest(params)
    # Whatever holds the same values: device arrays, another key order.
    assert parameter_digest(jax.tree.map(jnp.asarray, params)) == digest
    reordered = {k: params[k] for k in reversed(list(params))}
    assert parameter_digest(reordered) == digest
    # Any one value changed, anywhere, changes it.
    leaves, tree = jax.tree.flatten(params)
    k = int(rng.integers(len(leaves)))
    changed = [leaf.copy() for leaf in leaves]
    flat = changed[k].reshape(-1)
    flat[int(rng.integers(flat.size))] += 1e-3
    assert parameter_digest(jax.tree.unflatten(tree, changed)) != digest
    assert len(digest) == 64 and int(digest, 16) >= 0  # a sha256, as a checkpoint file's is


def test_an_identity_names_the_file_or_else_the_model():
    config = ViTConfig.from_variant("mu/2", image_size=(8, 8), num_classes=3)
    identity = model_identity(config, init_params(config, 0))
    assert identity_label(identity) == identity["description"]
    assert identity["description"].startswith("ViT-mu/2, 8x8 px, 3 classes, given as arrays")
    assert identity_label({"path": "ViT-B_16.npz", "sha256": "00"}) == "ViT-B_16.npz"
    assert identity_label({}) == identity_label(None) == "unknown checkpoint"  # older bundles
