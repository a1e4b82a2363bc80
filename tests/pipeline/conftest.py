import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The helpers module beside this file (tests are imported with importlib, not as a package).
sys.path.insert(0, os.path.dirname(__file__))
from clitools import AE_FAST, FAST, TINY, cli  # noqa: E402
from sessionfolders import made_once  # noqa: E402

from jaxvit_interp import init_params, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny 3-class random model, without class names, in the project's own format."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, TINY, init_params(TINY, 1))
    return path


@dataclass(frozen=True)
class ReferenceRun:
    """A finished ``analyze`` of the tiny model on a small image folder, its inputs, and what it
    wrote to stderr (without ``--quiet``)."""

    checkpoint: Path
    images: Path
    config: Path
    run: Path
    stderr: str

    def args(self, out) -> list:
        """The same ``analyze`` command, writing to ``out``."""
        return [
            "analyze",
            "--checkpoint",
            self.checkpoint,
            "--images",
            self.images,
            "--out",
            out,
            "--config",
            self.config,
            *FAST,
        ]


def _write_reference_inputs(folder: Path) -> None:
    """Class subfolders of small PNGs, plus the files a real folder holds: odd modes and junk."""
    save_checkpoint(folder / "checkpoint", TINY, init_params(TINY, 1))
    root = folder / "images"
    rng = np.random.default_rng()
    for name in ["cat", "dog", "owl"]:
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(
        root / "cat" / "gray.png"
    )
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(
        root / "dog" / "rgba.png"
    )
    (root / "owl" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "owl" / "notes.txt").write_text("not an image")
    (folder / "config.toml").write_text(AE_FAST)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> ReferenceRun:
    """One uninterrupted single-device run that the command-line tests compare against.

    Several tests need such a run (the sharded run, the resumed one, the one on a full disk);
    it is made once per session rather than once per test, and only read afterwards.
    """

    def reference(folder: Path) -> ReferenceRun:
        return ReferenceRun(
            checkpoint=folder / "checkpoint",
            images=folder / "images",
            config=folder / "config.toml",
            run=folder / "run",
            stderr=(folder / "stderr.txt").read_text() if (folder / "stderr.txt").is_file() else "",
        )

    def make(folder: Path) -> None:
        _write_reference_inputs(folder)
        # Every test that compares with this run waits for it: a generous limit, as for the
        # multi-process runs. It is not --quiet: its stderr, a pipe, is the log a batch job
        # keeps, with a progress line at every few percent (no wait between them).
        args = [a for a in reference(folder).args(folder / "run") if a != "--quiet"]
        env = {**os.environ, "JAXVIT_PROGRESS_SECONDS": "0"}
        result = cli(*args, timeout=1800, env=env)
        assert result.returncode == 0, result.stderr
        (folder / "stderr.txt").write_text(result.stderr)

    return reference(made_once(tmp_path_factory, "reference-run", make))
