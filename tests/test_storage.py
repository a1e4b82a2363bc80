"""Atomic writes: a failed write leaves the old file and no temporary one; corrupt archives are
named; file-system errors are told as one line."""

import errno
import os
import stat

import numpy as np
import pytest

from jaxvit_interp.errors import environment_error_message
from jaxvit_interp.storage import (
    UnreadableFileError,
    atomic_write,
    load_npz,
    orbax_write,
    save_npz,
    write_text,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "part.npz"
    save_npz(target, {"a": np.arange(3)})

    def fail(f):
        f.write(b"half of a new file")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_write(target, fail)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert sorted(os.listdir(tmp_path)) == ["part.npz"]
    np.testing.assert_array_equal(load_npz(target)["a"], np.arange(3))

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda f: (_ for _ in ()).throw(KeyboardInterrupt))
    assert sorted(os.listdir(tmp_path)) == ["part.npz"]


def test_written_files_are_readable_like_ordinary_ones(tmp_path):
    """Temporary files are private while written; the result has the umask's permissions."""
    mask = os.umask(0o022)
    try:
        path = write_text(tmp_path / "index.html", "<html></html>")
    finally:
        os.umask(mask)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~mask and path.read_text() == "<html></html>"


def test_truncated_archive_is_named(tmp_path, rng):
    path = tmp_path / "chunk.npz"
    save_npz(path, {"x": rng.normal(size=(64, 64))})
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(UnreadableFileError, match=r"chunk.npz: not a readable"):
            load_npz(path)


def test_orbax_write_refuses_a_disk_without_room(tmp_path):
    with pytest.raises(OSError) as err, orbax_write(tmp_path / "ckpt", array_bytes=1 << 62):
        raise AssertionError("the save must not start")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "ckpt")


def test_environment_errors_are_one_line_and_bugs_are_not_told():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/chunks/c.npz")
    assert environment_error_message(full) == (
        "No space left on device: /data/run/chunks/c.npz (free some space and rerun the same "
        "command: finished parts are kept)"
    )
    assert "read-only" in environment_error_message(
        OSError(errno.EROFS, "Read-only file system", "/ro")
    )
    assert environment_error_message(OSError(errno.EBADF, "Bad file descriptor")) is None
