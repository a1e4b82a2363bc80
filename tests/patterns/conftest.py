"""Planted-pattern data and one autoencoder trained on it, shared by the pattern tests.

Training is the slow part of these tests (mostly compilation on a CPU), so it happens once per
session: the recovery test, the checkpoint tests and the embedding tests all use this model.
"""

import numpy as np
import pytest

from jaxvit_interp.patterns import (
    PLANTED_KINDS,
    AutoencoderSettings,
    extract_patterns,
    normalize_patterns,
    planted_attention,
    train_autoencoder,
)

GRID = (8, 8)
PER_KIND = 40  # maps of each planted kind
HEADS = 4  # maps are laid out [image, head]

# Small and short, so the whole pattern test set stays well under a minute of training.
SETTINGS = AutoencoderSettings(latent_dim=8, batch_size=32, learning_rate=3e-3, max_epochs=40)


@pytest.fixture(scope="session")
def planted():
    """``(labels [image, head], patterns [image, head, 15, 15] normalised)`` over an 8x8 grid."""
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(len(PLANTED_KINDS)), PER_KIND)).reshape(-1, HEADS)
    attention = planted_attention(7, labels, GRID)
    raw = extract_patterns(attention, GRID, True, "patch")
    return labels, np.asarray(normalize_patterns(raw, GRID[0] * GRID[1]))


@pytest.fixture(scope="session")
def trained(planted, tmp_path_factory):
    """``(model, workdir)``: the autoencoder trained on the planted patterns, saved in workdir."""
    workdir = tmp_path_factory.mktemp("pattern_ae")
    _, patterns = planted
    return train_autoencoder(patterns, SETTINGS, workdir=workdir, progress=False), workdir
