"""Progress of long work: a tqdm bar on a terminal, plain lines on stderr elsewhere, or nothing.

Every stage and engine of the package reports through :func:`start_progress`; its ``progress``
argument is what the package's functions take as theirs:

- ``True``: report. On a terminal (stderr is a tty) a tqdm bar with rate and ETA; anywhere else
  (a log file, a pipe, a batch job) lines on stderr: when the stage starts, every
  :data:`LOG_PERCENT` points at most once per :envvar:`JAXVIT_PROGRESS_SECONDS` seconds (default
  :data:`LOG_SECONDS`) with the time taken and an estimate of what is left, and when it ends::

      jaxvit-interp: analysing images: started
      jaxvit-interp: analysing images: 25% (4/16) after 3m12s, about 9m36s left
      jaxvit-interp: analysing images: done in 12m48s

- ``False``: silent.
- a :class:`Share` of a caller's progress (:meth:`Progress.share`): the callee's steps fill those
  steps of the caller's stage and it shows nothing of its own, so that a stage of one step for
  the caller (a chunk of 16 images) still moves while its engines run their batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable

from jaxvit_interp.errors import InputError

LOG_PREFIX = "jaxvit-interp: "
# A line at most every this many percentage points of a stage ...
LOG_PERCENT = 5.0
# ... and at most one every this many seconds (a stage's start and end are always told).
LOG_SECONDS = 10.0
LOG_SECONDS_VARIABLE = "JAXVIT_PROGRESS_SECONDS"


def log_seconds() -> float:
    """The least time between two progress lines: :envvar:`JAXVIT_PROGRESS_SECONDS`, else
    :data:`LOG_SECONDS`."""
    text = os.environ.get(LOG_SECONDS_VARIABLE, "").strip()
    if not text:
        return LOG_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or math.isinf(seconds):
        raise InputError(
            f"{LOG_SECONDS_VARIABLE}={text!r}: expected the seconds between two progress lines, "
            "a number >= 0"
        )
    return seconds


def duration(seconds: float) -> str:
    """``"0.4s"``, ``"12s"``, ``"3m12s"``, ``"2h05m"``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _percent(done: float, total: float) -> int:
    """Whole percent, rounded down: 100 only when all is done."""
    return math.floor(100.0 * done / total + 1e-9)


def _count(value: float) -> str:
    """A step count: whole when it is, else to one decimal (a stage's steps move in shares)."""
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


class Progress:
    """One stage's progress: :meth:`update` as its steps finish, :meth:`close` when it ends.

    As a context manager it closes itself, saying that the stage stopped when an exception
    leaves the block. This base class is the silent one.
    """

    def __init__(self, total: float | None):
        self.total = None if total is None else float(total)
        self.done = 0.0

    def update(self, steps: float = 1.0) -> None:
        self.done += steps

    def note(self, **values) -> None:
        """Figures to show beside the count (a training loss): tqdm's postfix, or the end of
        the next line."""

    def share(self, steps: float) -> Share:
        """``steps`` of this stage, for a callee to fill with its own (its ``progress``)."""
        return Share(self, float(steps))

    def close(self, stopped: bool = False) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(stopped=kind is not None)


@dataclasses.dataclass(frozen=True)
class Share:
    """``steps`` steps of the stage ``parent``, handed to a callee as its ``progress``."""

    parent: Progress
    steps: float


ProgressArg = bool | Share


class _Within(Progress):
    """A callee's steps mapped onto a :class:`Share` of its caller's stage."""

    def __init__(self, share: Share, total: float | None):
        super().__init__(total)
        self._share = share
        self._given = 0.0

    def update(self, steps: float = 1.0) -> None:
        super().update(steps)
        if self.total:
            give = min(self._share.steps, self._share.steps * self.done / self.total)
            self._share.parent.update(give - self._given)
            self._given = give

    def note(self, **values) -> None:
        self._share.parent.note(**values)

    def close(self, stopped: bool = False) -> None:
        # All of the share once the callee is done, whatever its own count came to (an early
        # stop, a step estimate that was off), so the caller's total stays exact.
        if not stopped and self._given < self._share.steps:
            self._share.parent.update(self._share.steps - self._given)
            self._given = self._share.steps


