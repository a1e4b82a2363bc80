"""A run folder: what one ``analyze`` run keeps on disk, and who may write it.

Layout::

    run.json            what the run is: its fingerprint and what went into it (run_record)
    .lock               held by the command that is writing the folder (RunFolder.lock)
    input/              the images the command line decoded for the run, while it runs
    chunks/             per-image results, one .npz per chunk of images, each written whole as
                        soon as it is done; while the pattern stage runs, each pattern kind
                        gathered from them into <kind>-patterns.npy
    head-sets-stage.npz the head-set stage, once computed
    autoencoder-<kind>/ the pattern autoencoders' checkpoints
    bundle.json ...     the results bundle (jaxvit_interp.bundle), when the run is complete

Rerun the same command after an interruption and only the missing chunks are computed. A folder
that holds another run is refused with each difference named; a folder that another command is
writing is refused at once, naming that command (the lock dies with its process, so a killed
run leaves the folder resumable). In a distributed run process 0 holds the lock and writes; the
others read what it wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxvit_interp.bundle import INDEX_FILE
from jaxvit_interp.errors import InputError
from jaxvit_interp.multihost import is_writer
from jaxvit_interp.storage import (
    UnreadableFileError,
    atomic_npy,
    load_npy,
    load_npz,
    page_releaser,
    save_npz,
    write_text,
)

if TYPE_CHECKING:
    from jaxvit_interp.model.config import ViTConfig
    from jaxvit_interp.pipeline.settings import AnalysisSettings

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
CHUNK_DIR = "chunks"
# A folder of the run folder that may hold the images of the run before the run itself starts
# (the command line decodes the images there): a run folder is "new" with it.
INPUT_DIR = "input"
# The patterns of each kind (``<kind>_pattern`` in a chunk, ``[image, layer, head, h, w]``, 0.5 MB
# an image for ViT-B/16) are gathered into this file of the chunk folder, which the pattern stage
# reads a block at a time.
PATTERN_FILE = "{kind}-patterns.npy"
# Images read at once (hashed for the fingerprint, turned into thumbnails and pixels; ViT-B/16:
# 38 MB).
IMAGE_STEP = 64
# What a new run folder may hold before its run starts.
_BEFORE_RUN = {INPUT_DIR, LOCK_FILE}

__all__ = [
    "CHUNK_DIR",
    "INPUT_DIR",
    "LOCK_FILE",
    "RUN_FILE",
    "RunFolder",
    "RunFolderError",
    "RunFolderInUse",
    "RunState",
    "check_run_folder",
    "image_digest",
    "image_digests",
    "run_differences",
    "run_is_complete",
    "run_record",
]


class RunFolderError(InputError):
    """The output folder holds something other than this run."""


class RunFolderInUse(RunFolderError):
    """Another command is writing the run folder."""


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run folder already holds of this run.

    Attributes:
      complete: the bundle is written: nothing to redo.
      done: the numbers of the chunks written and readable.
    """

    complete: bool
    done: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """As JSON holds it (process 0 tells the others)."""
        return {"complete": self.complete, "done": list(self.done)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        return cls(complete=bool(d["complete"]), done=tuple(int(n) for n in d["done"]))


# Locks this process holds, by resolved folder: (file descriptor, how many holders). A run
# folder is locked by the command line and again by ``analyze`` inside it; the second is the same
# process and shares the first's lock.
_HELD: dict[Path, list] = {}


class RunFolder:
    """One run's folder: its paths, its lock, its state and the chunk files.

    Attributes:
      path: the folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # ---------------------------------------------------------------------------------------
    # Paths.

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def chunk_dir(self) -> Path:
        return self.path / CHUNK_DIR

    @property
    def input_dir(self) -> Path:
        return self.path / INPUT_DIR

    def chunk_path(self, number: int) -> Path:
        return self.chunk_dir / f"chunk-{number:05d}.npz"

    def pattern_path(self, kind: str) -> Path:
        return self.chunk_dir / PATTERN_FILE.format(kind=kind)

    def is_complete(self) -> bool:
        return run_is_complete(self.path)

    # ---------------------------------------------------------------------------------------
    # Who writes.

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Hold the folder for this command while the block runs (process 0 of a distributed
        run; the others hold nothing), or raise :class:`RunFolderInUse` naming the command that
        holds it. The lock is the kernel's (``flock``): it dies with its process, so a killed
        run leaves no stale lock. The folder (and the lock file) are made for it if need be,
        and removed again when nothing else came into them.
        """
        if not is_writer():
            yield self
            return
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield self
            finally:
                _HELD[key][1] -= 1
            return
        made = _missing_parents(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(self.path / LOCK_FILE)
        _HELD[key] = [fd, 1]
        try:
            yield self
        finally:
            del _HELD[key]
            _release(fd, self.path / LOCK_FILE, made)

    # ---------------------------------------------------------------------------------------
    # The run's state.

    def check_usable(self) -> None:
        """Refuse a folder that exists, holds other things and is no run folder."""
        check_run_folder(self.path)

    def open(self, fingerprint: str, record: dict[str, Any], num_chunks: int) -> RunState:
        """Make the folder this run's, or check that it is (``record``, :func:`run_record`, is
        kept in ``run.json`` beside the fingerprint, so that a refusal can name what changed),
        clear what an interrupted write left, and say what of the run it holds (process 0's
        work: the others are told, :func:`~jaxvit_interp.multihost.share_from_writer`)."""
        self._prepare(fingerprint, record)
        if self.is_complete():
            return RunState(complete=True)
        self.chunk_dir.mkdir(exist_ok=True)
        self.clear_torn_writes()
        done = []
        for number in range(num_chunks):
            # Read whole to know it is readable, then let go: all the chunks of a large run
            # (their patterns and attention) would not fit in memory.
            path = self.chunk_path(number)
            if path.exists() and read_chunk(path) is not None:
                done.append(number)
        return RunState(complete=False, done=tuple(done))

    def _prepare(self, fingerprint: str, record: dict[str, Any]) -> None:
        run_file = self.run_file
        if run_file.exists():
            try:
                held = json.loads(run_file.read_text())
                held_fingerprint = held.get("fingerprint")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                raise RunFolderError(
                    f"{run_file} is not readable; {self.path} may hold a damaged run: choose "
                    "another output folder or delete it"
                ) from None
            if held_fingerprint != fingerprint:
                raise RunFolderError(
                    f"{self.path} holds another run (fingerprint {held_fingerprint}, this one is "
                    f"{fingerprint}):\n"
                    + "\n".join(run_differences(held, record))
                    + "\nchoose another output folder, or delete this one"
                )
            if any(key not in held for key in record):
                # Written before run.json recorded all of it: this very run's record, for a
                # later refusal to name what changed.
                write_text(run_file, json.dumps({"fingerprint": fingerprint, **record}, indent=1))
            return
        self.check_usable()
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(run_file, json.dumps({"fingerprint": fingerprint, **record}, indent=1))

    def clear_torn_writes(self) -> None:
        """Remove the temporary files of writes that a killed command left (every write goes
        to a ``.<name>.*.tmp`` file renamed into place when complete; while this command holds
        the lock no other write is under way)."""
        for folder in (self.path, self.chunk_dir):
            for stale in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    # ---------------------------------------------------------------------------------------
    # Chunks.

    def write_chunk(self, number: int, arrays: dict[str, np.ndarray]) -> None:
        """Chunk ``number``'s arrays, written whole or not at all (process 0 only)."""
        if is_writer():
            save_npz(self.chunk_path(number), arrays)

    def gather(
        self,
        key: str,
        target: Path,
        shape: tuple[int, ...],
        dtype,
        chunks: list[int],
        *,
        keep_existing: bool = False,
    ) -> np.ndarray:
        """The chunk arrays ``key`` of ``chunks``, in order, copied one chunk at a time into a
        memory-mapped ``.npy`` at ``target`` of ``shape`` (a large set's would not fit in
        memory), and returned memory-mapped. Chunks without ``key`` hold none of those images
        (a subset's array). With ``keep_existing``, a file already at ``target`` of that shape
        is kept: it is written whole or not at all, from the chunks of this very run, so a run
        interrupted after gathering resumes from it.
        """
        if keep_existing and target.exists():
            try:
                held = load_npy(target)
                if held.shape == tuple(shape) and held.dtype == np.dtype(dtype):
                    return held
            except UnreadableFileError:
                pass  # written by something else: gathered again
        with atomic_npy(target, shape, dtype) as stored:
            release = page_releaser(stored)
            at = 0
            for number in chunks:
                with np.load(self.chunk_path(number), allow_pickle=False) as archive:
                    if key not in archive.files:
                        continue
                    piece = archive[key]
                stored[at : at + len(piece)] = piece
                at += len(piece)
                release()
            if at != shape[0]:
                raise RuntimeError(f"the chunks hold {at} images' {key}, expected {shape[0]}")
        return load_npy(target)


def read_chunk(path: Path) -> dict[str, np.ndarray] | None:
    """A chunk file's arrays, or None for a torn file (an older writer's): recompute it."""
    try:
        return load_npz(path)
    except UnreadableFileError:
        return None


def run_is_complete(out: str | Path) -> bool:
    """Whether the run folder ``out`` holds its finished bundle."""
    return (Path(out) / INDEX_FILE).exists()


def check_run_folder(out: Path) -> None:
    """Refuse a folder that exists, holds anything but the input images and the lock, and is
    no run folder."""
    out = Path(out)
    if (out / RUN_FILE).exists() or not out.exists():
        return
    if any(entry.name not in _BEFORE_RUN for entry in out.iterdir()):
        raise RunFolderError(
            f"{out} is not empty and holds no {RUN_FILE}; choose an empty or new folder"
        )


# ------------------------------------------------------------------------------------------------
# The lock.


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, innermost first."""
    made = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        made.append(parent)
    return made


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python",
    }


def _acquire(path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive lock, with this process named in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunFolderInUse(_in_use_message(path)) from None
        # The file may have been removed by its last holder between open and flock: a lock on
        # a removed file guards nothing, so take the one now at the path.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder()).encode())
    return fd


def _in_use_message(path: Path) -> str:
    folder = path.parent
    try:
        holder = json.loads(path.read_text())
        who = (
            f"process {holder['pid']} on {holder['host']}, since {holder['since']}: "
            f"{holder['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        who = "another process"
    return (
        f"{folder} is in use by another command ({who}); wait for it to end, or stop it: the "
        "folder stays resumable, and the same command run again afterwards continues the run"
    )


def _release(fd: int, path: Path, made: list[Path]) -> None:
    """Let go of the lock: the lock file is removed while still held (a command that opened it
    meanwhile finds it gone and takes the one at the path, see :func:`_acquire`), and so are the
    folders made for it when nothing else came into them; a refused or finished command leaves
    the folder as it found it, plus what it wrote."""
    try:
        with contextlib.suppress(OSError):
            path.unlink()
        for parent in made:  # innermost first
            with contextlib.suppress(OSError):  # not empty
                parent.rmdir()
    finally:
        os.close(fd)  # releases the flock


# ------------------------------------------------------------------------------------------------
# What a run is: its fingerprint's inputs, and what differs between two runs.


def image_digests(images, image_ids: list[str]) -> tuple[str, str]:
    """``(the images' and their ids' fingerprint, the pixels' alone)``, in one pass: the images
    hashed a slice at a time (equal to the hash of all their bytes at once)."""
    both, pixels = hashlib.sha256(), hashlib.sha256()
    both.update(json.dumps(list(image_ids)).encode())
    for start in range(0, len(images), IMAGE_STEP):
        block = np.ascontiguousarray(images[start : start + IMAGE_STEP], np.float32).tobytes()
        both.update(block)
        pixels.update(block)
    return both.hexdigest()[:16], pixels.hexdigest()[:16]


def image_digest(images, image_ids: list[str]) -> str:
    """The images' and their ids' fingerprint (see :func:`image_digests`)."""
    return image_digests(images, image_ids)[0]


def run_record(
    config: ViTConfig,
    model_identity: dict[str, Any],
    image_ids: list[str],
    pixel_digest: str,
    settings: AnalysisSettings,
) -> dict[str, Any]:
    """What ``run.json`` records of a run besides its fingerprint: every input of the
    fingerprint, or its digest (the pixels'), so that :func:`run_differences` can name them
    (the stage settings, which a run may change, left out)."""
    from jaxvit_interp.pipeline.settings import STAGE_SETTINGS

    return {
        "settings": {k: v for k, v in settings.to_dict().items() if k not in STAGE_SETTINGS},
        "model": model_identity,
        "config": config.to_dict(),
        "images": len(image_ids),
        "image_ids": list(image_ids),
        "pixels": pixel_digest,
    }


def _flat(record: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``."""
    if not isinstance(record, dict):
        return {prefix: record}
    out = {}
    for key, value in record.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _change(name: str, old: Any, new: Any) -> str:
    """``name: old -> new``, values as JSON; long lists by their first difference."""
    if isinstance(old, list) and isinstance(new, list) and max(len(old), len(new)) > 8:
        at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), None)
        first = "" if at is None else f", first at {at}: {json.dumps(old[at])} -> "
        first += "" if at is None else json.dumps(new[at])
        return f"{name}: {len(old)} values -> {len(new)} values{first}"

    def show(value):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return f"{name}: {show(old)} -> {show(new)}"


def _changes(what: str, old: dict, new: dict) -> list[str]:
    """``what key: old -> new`` for each (nested) key whose value differs."""
    old, new = _flat(old), _flat(new)
    return [
        _change(f"{what} {key}", old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _model_change(what: str, old: dict | None, new: dict | None) -> str | None:
    """``what: path (sha256 ...) -> path (sha256 ...)`` when a checkpoint or probe differs."""

    def show(model):
        if not model:
            return "none"
        return f"{model.get('path')} (sha256 {str(model.get('sha256'))[:12]}...)"

    keys = ("path", "sha256")
    old = {k: old[k] for k in keys if k in old} if old else None
    new = {k: new[k] for k in keys if k in new} if new else None
    return None if old == new else f"{what}: {show(old)} -> {show(new)}"


def run_differences(held: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """What differs between the run a folder holds (its ``run.json``) and ``record`` (this
    run's :func:`run_record`), one line each: settings, model, probe, config, images.

    A ``run.json`` written before it recorded the config, the image ids and the pixels' digest
    tells what it can and says what it cannot.
    """
    record = json.loads(json.dumps(record))  # as run.json holds it: tuples are lists there
    lines = []
    if "settings" in held:
        lines += _changes("setting", held["settings"], record["settings"])
    if "model" in held:
        old, new = held["model"] or {}, record["model"] or {}
        lines += filter(None, [_model_change("model", old, new)])
        lines += filter(None, [_model_change("probe", old.get("probe"), new.get("probe"))])
        for key in sorted((set(old) | set(new)) - {"path", "sha256", "probe"}):
            if old.get(key) != new.get(key):
                lines.append(_change(f"model {key}", old.get(key), new.get(key)))
    if "config" in held:
        lines += _changes("model config", held["config"], record["config"])
    if "images" in held and held["images"] != record["images"]:
        line = f"images: {held['images']} -> {record['images']}"
        if "image_ids" in held:
            held_ids = set(held["image_ids"])
            gone = held_ids - set(record["image_ids"])
            added = [i for i in record["image_ids"] if i not in held_ids]
            parts = [f"{len(added)} new, first: {added[0]}"] if added else []
            parts += [f"{len(gone)} gone, first: {sorted(gone)[0]}"] if gone else []
            line += f" ({'; '.join(parts)})" if parts else ""
        lines.append(line)
    elif "image_ids" in held and held["image_ids"] != record["image_ids"]:
        held_ids = set(held["image_ids"])
        added = [i for i in record["image_ids"] if i not in held_ids]
        if added:
            lines.append(f"{len(added)} image ids differ (first: {added[0]})")
        else:
            lines.append("the same image ids in another order")
    elif "pixels" in held and held["pixels"] != record["pixels"]:
        lines.append("same ids, different pixels")
    if not lines:
        unknown = [
            what
            for key, what in (
                ("settings", "the settings"),
                ("model", "the model"),
                ("config", "the model's config"),
                ("image_ids", "the image ids"),
                ("pixels", "the pixels"),
            )
            if key not in held
        ]
        if unknown:
            what = " or ".join([", ".join(unknown[:-1]), unknown[-1]] if unknown[:-1] else unknown)
            lines.append(
                f"{what}: its run.json, written before it recorded them, does not say which"
            )
        else:
            lines.append("something its run.json does not record")
    return lines
