"""The autoencoder takes maps of any size; its NumPy initialisation matches Flax's defaults."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvit_interp.patterns import PatternAutoencoder
from jaxvit_interp.patterns.train import _init_params


@pytest.mark.parametrize("shape", [(8, 8), (15, 15), (14, 14), (27, 27), (7, 9), (1, 11)])
def test_output_matches_input_size(shape):
    module = PatternAutoencoder(shape=shape, latent_dim=5, features=(4, 8))
    x = jnp.asarray(np.random.default_rng(0).random((3, *shape)), jnp.float32)
    params = _init_params(module, seed=0)
    apply = jax.jit(module.apply, static_argnames="method")
    recon, z = apply({"params": params}, x)
    assert recon.shape == (3, *shape) and z.shape == (3, 5)
    # Encoding and decoding separately is the same map as the whole.
    z_alone = apply({"params": params}, x, method="encode")
    np.testing.assert_allclose(z_alone, z, rtol=1e-6)
    np.testing.assert_allclose(
        apply({"params": params}, z_alone, method="decode"), recon, rtol=1e-5, atol=1e-6
    )


def test_numpy_init_matches_flax_default_scale():
    module = PatternAutoencoder(shape=(15, 15), latent_dim=8, features=(16, 32))
    ours = _init_params(module, seed=3)
    # Flax's default kernel initialiser (LeCun normal) on the largest kernel: same spread.
    kernel = ours["decoder"]["Dense_0"]["kernel"]  # [8, 4*4*32]
    flax_kernel = jax.jit(lambda k: nn.initializers.lecun_normal()(k, kernel.shape))(
        jax.random.key(0)
    )
    assert abs(kernel.std() / float(flax_kernel.std()) - 1) < 0.05
    assert abs(kernel.mean()) < 0.02
    assert not ours["encoder"]["Conv_0"]["bias"].any()
    # Seeded: the same seed gives the same parameters, another seed different ones.
    same = _init_params(module, seed=3)
    other = _init_params(module, seed=4)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(same), strict=True
        )
    )
    assert not np.array_equal(kernel, other["decoder"]["Dense_0"]["kernel"])
