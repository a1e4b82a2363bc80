"""The built-in default: scikit-learn's bundled handwritten digits and a small ViT trained on them.

1,797 real 8x8 grayscale images of the digits 0-9 ship with scikit-learn, so everything here works
offline. With 1x1 patches each pixel is a token, giving an 8x8 patch grid: large enough for the
k-hop analysis (hops 0..7) while the model stays small enough to train and analyse on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

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

BUILTIN_DIR = "builtin"
WEIGHTS_FILE = "digits_vit.npz"
CONFIG_FILE = "digits_vit.json"


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


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("jaxvit_interp.data").joinpath(BUILTIN_DIR, name)))


def save_digits_model(config: ViTConfig, params: Any, directory: Path, metadata: dict) -> None:
    """Write the weights as a flat ``vit_jax``-layout ``.npz`` and the config plus metadata as JSON."""
    from flax.traverse_util import flatten_dict

    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}
    np.savez(directory / WEIGHTS_FILE, **flat)
    (directory / CONFIG_FILE).write_text(
        json.dumps({"config": config.to_dict(), **metadata}, indent=2, sort_keys=True) + "\n"
    )


def load_digits_model() -> tuple[ViTConfig, Any]:
    """The shipped digits ViT: ``(config, params)``."""
    import jax.numpy as jnp
    from flax.traverse_util import unflatten_dict

    weights, meta = builtin_path(WEIGHTS_FILE), builtin_path(CONFIG_FILE)
    if not weights.exists() or not meta.exists():
        raise FileNotFoundError(
            f"the built-in digits model is missing ({weights}); recreate it with "
            "`jaxvit-interp train-digits`"
        )
    config = ViTConfig.from_dict(json.loads(meta.read_text())["config"])
    with np.load(weights) as flat:
        params = unflatten_dict({k: jnp.asarray(flat[k]) for k in flat.files}, sep="/")
    return config, params


def digits_model_info() -> dict:
    """The metadata recorded when the shipped model was trained (accuracy, settings, time)."""
    return json.loads(builtin_path(CONFIG_FILE).read_text())


def train_digits_model(
    train_config=None, *, directory: Path | None = None, progress: ProgressArg = True
) -> dict:
    """Train :data:`DIGITS_CONFIG` on the training split and save it (default: the shipped copy).

    Returns the metadata written beside the weights: held-out accuracy, settings, loss history.
    """
    import time

    from jaxvit_interp.model.train import TrainConfig, evaluate, train_classifier

    train_config = train_config or TrainConfig()
    train_images, train_labels = load_digits("train")
    test_images, test_labels = load_digits("test")
    start = time.perf_counter()
    params, history = train_classifier(
        DIGITS_CONFIG,
        train_config,
        train_images,
        train_labels,
        background=BACKGROUND,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    metadata = {
        "test_accuracy": evaluate(DIGITS_CONFIG, params, test_images, test_labels),
        "train_accuracy": evaluate(DIGITS_CONFIG, params, train_images, train_labels),
        "test_images": int(len(test_labels)),
        "train_images": int(len(train_labels)),
        "train_seconds": round(seconds, 1),
        "train_config": dataclasses.asdict(train_config),
        "history": history,
    }
    save_digits_model(DIGITS_CONFIG, params, directory or builtin_path(""), metadata)
    return metadata
