"""This project's own checkpoints: the parameters under their own names plus the config as JSON.

Two containers. A checkpoint folder (:func:`save_checkpoint`)::

    vit_config.json  {"format": "jaxvit-interp", "format_version": 1, "config": {...}}
    params/          orbax StandardCheckpointer output (the tree under "params")

where ``config`` is ``ViTConfig.to_dict()``.  ``vit_config.json`` is written last, so a folder
that has it holds a complete checkpoint; its name differs from Hugging Face's ``config.json`` so
the two kinds of folder cannot be confused.

One ``.safetensors`` file (:func:`save_safetensors`, as ``jaxvit-interp prune`` writes it): the
parameters under their ``/``-joined names and the config JSON in the header's metadata under
:data:`SAFETENSORS_CONFIG_KEY`.  That key tells it from a vit_jax file with the same names: the
stored config wins over what the tensors would suggest (a pruned model's heads per layer).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvit_interp.model.checkpoint.errors import CheckpointError, shape_str
from jaxvit_interp.model.checkpoint.facts import SHAPE_FIELDS, Facts
from jaxvit_interp.model.checkpoint.rules import (
    Rule,
    expected_targets,
    flatten,
    identity_rules,
    unflatten,
)
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.storage import atomic_write, orbax_write, write_text

CONFIG_FILE = "vit_config.json"
PARAMS_DIR = "params"
SAFETENSORS_CONFIG_KEY = "jaxvit_interp.config"
FORMAT = "jaxvit-interp"
FORMAT_VERSION = 1


def save_checkpoint(path, config: ViTConfig, params: Any, *, overwrite: bool = False) -> Path:
    """Write ``params`` and ``config`` to the folder ``path``, for :func:`load_checkpoint`.

    Args:
      path: folder to create (its parents too).
      config: the model's :class:`ViTConfig`, stored as JSON.
      params: the tree under ``"params"`` (as from ``init_params`` or ``load_checkpoint``);
        checked against ``config`` before anything is written.
      overwrite: replace an existing checkpoint at ``path`` instead of refusing.

    Returns:
      The folder, as an absolute path.

    Arrays are saved at their own dtype and values, so loading returns them bit for bit (as
    float32, which every parameter of this model is).
    """
    path = Path(path).absolute()  # orbax wants absolute paths
    flat = _check_fits(config, params, "save_checkpoint")  # before anything is written
    if path.is_file() or (path.exists() and any(path.iterdir()) and not overwrite):
        raise FileExistsError(f"{str(path)!r} exists and is not empty; pass overwrite=True")
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).unlink(missing_ok=True)
    # Host numpy arrays carry no device placement, so the checkpoint restores on any machine.
    # Orbax cannot store an empty array (a layer whose heads were all removed); the config
    # gives its shape, and read_params puts it back.
    host = unflatten({k: v for k, v in flat.items() if v.size})
    array_bytes = sum(a.nbytes for a in jax.tree.leaves(host))
    with orbax_write(path / PARAMS_DIR, array_bytes), ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / PARAMS_DIR, host, force=overwrite)
        checkpointer.wait_until_finished()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    write_text(path / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_params(path) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """The stored config and the flat ``{"/"-joined path: array}`` parameters of a checkpoint."""
    path = Path(path).absolute()
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path / CONFIG_FILE)!r} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{str(path / CONFIG_FILE)!r} is not a {FORMAT} config (format={meta.get('format')!r})"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer version (format_version "
            f"{meta['format_version']} > {FORMAT_VERSION}); upgrade jaxvit-interp"
        )
    config = stored_config(meta["config"], repr(str(path / CONFIG_FILE)))
    params_dir = path / PARAMS_DIR
    if not params_dir.exists():
        raise CheckpointError(f"{str(path)!r} has {CONFIG_FILE} but no {PARAMS_DIR}/ folder")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(params_dir).item_metadata.tree
            # Shape/dtype targets without sharding restore as host numpy arrays, whatever device
            # the checkpoint was written from.
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
            params = checkpointer.restore(params_dir, target)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds for bad files
        if isinstance(e, OSError) and e.errno is not None:
            raise  # the file system's own error (permission denied, ...), reported as such
        raise CheckpointError(
            f"{str(params_dir)!r} is not a readable orbax checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    for key, shape in expected_targets(config).items():  # the empty arrays save_checkpoint left out
        if key not in flat and 0 in shape:
            flat[key] = np.zeros(shape, np.float32)
    return config, flat


def _check_fits(config: ViTConfig, params: Any, caller: str) -> dict[str, np.ndarray]:
    """``params`` flat, as host arrays, or a :class:`CheckpointError` listing every key that does
    not fit ``config`` (missing, extra, mis-shaped)."""
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    expected = expected_targets(config)
    problems = [f"missing {k} {shape_str(s)}" for k, s in expected.items() if k not in flat]
    problems += [f"extra {k} {shape_str(v.shape)}" for k, v in flat.items() if k not in expected]
    problems += [
        f"mis-shaped {k}: config needs {shape_str(expected[k])}, params have {shape_str(v.shape)}"
        for k, v in flat.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if problems:
        raise CheckpointError(
            f"params do not fit the config given to {caller}:\n  " + "\n  ".join(problems)
        )
    return flat


def save_safetensors(path, config: ViTConfig, params: Any) -> Path:
    """The model as one ``.safetensors`` file, for :func:`load_checkpoint` (and any safetensors
    reader): the parameters under their ``/``-joined names as float32, the config JSON in the
    header's metadata under :data:`SAFETENSORS_CONFIG_KEY`.  ``params`` are checked against
    ``config`` before anything is written; the file is written atomically."""
    from safetensors.numpy import save

    flat = _check_fits(config, params, "save_safetensors")
    data = save(
        {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()},
        metadata={SAFETENSORS_CONFIG_KEY: config.to_json()},
    )
    path = Path(path)
    atomic_write(path, lambda f: f.write(data))
    return path


def stored_config(data, where: str) -> ViTConfig:
    """The :class:`ViTConfig` stored with an own-format checkpoint (a dict, or its JSON text),
    or a :class:`CheckpointError` naming ``where`` it was read from."""
    try:
        return ViTConfig.from_dict(json.loads(data) if isinstance(data, str) else data)
    except (TypeError, ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{where}: invalid config: {e}") from e


class OwnFamily:
    """Keys already in this project's names; every config field known from the stored config
    (``vit_config.json`` of a folder, or the header of a ``.safetensors`` file)."""

    name = "jaxvit"

    def __init__(self, stored: ViTConfig, container: str = "orbax"):
        self.stored = stored
        self.source = CONFIG_FILE if container == "orbax" else f"{SAFETENSORS_CONFIG_KEY} header"
        self.description = f"jaxvit-interp ({container}, config from {self.source})"

    def facts(self, tensors) -> Facts:
        c = self.stored
        rest = [
            f.name
            for f in dataclasses.fields(c)
            if f.name not in SHAPE_FIELDS and f.name != "image_size"
        ]
        return Facts(
            fields={f: getattr(c, f) for f in SHAPE_FIELDS},
            sources={f: self.source for f in SHAPE_FIELDS},
            num_patches=c.num_patches,
            grid=c.grid,
            size_source=f"its stored config ({self.source}) says so",
            defaults={f: getattr(c, f) for f in rest},
        )

    def rules(self, config: ViTConfig) -> list[Rule]:
        return identity_rules(expected_targets(config))

    def ignored(self, key: str) -> str | None:
        return None
