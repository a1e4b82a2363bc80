"""The installed ``jaxvit-interp`` command, driven in subprocesses as a new user would."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error, cli, run_main
from PIL import Image

from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.quantities import METRIC_NAMES


def test_analyze_folder_reports_bad_files_and_analyses_the_rest(reference_run, tmp_path):
    # The shared run is this command on a folder with junk in it (see conftest.py).
    run, stderr = reference_run.run, reference_run.stderr
    assert "broken.png" in stderr and "notes.txt" in stderr
    bundle = load_bundle(run)
    ids = bundle.meta["image_ids"]
    assert len(ids) == 14 and any("gray" in i for i in ids) and any("rgba" in i for i in ids)
    assert not any("broken" in i or "notes" in i for i in ids)
    for metric in METRIC_NAMES:
        assert bundle["importance"][metric].shape == (14, 2, 2)
    assert bundle["strength"]["strength"].shape == (14, 2, 2, 4)  # 4x4 grid: hops 0..3
    # The model names no classes and the three folders are as many as its classes: they are
    # taken in sorted order, and the run says so.
    assert "taken to be the 3 labels in sorted order" in stderr
    labels = bundle["images"]["labels"]
    assert [bundle.meta["class_names"][y] for y in labels] == [i.split("/")[0] for i in ids]

    site = cli("site", run, "--out", tmp_path / "site")
    assert site.returncode == 0, site.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Bokeh" in html and "cdn.bokeh.org" not in html
    # auto: a small run is one file, every image's record inline.
    assert html.count("<script>jaxvitRecord(") == 14
    assert not [p for p in (tmp_path / "site").iterdir() if p.name != "index.html"]
    # --layout folder: one record script per image beside the page, which names their folder.
    site = cli("site", run, "--out", tmp_path / "site", "--layout", "folder")
    assert site.returncode == 0, site.stderr
    (data,) = (tmp_path / "site").glob("data-*")
    assert sorted(p.name for p in (data / "images").iterdir()) == [f"{i:06d}.js" for i in range(14)]
    assert f"{data.name}/images" in (tmp_path / "site" / "index.html").read_text()
    assert_one_line_error(
        cli("site", run, "--out", tmp_path / "site", "--layout", "pages"),
        "--layout",
        "pages",
    )


def test_analyze_logs_its_stages_when_stderr_is_not_a_terminal(reference_run):
    """The shared run's stderr was a pipe: lines, not bars, for each stage and its progress."""
    told = [
        line.removeprefix("jaxvit-interp: ")
        for line in reference_run.stderr.splitlines()
        if line.startswith("jaxvit-interp: ")
    ]
    stages = ["loading images in images", "analysing images"]
    stages += [f"training the {k} pattern autoencoder" for k in ("cls", "patch")]
    stages += [f"projecting the {k} patterns" for k in ("cls", "patch")]  # --set-images 0
    # Each stage starts and ends before the next starts.
    marks = [re.sub(r": done in .*", ": done", t) for t in told if re.search(": (started|done)", t)]
    assert marks == [f"{s}: {w}" for s in stages for w in ("started", "done")], told
    moving = [
        t
        for t in told
        if re.fullmatch(r"analysing images: \d+% \([\d.]+/14\) after \S+, about \S+ left", t)
    ]
    assert len(moving) >= 3, told
    assert "%|" not in reference_run.stderr  # no terminal bar in a pipe


def test_a_bad_progress_interval_is_refused_before_any_work(tmp_path):
    env = {**os.environ, "JAXVIT_PROGRESS_SECONDS": "soon"}
    args = ["--checkpoint", "builtin:digits", "--images", "builtin:digits", "--out", tmp_path / "r"]
    assert_one_line_error(cli("analyze", *args, env=env), "JAXVIT_PROGRESS_SECONDS='soon'")
    assert not (tmp_path / "r").exists()


def test_bad_arguments_end_with_one_clear_line(tiny_checkpoint, tmp_path, capsys):
    image_folder = tmp_path / "images"
    (image_folder / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image_folder / "cat" / "a.png")
    assert_one_line_error(
        run_main(
            capsys,
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
    assert_one_line_error(
        run_main(
            capsys,
            "analyze",
            "--checkpoint",
            tiny_checkpoint,
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
        args = ["--checkpoint", tiny_checkpoint, "--images", flat, "--labels", labels]
        return run_main(capsys, "analyze", *args, "--out", tmp_path / "r")

    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], ["a.png", "0"], ["ghost.png", "1"]])
    assert_one_line_error(analyze_flat(), "ghost.png")
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], ["a.png", "7"]])
    assert_one_line_error(analyze_flat(), "7")


