"""What ``analyze`` tells a log file: each stage's start and end in order, and lines with the
time taken and what is left that move inside one chunk of images."""

from __future__ import annotations

import re

import pytest

PERCENT = re.compile(
    r"^jaxvit-interp: (?P<stage>[^:]+): (?P<pct>\d+)%(?: \([\d.]+/[\d.]+\))? "
    r"after [\dhms.]+, about [\dhms.]+ left"
)
STAGES = [
    "analysing images",
    "training the cls pattern autoencoder",
    "training the patch pattern autoencoder",
    "ablating head sets",
    "projecting the cls patterns",
    "projecting the patch patterns",
]


def stage_log(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("jaxvit-interp: ")]


def percentages(lines: list[str], stage: str) -> list[int]:
    return [int(m["pct"]) for m in map(PERCENT.match, lines) if m and m["stage"] == stage]


@pytest.mark.slow
def test_a_run_logged_to_a_file_tells_each_stage_and_its_progress(digits_head_sets_run):
    settings, out = digits_head_sets_run[4], digits_head_sets_run[5]
    lines = stage_log((out.parent / "stderr.txt").read_text())
    assert lines, "the run logged nothing"
    # Each stage starts and ends, in the order the run does them, and ends before the next.
    marks = [
        line.removeprefix("jaxvit-interp: ")
        for line in lines
        if line.endswith(": started") or re.search(r": done in [\dhms.]+(?: \(.*\))?$", line)
    ]
    expected = [f"{s}: {w}" for s in STAGES for w in ("started", "done")]
    assert [re.sub(r"done in .*", "done", m) for m in marks] == expected, lines
    # The 24 images are one chunk: the engines' batches move the stage through it, so there
    # are lines below 100%, each later one further on.
    assert settings.chunk_images >= 24
    for stage in ("analysing images", "ablating head sets"):
        shown = percentages(lines, stage)
        assert len(shown) >= 3 and shown == sorted(shown) and shown[-1] < 100, (stage, lines)
        # ... all of them between the stage's start and its end.
        own = [i for i, line in enumerate(lines) if line.startswith(f"jaxvit-interp: {stage}: ")]
        assert lines[own[0]].endswith(": started") and ": done in " in lines[own[-1]]
        assert own == list(range(own[0], own[-1] + 1)), lines
    # Only stages speak: the engines inside them report into their stage's line.
    named = {line.split(": ")[1] for line in lines}
    assert named == set(STAGES), named
    assert "%|" not in "\n".join(lines)  # no terminal bars in a log file
