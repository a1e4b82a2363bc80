"""Reading checkpoint containers into flat ``{key: numpy array}`` dicts plus side files.

Containers: ``.npz``, ``.safetensors`` (single or sharded in a Hugging Face folder), PyTorch
pickles (only when allowed) and this project's own orbax folder. Which *names* the keys follow
(vit_jax, big_vision, timm, Hugging Face) is decided afterwards from the keys themselves, except
for this project's own checkpoints, which carry their config: the orbax folder's
``vit_config.json``, or a ``.safetensors`` header's ``jaxvit_interp.config``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.model.checkpoint.errors import CheckpointError, accepted_formats
from jaxvit_interp.model.checkpoint.facts import SideFiles
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.storage import UnreadableFileError, load_npz

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
# Wrappers training scripts put around a state dict (DeiT: {"model": ...}).
STATE_DICT_WRAPPERS = ("state_dict", "model", "model_state", "module")


@dataclasses.dataclass
class RawCheckpoint:
    """A checkpoint read from disk (or a live module's state dict), before any renaming.

    Attributes:
      path: what was opened; for a live PyTorch module (:func:`.live.from_torch`) its class in
        words.
      container: ``"npz"``, ``"safetensors"``, ``"pickle"``, ``"jaxvit"`` (own orbax format) or
        ``"torch module"`` (a live module).
      tensors: file key -> array, as stored.
      side: JSON side files (Hugging Face / timm ``config.json``, ``preprocessor_config.json``),
        or for a live module what its library would write into them.
      stored_config: the :class:`ViTConfig` saved with an own-format checkpoint (an orbax folder,
        or a ``.safetensors`` file with the config in its header), else None.
    """

    path: Path | str
    container: str
    tensors: dict[str, np.ndarray]
    side: SideFiles = SideFiles()
    stored_config: ViTConfig | None = None


def read_checkpoint(path, *, allow_pickle: bool = False) -> RawCheckpoint:
    """Open ``path`` (file or folder) and read every tensor in it."""
    path = Path(path)
    if not path.exists():
        # With its errno, so that the command line tells it as one line, naming the path.
        raise FileNotFoundError(errno.ENOENT, "checkpoint does not exist", str(path))
    if path.is_dir():
        return _read_folder(path, allow_pickle)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return RawCheckpoint(path, "npz", _read_npz(path))
    if suffix == ".safetensors":
        return _safetensors_checkpoint(path, path.parent)
    if suffix in PICKLE_SUFFIXES:
        return RawCheckpoint(
            path, "pickle", _read_pickle(path, allow_pickle), _side_files(path.parent)
        )
    raise CheckpointError(
        f"{str(path)!r}: unknown checkpoint format {suffix or '(no suffix)'!r}; accepted:\n"
        + accepted_formats()
    )


def _read_folder(path: Path, allow_pickle: bool) -> RawCheckpoint:
    from jaxvit_interp.model.checkpoint import orbax_io

    if (path / orbax_io.CONFIG_FILE).exists():
        config, tensors = orbax_io.read_params(path)
        return RawCheckpoint(path, "jaxvit", tensors, stored_config=config)
    if (path / "model.safetensors").exists():
        return _safetensors_checkpoint(path / "model.safetensors", path, shown=path)
    side = _side_files(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        tensors = {}
        for shard in safetensors_shards(index):
            tensors.update(_read_safetensors(path / shard)[0])
        return RawCheckpoint(path, "safetensors", tensors, side)
    for name in ("pytorch_model.bin", "model.pth", "model.pt"):
        if (path / name).exists():
            return RawCheckpoint(
                path / name, "pickle", _read_pickle(path / name, allow_pickle), side
            )
    present = sorted(p.name for p in path.iterdir())[:12]
    raise CheckpointError(
        f"folder {str(path)!r} holds no checkpoint this loader knows (found: "
        f"{', '.join(present) or 'nothing'}); accepted:\n" + accepted_formats()
    )


def safetensors_shards(index: Path) -> list[str]:
    """The shard files a sharded checkpoint's ``model.safetensors.index.json`` names (its
    ``weight_map`` maps each tensor to the shard holding it)."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{str(index)!r} is not a safetensors index (JSON with a 'weight_map'): {e}"
        ) from None


def _side_files(folder: Path) -> SideFiles:
    def load(name: str) -> dict[str, Any] | None:
        file = folder / name
        if not file.exists():
            return None
        try:
            return json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{str(file)!r} is not valid JSON: {e}") from e

    return SideFiles(
        load("config.json"), load("preprocessor_config.json"), load("open_clip_config.json")
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_npz(path, what=".npz checkpoint")
    except UnreadableFileError as e:
        raise CheckpointError(str(e)) from None


def _safetensors_checkpoint(file: Path, folder: Path, shown: Path | None = None) -> RawCheckpoint:
    """One ``.safetensors`` file: this project's own when its header holds the config (which
    then says everything; side files are not read), else with the side files of ``folder``."""
    from jaxvit_interp.model.checkpoint.orbax_io import SAFETENSORS_CONFIG_KEY, stored_config

    tensors, metadata = _read_safetensors(file)
    shown = shown or file
    if SAFETENSORS_CONFIG_KEY in metadata:
        where = f"{str(file)!r} header {SAFETENSORS_CONFIG_KEY}"
        config = stored_config(metadata[SAFETENSORS_CONFIG_KEY], where)
        return RawCheckpoint(shown, "safetensors", tensors, stored_config=config)
    return RawCheckpoint(shown, "safetensors", tensors, _side_files(folder))


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a ``.safetensors`` file, and its header's metadata (``{}`` if none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as e:
        raise CheckpointError(
            f"{str(path)!r}: not a readable .safetensors file (truncated or corrupt?): {e}"
        ) from None


def _read_pickle(path: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    if not allow_pickle:
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch pickle: unpickling can run arbitrary code stored in the "
            "file, so it is refused. Convert it to .safetensors, or pass allow_pickle=True if "
            "you trust where it came from."
        )
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"reading {str(path)!r} needs PyTorch (pip install torch)") from e
    try:
        try:
            # The safe loader first: plain state dicts need nothing else.
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights_only" not in str(e):
                raise
            # Training checkpoints carry other objects (argparse namespaces, ...); the caller
            # has allowed running the pickle.
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (None, errno.EINVAL):
            raise  # the file system's own error (permission denied, ...), reported as such
        raise CheckpointError(
            f"{str(path)!r}: not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in STATE_DICT_WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{str(path)!r} does not hold a state dict (found {type(obj).__name__})"
        )
    tensors = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            # numpy has no bfloat16; float32 holds it exactly.
            if value.dtype == torch.bfloat16:
                value = value.float()
            tensors[key] = value.numpy()
    # DataParallel / DDP wrap every name in "module.".
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors
