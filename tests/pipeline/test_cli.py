"""The installed ``jaxvit-interp`` command, driven in subprocesses as a new user would."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jaxvit_interp import ViTConfig, init_params, save_checkpoint
from jaxvit_interp.bundle import IMPORTANCE_METRICS, load_bundle

# A tiny random model keeps every analysis stage fast; fast settings for the autoencoder too.
CONFIG = ViTConfig.from_variant("mu/2", image_size=(8, 8), num_layers=2, num_heads=2, num_classes=3)
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
    "--quiet",
]
AE_FAST = "[analysis]\nautoencoder = { max_epochs = 3, batch_size = 16, latent_dim = 4, features = [8] }\n"


def cli(*args, timeout=600, env=None):
    exe = shutil.which("jaxvit-interp")
    cmd = [exe] if exe else [sys.executable, "-m", "jaxvit_interp.cli"]
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, CONFIG, init_params(CONFIG, 1))
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Class subfolders of small PNGs, plus the files a real folder holds: odd modes and junk."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng()
    for name in ["cat", "dog", "owl"]:
        (root / name).mkdir()
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
    (root / "config.toml").write_text(AE_FAST)
    return root


def analyze_args(checkpoint, image_folder, out):
    return [
        "analyze",
        "--checkpoint",
        checkpoint,
        "--images",
        image_folder,
        "--out",
        out,
        "--config",
        image_folder / "config.toml",
        *FAST,
    ]


def test_analyze_folder_reports_bad_files_and_analyses_the_rest(checkpoint, image_folder, tmp_path):
    result = cli(*analyze_args(checkpoint, image_folder, tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stderr and "notes.txt" in result.stderr
    bundle = load_bundle(tmp_path / "run")
    ids = bundle.meta["image_ids"]
    assert len(ids) == 14 and any("gray" in i for i in ids) and any("rgba" in i for i in ids)
    assert not any("broken" in i or "notes" in i for i in ids)
    for metric in IMPORTANCE_METRICS:
        assert bundle["importance"][metric].shape == (14, 2, 2)
    assert bundle["strength"]["strength"].shape == (14, 2, 2, 4)  # 4x4 grid: hops 0..3
    # Labels came from the subfolders, in the folder's class order.
    labels = bundle["images"]["labels"]
    assert [bundle.meta["class_names"][y] for y in labels] == [i.split("/")[0] for i in ids]

    site = cli("site", tmp_path / "run", "--out", tmp_path / "site")
    assert site.returncode == 0, site.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Bokeh" in html and "cdn.bokeh.org" not in html


def test_resume_after_kill_equals_uninterrupted_run(checkpoint, image_folder, tmp_path):
    reference = cli(*analyze_args(checkpoint, image_folder, tmp_path / "whole"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    exe = shutil.which("jaxvit-interp")
    cmd = [exe] if exe else [sys.executable, "-m", "jaxvit_interp.cli"]
    proc = subprocess.Popen(
        [*cmd, *map(str, analyze_args(checkpoint, image_folder, out))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "chunks").glob("chunk-*.npz")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in (out / "chunks").glob("chunk-*.npz"))
    assert done_before, "the run was killed before it wrote a chunk"
    assert not (out / "bundle.json").exists(), "the run finished before it was killed"

    resumed = cli(*analyze_args(checkpoint, image_folder, out))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_bundle(tmp_path / "whole"), load_bundle(out)
    for part in ("images", "importance", "strength", "partial", "attention", "patterns"):
        for name, value in a[part].items():
            np.testing.assert_allclose(
                b[part][name], value, rtol=1e-6, atol=1e-6, err_msg=f"{part}/{name}"
            )


def _one_line_error(result, needle):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("jaxvit-interp: error:"), result.stderr
    assert needle in lines[-1], result.stderr


def test_bad_arguments_end_with_one_clear_line(checkpoint, image_folder, tmp_path):
    _one_line_error(
        cli(
            "analyze",
            "--checkpoint",
            tmp_path / "nope.npz",
            "--images",
            image_folder,
            "--out",
            tmp_path / "r",
        ),
        "nope.npz",
    )
    (tmp_path / "empty").mkdir()
    _one_line_error(
        cli(
            "analyze",
            "--checkpoint",
            checkpoint,
            "--images",
            tmp_path / "empty",
            "--out",
            tmp_path / "r",
        ),
        "empty",
    )
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "a.png")
    labels = tmp_path / "labels.csv"

    def analyze_flat():
        args = ["--checkpoint", checkpoint, "--images", flat, "--labels", labels]
        return cli("analyze", *args, "--out", tmp_path / "r")

    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], ["a.png", "0"], ["ghost.png", "1"]])
    _one_line_error(analyze_flat(), "ghost.png")
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], ["a.png", "7"]])
    _one_line_error(analyze_flat(), "7")
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text('{"fingerprint": "0123456789abcdef"}')
    _one_line_error(cli(*analyze_args(checkpoint, image_folder, other)), "another run")


def test_analyze_sharded_over_four_devices_equals_one(checkpoint, image_folder, tmp_path):
    one = cli(*analyze_args(checkpoint, image_folder, tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    four = cli(*analyze_args(checkpoint, image_folder, tmp_path / "four"), env=env)
    assert four.returncode == 0, four.stderr
    a, b = load_bundle(tmp_path / "one"), load_bundle(tmp_path / "four")
    # Each bundle records where it ran.
    assert a.meta["devices"] == {"platform": "cpu", "kind": "cpu", "count": 1}
    assert b.meta["devices"] == {"platform": "cpu", "kind": "cpu", "count": 4}
    for part in ("importance", "strength", "partial"):
        for name, value in a[part].items():
            np.testing.assert_allclose(
                b[part][name], value, rtol=1e-5, atol=1e-6, err_msg=f"{part}/{name}"
            )


@pytest.mark.slow
def test_demo_writes_the_site_and_a_second_run_reuses_the_analysis(tmp_path):
    out = tmp_path / "demo"
    first = cli("demo", "--out", out, "--quiet")
    assert first.returncode == 0, first.stderr
    html = out / "index.html"
    assert str(html) in first.stdout
    page = html.read_text()
    assert "Bokeh" in page and "cdn.bokeh.org" not in page and "<script src=" not in page
    bundle = load_bundle(out / "run")
    assert (
        len(bundle.meta["image_ids"]) == 300
        and bundle.meta["checkpoint"]["path"] == "builtin:digits"
    )
    # The shipped model is good: its predictions agree with the held-out labels.
    images = bundle["images"]
    assert (images["predictions"] == images["labels"]).mean() > 0.9
    chunks = {p: p.stat().st_mtime_ns for p in (out / "run" / "chunks").iterdir()}
    second = cli("demo", "--out", out, "--quiet")
    assert second.returncode == 0, second.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "run" / "chunks").iterdir()} == chunks
