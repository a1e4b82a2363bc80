"""A small convolutional autoencoder for pattern maps of any size.

Encoder: the map, zero-padded to a multiple of ``2**len(features)`` on each side, goes through
stride-2 3x3 convolutions (``features`` channels, halving the size each time) and a dense layer to
the latent. Decoder: a dense layer back to the smallest feature map, stride-2 3x3 transposed
convolutions doubling the size, and a crop to the input's size. Patterns are normalised to
``[0, 1]`` (see :func:`~jaxvit_interp.patterns.extract.normalize_patterns`), but the output is
left linear: a sigmoid's vanishing gradient near 0, where most of a sparse map lies, stalls
training on one-hot-like patterns for many epochs. Padding then cropping lets one architecture
take 8x8 and 14x14 CLS maps and 15x15 and 27x27 offset maps alike.

Shapes: patterns ``[batch, h, w]``, latents ``[batch, latent]``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def padded_shape(shape: tuple[int, int], levels: int) -> tuple[int, int]:
    """``shape`` rounded up to a multiple of ``2**levels`` on each side."""
    step = 2**levels
    return tuple(math.ceil(s / step) * step for s in shape)


class Encoder(nn.Module):
    """Pattern ``[batch, h, w]`` -> latent ``[batch, latent_dim]``."""

    latent_dim: int
    features: tuple[int, ...]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, w = x.shape[-2:]
        ph, pw = padded_shape((h, w), len(self.features))
        x = jnp.pad(x, ((0, 0), (0, ph - h), (0, pw - w)))[..., None]
        for f in self.features:
            x = nn.relu(nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME")(x))
        return nn.Dense(self.latent_dim)(x.reshape(x.shape[0], -1))


class Decoder(nn.Module):
    """Latent ``[batch, latent_dim]`` -> pattern ``[batch, h, w]``."""

    shape: tuple[int, int]
    features: tuple[int, ...]

    @nn.compact
    def __call__(self, z: Array) -> Array:
        levels = len(self.features)
        ph, pw = padded_shape(self.shape, levels)
        h0, w0 = ph // 2**levels, pw // 2**levels
        x = nn.relu(nn.Dense(h0 * w0 * self.features[-1])(z))
        x = x.reshape(z.shape[0], h0, w0, self.features[-1])
        for f in (*reversed(self.features[:-1]), 1):
            x = nn.ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME")(x)
            if f != 1:
                x = nn.relu(x)
        h, w = self.shape
        return x[:, :h, :w, 0]


class PatternAutoencoder(nn.Module):
    """Autoencoder for ``shape``-sized patterns; ``__call__`` returns ``(reconstruction, latent)``.

    Attributes:
      shape: ``(h, w)`` of the patterns.
      latent_dim: width of the latent.
      features: channels of the encoder's stride-2 convolutions, outermost first (the decoder
        mirrors them).
    """

    shape: tuple[int, int]
    latent_dim: int = 12
    features: tuple[int, ...] = (16, 32)

    def setup(self):
        self.encoder = Encoder(self.latent_dim, self.features)
        self.decoder = Decoder(self.shape, self.features)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        z = self.encoder(x)
        return self.decoder(z), z

    def encode(self, x: Array) -> Array:
        return self.encoder(x)

    def decode(self, z: Array) -> Array:
        return self.decoder(z)
