"""One command at a time in a run folder: the lock, what a second command is told, and that a
stopped or refused command leaves the folder as it was."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from clitools import TINY, assert_one_line_error, cli

from jaxvit_interp import init_params
from jaxvit_interp.pipeline.analyze import analyze
from jaxvit_interp.pipeline.run_folder import LOCK_FILE, RunFolder, RunFolderInUse, RunState

# A process that holds the folder's lock until its stdin closes.
HOLDER = textwrap.dedent(
    """
    import sys
    from jaxvit_interp.pipeline.run_folder import RunFolder
    with RunFolder(sys.argv[1]).lock():
        print("held", flush=True)
        sys.stdin.read()
    """
)


def _hold(folder) -> subprocess.Popen:
    """A process that holds ``folder`` once this returns."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    return process


def _let_go(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.stdin.close()
        assert process.wait(timeout=60) == 0


@pytest.fixture
def holder(tmp_path):
    """A process holding ``tmp_path / "run"``: ``(the process, the folder)``."""
    folder = tmp_path / "run"
    process = _hold(folder)
    yield process, folder
    _let_go(process)


def _contents(folder):
    return sorted(
        (str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None)
        for p in folder.rglob("*")
        if p.name != LOCK_FILE
    )


def test_a_second_command_is_told_who_holds_the_folder(holder):
    process, folder = holder
    with pytest.raises(RunFolderInUse) as caught:
        with RunFolder(folder).lock():
            pass
    message = str(caught.value)
    assert f"process {process.pid} on " in message, message
    assert "-c" in message and "stays resumable" in message and "\n" not in message
    # The library's analyze is refused the same way, before any work, touching nothing.
    params = init_params(TINY, 0)
    images = np.random.default_rng().standard_normal((8, 8, 8, 3), np.float32)
    before = _contents(folder)
    with pytest.raises(RunFolderInUse, match=f"process {process.pid} "):
        analyze(TINY, params, images, folder, progress=False)
    assert _contents(folder) == before
    # Once the holder ends, the folder is free again.
    _let_go(process)
    with RunFolder(folder).lock():
        assert (folder / LOCK_FILE).exists()


def test_a_killed_holder_leaves_no_stale_lock(holder):
    process, folder = holder
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    # The lock file is still there (nothing removed it), but the kernel's lock died with it.
    assert (folder / LOCK_FILE).exists()
    with RunFolder(folder).lock():
        pass


def test_the_same_process_may_lock_again_and_keeps_the_lock_until_the_outer_block_ends(
    tmp_path,
):
    folder = tmp_path / "deep" / "run"
    with RunFolder(folder).lock():
        with RunFolder(folder).lock():  # analyze inside the command line's lock
            pass
        # Still held: another process is refused.
        other = subprocess.run(
            [sys.executable, "-c", HOLDER, str(folder)],
            input="",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode != 0 and "RunFolderInUse" in other.stderr, other.stderr
        assert f"process {os.getpid()} on " in other.stderr
    # Nothing came into the folders made for the lock: they are gone again.
    assert not (tmp_path / "deep").exists()


def test_run_state_crosses_to_other_processes_as_json(rng):
    import json

    done = tuple(sorted(set(rng.integers(0, 100, size=int(rng.integers(0, 10))).tolist())))
    state = RunState(complete=bool(rng.integers(2)), done=done)
    assert RunState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_the_command_line_says_it_in_one_line_and_the_folder_stays_as_it_was(
    reference_run, tmp_path
):
    folder = tmp_path / "run"
    shutil.copytree(reference_run.run, folder)
    before = _contents(folder)
    process = _hold(folder)
    try:
        refused = cli(*reference_run.args(folder))
        assert_one_line_error(refused, f"process {process.pid} on ", "stays resumable")
        assert _contents(folder) == before
    finally:
        _let_go(process)
    # The same command afterwards finds its run finished: nothing redone, nothing changed.
    again = cli(*reference_run.args(folder))
    assert again.returncode == 0, again.stderr
    assert _contents(folder) == before
