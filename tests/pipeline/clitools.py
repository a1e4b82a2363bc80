"""Helpers of the command-line tests: run the installed command, read its errors, make inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from jaxvit_interp import ViTConfig

# A tiny random model keeps every stage fast.
TINY = ViTConfig.from_variant("mu/2", image_size=(8, 8), num_layers=2, num_heads=2, num_classes=3)
# Fast settings for the pattern autoencoders of a tiny model (as a --config file).
AE_FAST = (
    "[analysis]\n"
    "autoencoder = { max_epochs = 3, batch_size = 16, latent_dim = 4, features = [8] }\n"
)
# Fast settings of every other stage. t-SNE draws the pattern maps: UMAP's numba compilation
# takes longer than all the rest of a tiny run, and the demo's test runs the pipeline with UMAP.
FAST = [
    "--chunk-images",
    "4",
    "--partial-images",
    "5",
    "--attention-images",
    "3",
    "--pattern-samples",
    "64",
    "--clusters",
    "3",
    # The head-set stage has its own tests (test_head_sets.py); its compiles would dominate here.
    "--set-images",
    "0",
    "--projection",
    "tsne",
    "--quiet",
]


def command() -> list[str]:
    """The installed ``jaxvit-interp``, or the module when no script is on the PATH."""
    exe = shutil.which("jaxvit-interp")
    return [exe] if exe else [sys.executable, "-m", "jaxvit_interp.cli"]


def cli(*args, timeout=600, env=None, **kwargs) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    env.pop("JAXVIT_DEBUG", None)
    return subprocess.run(
        [*command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """The command's ``main`` in this process, read like :func:`cli`'s subprocess.

    For requests refused before any work: each takes a moment here against a JAX start-up in a
    subprocess, which is most of the time such a case takes. What the installed script adds on
    top of ``main`` (its exit status, a closed pipe) is tested through :func:`cli` elsewhere.
    """
    from jaxvit_interp.cli import main

    args = [str(a) for a in args]
    capsys.readouterr()  # what earlier steps printed is not this command's
    try:
        status = main(args)
    except SystemExit as exit:  # argparse ends a bad command line this way, as in the script
        status = exit.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, no traceback, and the error told in one line (plus indented detail).

    Returns the error's text (first line and detail); each of ``needles`` must be in it.
    """
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.rstrip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if ": error: " in line and line[0] != " "]
    assert len(starts) == 1, result.stderr
    detail = lines[starts[0] + 1 :]
    assert all(line.startswith("  ") for line in detail), result.stderr
    text = "\n".join(lines[starts[0] :])
    for needle in needles:
        assert needle in text, (needle, result.stderr)
    return text


def write_digit_folders(root: Path, digits: dict[str, int], per_class: int) -> dict[str, int]:
    """PNGs of scikit-learn's held-out digits in one folder per name; returns {name: digit}.

    ``digits`` maps a folder name to the digit whose images go in it.
    """
    from jaxvit_interp.data.digits import load_digits

    images, labels = load_digits("test")
    for name, digit in digits.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == digit)[:per_class]:
            # Preprocessed pixels are in [-1, 1]; the loader maps [0, 255] back onto that range.
            pixels = np.round((images[i, ..., 0] + 1) * 127.5).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{i:03d}.png")
    return digits
