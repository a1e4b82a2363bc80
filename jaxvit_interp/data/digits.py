"""The built-in default: scikit-learn's bundled handwritten digits and a small ViT trained on them.

1,797 real 8x8 grayscale images of the digits 0-9 ship with scikit-learn, so everything here works
offline. With 1x1 patches each pixel is a token, giving an 8x8 patch grid: large enough for the
k-hop analysis (hops 0..7) while the model stays small enough to train and analyse on a laptop CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.data import builtin_models
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import Preprocessing, ViTConfig
from jaxvit_interp.progress import ProgressArg

CLASS_NAMES = [str(d) for d in range(10)]
# A fixed stratified split: the held-out images are never seen in training.
TEST_FRACTION = 0.2
SPLIT_SEED = 0
# sklearn's digits count ink in 0..16; scaled to [0, 1] and then mapped to [-1, 1].
DIGITS_PREPROCESSING = Preprocessing(mean=(0.5,), std=(0.5,), resize=None, crop=False)
BACKGROUND = -1.0  # a blank pixel after preprocessing

DIGITS_CONFIG = ViTConfig(
    image_size=(8, 8),
    patch_size=(1, 1),
    channels=1,
    hidden_size=48,
    num_layers=6,
    num_heads=4,
    mlp_dim=96,
    num_classes=10,
    classifier="token",
    layer_norm_eps=1e-6,
    gelu_approximate=True,
    preprocessing=DIGITS_PREPROCESSING,
    class_names=tuple(CLASS_NAMES),
)


def load_digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed digits ``[B, 8, 8, 1]`` float32 in [-1, 1] and labels ``[B]``.

    ``split`` is ``"train"`` (1,437 images), ``"test"`` (360 held-out images) or ``"all"``.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise InputError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data = sklearn_digits()
    images = (data.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    images = images[..., None]
    labels = data.target.astype(np.int32)
    if split == "all":
        return images, labels
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    idx = idx_train if split == "train" else idx_test
    return images[idx], labels[idx]


def load_digits_model() -> tuple[ViTConfig, Any]:
    """The shipped digits ViT: ``(config, params)``."""
    return builtin_models.DIGITS.load_model()


def digits_model_info() -> dict:
    """The metadata recorded when the shipped model was trained (accuracy, settings, time)."""
    return builtin_models.DIGITS.info()


def train_digits_model(
    train_config=None, *, directory: Path | None = None, progress: ProgressArg = True
) -> dict:
    """Train :data:`DIGITS_CONFIG` on the training split and save it (default: the shipped copy).

    Returns the metadata written beside the weights: held-out accuracy, settings, loss history.
    """
    from jaxvit_interp.model.train import TrainConfig

    return builtin_models.train_and_save(
        builtin_models.DIGITS,
        DIGITS_CONFIG,
        train_config or TrainConfig(),
        load_digits,
        background=BACKGROUND,
        directory=directory,
        progress=progress,
    )
