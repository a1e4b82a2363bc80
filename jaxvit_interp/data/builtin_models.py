"""The models shipped inside the package, in one table: ``builtin:digits`` and ``builtin:shapes``.

Each is a small ViT trained here with a fixed seed and saved as two files in ``data/builtin/``:
``<stem>.npz`` (the weights, flat ``vit_jax`` layout) and ``<stem>.json`` (the config plus the
metadata of its training run: held-out accuracy, settings, loss history). ``--checkpoint`` and
``--images`` take ``builtin:NAME`` for any name in :data:`BUILTIN_MODELS`; the images are the
model's own held-out split.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.progress import ProgressArg

BUILTIN_DIR = "builtin"
PREFIX = "builtin:"


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """One shipped model and its images.

    Attributes:
      name: what follows ``builtin:`` on the command line and in site specs.
      stem: the file name of its weights and metadata, without ``.npz`` / ``.json``.
      images: ``"module:function"``, the function giving its preprocessed images and labels
        for a split (``"train"`` or ``"test"``); imported only when used.
      about: a few words for messages (``the built-in digits model``).
      train_command: the command that recreates the shipped weights.
    """

    name: str
    stem: str
    images: str
    about: str
    train_command: str

    @property
    def source(self) -> str:
        return PREFIX + self.name

    @property
    def weights_path(self) -> Path:
        return builtin_path(f"{self.stem}.npz")

    @property
    def info_path(self) -> Path:
        return builtin_path(f"{self.stem}.json")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names its shipped config records (the labels of its images, by index)."""
        return tuple(self.info()["config"]["class_names"])

    def load_model(self) -> tuple[ViTConfig, Any]:
        """The shipped model: ``(config, params)``."""
        import jax.numpy as jnp
        from flax.traverse_util import unflatten_dict

        if not self.weights_path.exists() or not self.info_path.exists():
            raise FileNotFoundError(
                f"{self.about} is missing ({self.weights_path}); recreate it with "
                f"`{self.train_command}`"
            )
        config = ViTConfig.from_dict(self.info()["config"])
        with np.load(self.weights_path) as flat:
            params = unflatten_dict({k: jnp.asarray(flat[k]) for k in flat.files}, sep="/")
        return config, params

    def info(self) -> dict:
        """The metadata recorded when the shipped model was trained (config, accuracy, settings)."""
        return json.loads(self.info_path.read_text())

    def load_images(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """Its preprocessed images ``[B, H, W, C]`` and integer labels; ``split`` as the module's."""
        module, function = self.images.split(":")
        return getattr(importlib.import_module(module), function)(split)


DIGITS = BuiltinModel(
    name="digits",
    stem="digits_vit",
    images="jaxvit_interp.data.digits:load_digits",
    about="the built-in digits model (scikit-learn's 8x8 handwritten digits)",
    train_command="jaxvit-interp train-digits",
)
SHAPES = BuiltinModel(
    name="shapes",
    stem="shapes_vit",
    images="jaxvit_interp.data.shapes:load_shapes",
    about="the built-in shapes model (16x16 images with planted rules)",
    train_command="python -m jaxvit_interp.data.shapes --train",
)
BUILTIN_MODELS = {model.source: model for model in (DIGITS, SHAPES)}


def is_builtin(source: str) -> bool:
    return str(source).startswith(PREFIX)


def find_builtin(source: str, where: str = "") -> BuiltinModel:
    """The built-in named ``source`` (``builtin:NAME``), or an :class:`InputError` listing them."""
    if source not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_MODELS)
        raise InputError(f"{where}{source!r} is not a built-in (known: {known})")
    return BUILTIN_MODELS[source]


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("jaxvit_interp.data").joinpath(BUILTIN_DIR, name)))


def save_model(
    builtin: BuiltinModel, config: ViTConfig, params: Any, directory: Path, metadata: dict
) -> None:
    """Write the weights as a flat ``vit_jax``-layout ``.npz`` and the config plus metadata as JSON."""
    from flax.traverse_util import flatten_dict

    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}
    np.savez(directory / f"{builtin.stem}.npz", **flat)
    (directory / f"{builtin.stem}.json").write_text(
        json.dumps({"config": config.to_dict(), **metadata}, indent=2, sort_keys=True) + "\n"
    )


def train_and_save(
    builtin: BuiltinModel,
    config: ViTConfig,
    train_config,
    load_split: Callable[[str], tuple[np.ndarray, np.ndarray]],
    *,
    background: float,
    directory: Path | None = None,
    progress: ProgressArg = True,
) -> dict:
    """Train ``config`` on ``load_split("train")`` and save it (default: over the shipped copy).

    Returns the metadata written beside the weights: held-out accuracy on ``load_split("test")``,
    settings, loss history.
    """
    import time

    from jaxvit_interp.model.train import evaluate, train_classifier

    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("test")
    start = time.perf_counter()
    params, history = train_classifier(
        config, train_config, train_images, train_labels, background=background, progress=progress
    )
    seconds = time.perf_counter() - start
    metadata = {
        "test_accuracy": evaluate(config, params, test_images, test_labels),
        "train_accuracy": evaluate(config, params, train_images, train_labels),
        "test_images": int(len(test_labels)),
        "train_images": int(len(train_labels)),
        "train_seconds": round(seconds, 1),
        "train_config": dataclasses.asdict(train_config),
        "history": history,
    }
    save_model(builtin, config, params, directory or builtin_path(""), metadata)
    return metadata
