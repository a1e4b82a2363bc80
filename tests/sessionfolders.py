"""Folders made once per test session and shared by every pytest-xdist worker."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder ``name``, filled by ``make(folder)`` once in the whole test session.

    With pytest-xdist every worker has its own temporary folder; their common parent holds the
    shared folder, and a file lock lets the first worker that asks make it while any other waits
    for it. A folder left unfinished by a failed ``make`` is made again by the next caller.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    done = folder / ".made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.is_file():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                make(folder)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder
