"""Writing files so that an interruption, a full disk or a second process never leaves a file
that reads as valid, nor a temporary file behind.

Every file the project writes (chunks, bundle parts, ``run.json``, the site) goes through
:func:`atomic_write`: the content is written to a temporary file with a unique name in the same
folder, flushed to disk, then renamed over the target in one step. If anything fails on the way
(``ENOSPC``, ``Ctrl-C``), the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import shutil
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jaxvit_interp.errors import InputError

__all__ = [
    "UnreadableFileError",
    "atomic_npy",
    "atomic_write",
    "load_npy",
    "load_npz",
    "orbax_write",
    "page_releaser",
    "read_rows",
    "save_npz",
    "write_text",
]


class UnreadableFileError(InputError):
    """A file that exists but cannot be read as what it should be (truncated or corrupt)."""


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a written file gets the permissions an
# ordinary open() would give it, so a published site stays readable by a web server.
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    # A unique name: two processes (or hosts on a shared file system) never share a temp file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and err.errno is not None and not err.filename:
            # Writes into an open file say what failed but not where; the user needs the where.
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from None
        raise
    return path


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` of ``arrays`` to ``path``, atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


@contextlib.contextmanager
def atomic_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype) -> Iterator[np.ndarray]:
    """A writable memory-mapped ``.npy`` array of ``shape`` that becomes ``path`` on a clean exit.

    For arrays filled piece by piece that are too large to hold in memory: the array lives in a
    temporary file beside ``path`` until the ``with`` block ends, then is flushed and renamed.
    A writer that fills it a piece at a time releases the pages it has written as it goes
    (:func:`page_releaser`), or they all count in its resident memory until the block ends.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
        # The file is sparse until written; its blocks are reserved now, so that a full disk is
        # an ENOSPC here and not a SIGBUS at the first write into a page the disk has no room for.
        with open(tmp, "rb+") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as err:
                if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    pass  # a file system that cannot reserve: written as it is filled
                else:
                    raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
        yield array
        array.flush()
        del array
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def page_releaser(array) -> Callable[[], None] | None:
    """A function that drops this process's resident pages of the shared file mapping behind
    ``array`` (a :class:`numpy.memmap` opened ``r``, ``r+`` or ``w+``, or a view of one), or None
    for an array that is not such a mapping.

    Every page of a file read or written through a mapping counts in the process's resident
    memory until the mapping is closed, so a file read a slice at a time would end up counted
    whole. Released pages stay in the kernel's page cache (written back when changed) and are
    mapped again when next used: the array's content is unchanged. A copy-on-write mapping
    (``c``) is left alone: its changed pages exist nowhere else.
    """
    if not isinstance(array, np.memmap) or array.mode not in ("r", "r+", "w+"):
        return None
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    return lambda: base.madvise(mmap.MADV_DONTNEED)


# How much :func:`read_rows` copies between two releases of a mapping's pages: the most that
# reading a mapped file adds to resident memory.
READ_BLOCK_BYTES = 32 << 20


def read_rows(array: np.ndarray, index) -> np.ndarray:
    """``array[index]`` (a slice or integer indices along the first axis), copied into memory.

    From a memory-mapped file (:func:`page_releaser`) the rows are read a block at a time and
    the mapping's pages released after each block: resident memory holds the result and one
    block, never the file.
    """
    release = page_releaser(array)
    if release is None:
        return np.array(array[index])
    if isinstance(index, slice):
        start, stop, step = index.indices(len(array))
        index = range(start, stop, step)
    else:
        index = np.asarray(index)
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.itemsize
    block = max(1, READ_BLOCK_BYTES // max(1, row_bytes))
    out = np.empty((len(index), *array.shape[1:]), array.dtype)
    for at in range(0, len(index), block):
        part = index[at : at + block]
        if isinstance(part, range) and part.step == 1:
            out[at : at + len(part)] = array[part.start : part.stop]
        else:
            out[at : at + len(part)] = array[np.asarray(part)]
        release()
    return out


def load_npy(path: str | os.PathLike, what: str = ".npy array") -> np.ndarray:
    """The ``.npy`` array at ``path``, memory-mapped read-only (nothing is read until used)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as err:
        raise UnreadableFileError(
            f"{path}: not a readable {what} (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None


def write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 ``text`` to ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_npz(path: str | os.PathLike, what: str = ".npz archive") -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, read into memory.

    Object arrays are refused (``allow_pickle=False``): loading them would run code from the
    file. A truncated or corrupt archive raises :class:`UnreadableFileError` naming ``path``;
    errors of the file system itself (permission denied, a missing file) pass through as the
    ``OSError`` they are.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
        raise UnreadableFileError(
            f"{path}: not a readable {what} (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None
    except OSError as err:
        if err.errno is not None:
            raise
        raise UnreadableFileError(
            f"{path}: not a readable {what} (truncated or corrupt?): {err}"
        ) from None


# What tensorstore (under orbax) says for the file-system errors it hits, and their errno.
_STORE_ERRORS = (
    ("No space left on device", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("Read-only file system", errno.EROFS),
    ("Permission denied", errno.EACCES),
    ("Operation not permitted", errno.EPERM),
)


# Room an orbax checkpoint takes beyond its arrays: metadata files, one file-system block each.
_ORBAX_OVERHEAD = 1 << 20


@contextlib.contextmanager
def orbax_write(path: str | os.PathLike, array_bytes: int = 0) -> Iterator[None]:
    """Guard an orbax save of the checkpoint folder ``path`` holding ``array_bytes`` of arrays.

    A disk without room for twice the arrays plus a margin is reported before orbax starts:
    once orbax's writes are in flight, a full disk fails them in tensorstore's own threads,
    which go on printing tracebacks after the save has given up. orbax writes into
    ``<path>.orbax-checkpoint-tmp*`` and renames it when complete, so a failed save never
    leaves ``path`` looking finished; this removes those temporary folders too. A file-system
    failure comes back as the ``OSError`` it is, naming ``path`` (orbax reports it as a
    ``ValueError``), and the worker threads' own logging is kept quiet meanwhile.
    """
    path = Path(path)
    existing = path if path.exists() else path.parent
    while not existing.exists():
        existing = existing.parent
    if shutil.disk_usage(existing).free < 2 * array_bytes + _ORBAX_OVERHEAD:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    absl = logging.getLogger("absl")
    level, hook = absl.level, threading.excepthook
    absl.setLevel(logging.CRITICAL)
    threading.excepthook = lambda args: None
    try:
        yield
    except Exception as err:
        for tmp in path.parent.glob(f"{path.name}.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        text = str(err)
        for needle, code in _STORE_ERRORS:
            if needle in text:
                raise OSError(code, os.strerror(code), str(path)) from None
        raise
    finally:
        absl.setLevel(level)
        threading.excepthook = hook
