"""Progress reports: lines in a log (how often, what they say), bars on a terminal, nothing when
silent, and shares that let a callee's batches move its caller's stage."""

import fcntl
import os
import pty
import re
import select
import struct
import sys
import tempfile
import termios
import time

import numpy as np
import pytest

from jaxvit_interp.errors import InputError
from jaxvit_interp.progress import (
    LOG_PERCENT,
    LOG_SECONDS_VARIABLE,
    LogLines,
    duration,
    log_seconds,
    start_progress,
)

LINE = re.compile(
    r"^jaxvit-interp: (?P<desc>[^:]+): (?P<pct>\d+)% \((?P<done>[\d.]+)/(?P<total>[\d.]+)\) "
    r"after (?P<elapsed>\S+), about (?P<left>\S+) left$"
)


def seconds(text: str) -> float:
    """The inverse of :func:`duration`, to the precision it writes."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", text)
    assert parts and text, text
    h, m, s = (float(p) if p else 0.0 for p in parts.groups())
    return 3600 * h + 60 * m + s


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0.44, 9.96, 12.4, 59.4, 192, 3599, 7500)] == [
        "0.4s",
        "10.0s",
        "12s",
        "59s",
        "3m12s",
        "59m59s",
        "2h05m",
    ]


def test_a_log_line_at_most_every_few_percent_and_ten_seconds_with_what_is_left(rng):
    now, lines = [0.0], []
    total = int(rng.integers(40, 400))
    bar = LogLines(total, "analysing images", every=10.0, clock=lambda: now[0], write=lines.append)
    events = []  # (time, steps done, lines written by this update)
    done = 0
    while done < total:
        step = min(total - done, int(rng.integers(1, max(2, total // 12))))
        now[0] += float(rng.exponential(4.0))
        before = len(lines)
        bar.update(step)
        done += step
        events.append((now[0], done, len(lines) - before))
    now[0] += 2.5
    bar.close()

    assert lines[0] == "jaxvit-interp: analysing images: started"
    assert lines[-1] == f"jaxvit-interp: analysing images: done in {duration(now[0])}"
    progress = [LINE.match(line) for line in lines[1:-1]]
    assert all(progress), lines
    # The rule, event by event: a line exactly when both 10 s and 5 points have passed since the
    # last one (the start counts as one), and none for the last step (the end line says it).
    last_time, last_done, expected = 0.0, 0, []
    for t, d, written in events:
        due = d < total and t - last_time >= 10.0 and 100 * (d - last_done) / total >= LOG_PERCENT
        assert written == int(due), (t, d, written, due)
        if due:
            expected.append((t, d))
            last_time, last_done = t, d
    assert len(progress) == len(expected)
    for m, (t, d) in zip(progress, expected):
        assert m["desc"] == "analysing images"
        assert int(m["pct"]) == 100 * d // total  # rounded down: 100 only at the end
        assert (float(m["done"]), float(m["total"])) == (d, total)
        assert seconds(m["elapsed"]) == pytest.approx(t, abs=0.5)
        # What is left: the time so far, scaled by the steps left over those done.
        left = t * (total - d) / d
        assert seconds(m["left"]) == pytest.approx(left, abs=0.05 if left < 10 else 0.5)
    times = [t for t, _ in expected]
    assert all(b - a >= 10.0 for a, b in zip(times, times[1:]))


def test_a_stage_that_fails_says_where_it_stopped():
    now, lines = [0.0], []
    with pytest.raises(RuntimeError):
        with LogLines(8, "hop strength", every=0.0, clock=lambda: now[0], write=lines.append) as b:
            now[0] = 3.0
            b.update(2)
            raise RuntimeError("a bad batch")
    assert lines[-1] == "jaxvit-interp: hop strength: stopped at 25% after 3.0s"


def test_shares_move_their_callers_stage_by_their_weight(rng):
    lines, dones = [], []
    parent = LogLines(100, "whole", every=0.0, write=lines.append)
    weights = rng.dirichlet(np.ones(5)) * 100
    for w in weights:
        start = parent.done
        steps = int(rng.integers(1, 12))
        child = start_progress(parent.share(w), total=steps, desc="inner")
        for k in range(steps):
            child.update(1)
            dones.append(parent.done)
            assert parent.done == pytest.approx(start + w * (k + 1) / steps)
        child.close()
        assert parent.done == pytest.approx(start + w)
    assert parent.done == pytest.approx(100)
    assert not any("inner" in line for line in lines)  # a share shows nothing of its own
    # The parent's own rule, followed here: a line once 5 points have passed since the last
    # one, none at the total (the end line says that).
    expected, last = [], 0.0
    for done in dones:
        if done < 100 * (1 - 1e-9) and done - last >= 5:
            expected.append(round(done))
            last = done
    shown = [int(m["pct"]) for line in lines if (m := LINE.match(line))]
    assert len(shown) == len(expected), (shown, expected)


def test_a_share_is_filled_when_its_callee_ends_early_but_not_when_it_fails():
    parent = LogLines(10, "whole", every=1e9, write=lambda line: None)
    child = start_progress(parent.share(4), total=50, desc="epochs")  # stops after 3 of 50
    for _ in range(3):
        child.update(1)
    assert parent.done == pytest.approx(4 * 3 / 50)
    child.close()
    assert parent.done == pytest.approx(4)
    # Shares nest: a grandchild fills its part of its parent's part.
    child = start_progress(parent.share(6), total=2, desc="pairs")
    grandchild = start_progress(child.share(1), total=4, desc="batches")
    grandchild.update(2)
    assert parent.done == pytest.approx(4 + 6 * 0.5 * 0.5)
    with pytest.raises(KeyError):
        with grandchild:
            raise KeyError("failed")
    assert parent.done == pytest.approx(4 + 6 * 0.5 * 0.5)


def test_silent_progress_says_nothing(capfd):
    with start_progress(False, total=3, desc="quiet") as bar:
        bar.update(3)
    assert capfd.readouterr().err == ""


def test_the_seconds_between_lines_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(LOG_SECONDS_VARIABLE, "2.5")
    assert log_seconds() == 2.5
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv(LOG_SECONDS_VARIABLE, bad)
        with pytest.raises(InputError, match=rf"{LOG_SECONDS_VARIABLE}='{bad}'"):
            start_progress(True, total=1, desc="stage")


def _report() -> None:
    with start_progress(True, total=4, desc="demo stage", unit="img") as bar:
        for _ in range(4):
            time.sleep(0.05)
            bar.update(0.5)
            bar.update(0.5)


def _read_terminal(leader: int) -> str:
    """Everything written to the pseudo-terminal so far. The kernel moves what was written to
    the reading side in pieces, later under load: read until nothing more comes for a while."""
    chunks = []
    while select.select([leader], [], [], 1.0)[0]:
        chunks.append(os.read(leader, 1 << 16))
    return b"".join(chunks).decode()


def test_a_terminal_gets_a_bar_and_a_pipe_gets_lines(monkeypatch):
    monkeypatch.setenv(LOG_SECONDS_VARIABLE, "0")
    # stderr a pseudo-terminal of 100 columns: what tqdm draws there is read back from it.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with open(follower, "w", closefd=True) as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        _report()
        terminal.flush()
        shown = _read_terminal(leader)
    os.close(leader)
    assert "demo stage: 100%|" in shown and "| 4/4 [" in shown, shown
    assert re.search(r"\| \d\.5/4 \[", shown), shown  # a share's half steps move it too
    assert "jaxvit-interp:" not in shown

    with tempfile.TemporaryFile("w+") as log:  # a log file: not a terminal
        monkeypatch.setattr(sys, "stderr", log)
        _report()
        log.seek(0)
        lines = log.read().splitlines()
    assert lines[0] == "jaxvit-interp: demo stage: started"
    assert [int(LINE.match(line)["pct"]) for line in lines[1:-1]] == [12, 25, 37, 50, 62, 75, 87]
    assert re.fullmatch(r"jaxvit-interp: demo stage: done in [\d.]+s", lines[-1])
    assert not any("|" in line for line in lines)