def test_analyze_sharded_over_four_devices_equals_one(reference_run, tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
        "JAXVIT_PROGRESS_SECONDS": "0",
    }
    four = cli(*reference_run.args(tmp_path / "four"), env=env)
    assert four.returncode == 0, four.stderr
    # --quiet: no progress, even with a line asked for at every step.
    assert not re.search(r"jaxvit-interp: [^:]+: (started|\d+%|done in)", four.stderr), four.stderr
    a, b = load_bundle(reference_run.run), load_bundle(tmp_path / "four")
    # Each bundle records where it ran.
    assert a.meta["devices"] == {"platform": "cpu", "kind": "cpu", "count": 1}
    assert b.meta["devices"] == {"platform": "cpu", "kind": "cpu", "count": 4}
    for part in ("importance", "strength", "partial"):
        for name, value in a[part].items():
            np.testing.assert_allclose(
                b[part][name], value, rtol=1e-5, atol=1e-6, err_msg=f"{part}/{name}"
            )


# Images the demo's test analyses: every stage of the spec runs on them (its attention and
# partial-pruning subsets of 32 shrink to these 8); 48 took 1.7 times as long.
DEMO_TEST_IMAGES = 8


@pytest.fixture(scope="module")
def wheel_venv(project_wheel, tmp_path_factory):
    """A fresh virtual environment with the project installed from its wheel.

    Its dependencies are those of the environment running the tests, whether that is a virtual
    environment or the system's Python: a ``.pth`` file in its site-packages names the running
    interpreter's path entries that the new environment lacks (nothing is downloaded). The
    checkout that holds the running ``jaxvit_interp`` is left off that list, so the command runs
    from the wheel. (``--system-site-packages`` would give it the packages of the base
    interpreter instead, which a virtual environment's tests do not use, and may not have.)
    """
    import jaxvit_interp

    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import json, sys, sysconfig; "
         "print(json.dumps([sysconfig.get_paths()['purelib'], sys.path]))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    site_packages, own_path = json.loads(own.stdout)
    checkout = Path(jaxvit_interp.__file__).resolve().parent.parent
    lent = [
        entry
        for entry in sys.path
        if entry
        and Path(entry).is_dir()
        and entry not in own_path
        and Path(entry).resolve() != checkout
    ]
    (Path(site_packages) / "running-environment.pth").write_text("\n".join(lent) + "\n")
    # --ignore-installed: the lent paths hold the running environment's own (editable) install of
    # the project, which pip would otherwise count as already satisfied and skip the wheel.
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed"]
    install += ["--quiet"]
    result = subprocess.run([*install, str(project_wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return venv


@pytest.mark.slow
def test_demo_from_a_wheel_writes_the_site_and_a_second_run_reuses_the_analysis(
    wheel_venv, tmp_path
):
    """`pip install` of the wheel, then `jaxvit-interp demo --out` from a folder unrelated to any
    checkout: the demo's spec comes from the installed package."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [
            str(wheel_venv / "bin" / "python"),
            "-c",
            "import jaxvit_interp; print(jaxvit_interp.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(wheel_venv)), where.stdout  # the wheel, not the checkout
    # Its dependencies are the ones these tests run with, not another interpreter's.
    import jax

    theirs = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", "import jax; print(jax.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert theirs.stdout.strip() == jax.__file__, (theirs.stdout, theirs.stderr)

    # Every stage of the demo's spec on its first images: all 300 take minutes more and run no
    # other code.
    command = [str(wheel_venv / "bin" / "jaxvit-interp"), "demo", "--out", "demo", "--quiet"]
    command += ["--max-images", str(DEMO_TEST_IMAGES)]

    def demo():
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=elsewhere,
            env=env,
            timeout=1500,
        )

    first = demo()
    assert first.returncode == 0, first.stderr
    out = elsewhere / "demo"
    html = out / "index.html"
    assert "index.html" in first.stdout and html.is_file()
    page = html.read_text()
    assert "Bokeh" in page and "cdn.bokeh.org" not in page and "<script src=" not in page
    bundle = load_bundle(out / "run")
    assert (
        len(bundle.meta["image_ids"]) == DEMO_TEST_IMAGES
        and bundle.meta["checkpoint"]["path"] == "builtin:digits"
    )
    # The shipped model is good: its predictions agree with the held-out labels.
    images = bundle["images"]
    assert (images["predictions"] == images["labels"]).mean() > 0.9
    chunks = {p: p.stat().st_mtime_ns for p in (out / "run" / "chunks").iterdir()}
    second = demo()
    assert second.returncode == 0, second.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "run" / "chunks").iterdir()} == chunks