class _Bar(Progress):
    """A tqdm bar on the terminal; the count to one decimal (shares move it by fractions)."""

    def __init__(self, total: float | None, desc: str, unit: str, leave: bool):
        from tqdm.auto import tqdm

        super().__init__(total)
        self._bar = tqdm(
            total=None if total is None else math.ceil(total),
            desc=desc,
            unit=unit,
            leave=leave,
            dynamic_ncols=True,
        )

    def update(self, steps: float = 1.0) -> None:
        super().update(steps)
        # Set, not added: tqdm would add up the float error of many small shares.
        shown = round(self.done, 1)
        self._bar.n = int(shown) if shown == int(shown) else shown
        self._bar.update(0)

    def note(self, **values) -> None:
        self._bar.set_postfix(**values)

    def close(self, stopped: bool = False) -> None:
        self._bar.close()


class LogLines(Progress):
    """Lines on stderr: the start, every :data:`LOG_PERCENT` points at most once per
    ``every`` seconds with elapsed time and what is left, and the end."""

    def __init__(
        self,
        total: float | None,
        desc: str,
        *,
        every: float,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] | None = None,
    ):
        super().__init__(total)
        self._desc, self._every, self._clock = desc, every, clock
        self._write = write or _to_stderr
        self._start = self._last_time = clock()
        self._last_done = 0.0
        self._notes: dict[str, object] = {}
        self._closed = False
        self._say("started")

    def _say(self, text: str) -> None:
        notes = ", ".join(f"{k} {v}" for k, v in self._notes.items())
        self._write(f"{LOG_PREFIX}{self._desc}: {text}{f' ({notes})' if notes else ''}")

    def update(self, steps: float = 1.0) -> None:
        super().update(steps)
        now = self._clock()
        if now - self._last_time < self._every:
            return
        elapsed = now - self._start
        if self.total:
            # Shares add up to the total only to float rounding: at the total, the end line
            # says it.
            if self.done >= self.total * (1 - 1e-9) or self.done <= 0:
                return
            if 100.0 * (self.done - self._last_done) / self.total < LOG_PERCENT:
                return
            left = elapsed * (self.total - self.done) / self.done
            # A stage of one step moves by its shares alone: its percentage says it all.
            count = f" ({_count(self.done)}/{_count(self.total)})" if self.total > 1 else ""
            self._say(
                f"{_percent(self.done, self.total)}%{count} after {duration(elapsed)}, "
                f"about {duration(left)} left"
            )
        else:  # no total to measure against: the count so far
            self._say(f"{_count(self.done)} after {duration(elapsed)}")
        self._last_time, self._last_done = now, self.done

    def note(self, **values) -> None:
        self._notes.update(values)

    def close(self, stopped: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = duration(self._clock() - self._start)
        if not stopped:
            self._say(f"done in {elapsed}")
        elif self.total:
            self._say(f"stopped at {_percent(self.done, self.total)}% after {elapsed}")
        else:
            self._say(f"stopped after {elapsed}")


def _to_stderr(line: str) -> None:
    # sys.stderr looked up on each line: pytest's capture and redirect_stderr replace it.
    print(line, file=sys.stderr, flush=True)


def on_terminal() -> bool:
    """Whether stderr is a terminal (bars) rather than a file or a pipe (lines)."""
    return sys.stderr.isatty()


def start_progress(
    progress: ProgressArg,
    *,
    total: float | None,
    desc: str,
    unit: str = "step",
    leave: bool = True,
) -> Progress:
    """The progress of a stage of ``total`` steps (None: not known), as ``progress`` asks
    (see the module's docstring); ``unit`` names a step on the terminal's bar, ``leave`` keeps
    the bar there once done."""
    if isinstance(progress, Share):
        return _Within(progress, total)
    if not progress:
        return Progress(total)
    if on_terminal():
        return _Bar(total, desc, unit, leave)
    return LogLines(total, desc, every=log_seconds())
