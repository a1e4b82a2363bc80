"""The installed command against careless and hostile input, as a new user would meet it.

Each case runs ``jaxvit-interp`` in a subprocess and checks what the user sees: labels that mean
the model's classes, one-line errors with exit status 2 and no traceback, nothing written before
the whole request is known to be good, nothing half-written after a failure, and a rerun that
resumes. Cases that need root's mount or chattr (a full disk, a read-only or immutable folder)
are skipped, with the reason, where the machine does not allow them.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from clitools import (
    AE_FAST,
    FAST,
    TINY,
    assert_one_line_error,
    cli,
    command,
    run_main,
    write_digit_folders,
)
from flax import traverse_util
from PIL import Image

from jaxvit_interp import init_params
from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.data.imagenet import imagenet1k


def _write_png(path: Path, rng, size=(10, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path) -> None:
    """A 90-byte PNG that claims to be 30,000 x 30,000 pixels (900 million)."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def write_truncated_png(path: Path, rng) -> None:
    _write_png(path, rng, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    """Eight unlabelled images: enough heads x images for the pattern stage of the tiny model,
    so that a case fails only for the reason it is about."""
    root = tmp_path_factory.mktemp("pics")
    rng = np.random.default_rng()
    for i in range(8):
        _write_png(root / f"{i}.png", rng)
    return root


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "fast.toml"
    path.write_text(AE_FAST)
    return path


def analyze(capsys, checkpoint, images, out, fast_config, *extra):
    """The whole command on a small request, in this process (its programs compile once per
    test worker, not once per case)."""
    return run_main(
        capsys,
        "analyze",
        "--checkpoint",
        checkpoint,
        "--images",
        images,
        "--out",
        out,
        "--config",
        fast_config,
        *FAST,
        *extra,
    )


# ----------------------------------------------------------------------------------------------
# Labels are the model's classes.
# ----------------------------------------------------------------------------------------------


def test_digit_folders_are_the_digits_the_model_knows(tmp_path, fast_config, capsys):
    """Folders 3/ and 7/ are classes 3 and 7 of the built-in model, not 0 and 1.

    The trained model itself is the independent check: it predicts the digits it is shown, so
    its predictions agree with the labels only if the labels are the digits.
    """
    write_digit_folders(tmp_path / "digits", {"3": 3, "7": 7}, per_class=8)
    # Only the labels matter here: partial pruning and the kept attention (the digits model's
    # own compiles) are left out.
    result = analyze(
        capsys, "builtin:digits", tmp_path / "digits", tmp_path / "run", fast_config,
        "--partial-images", "0", "--attention-images", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(tmp_path / "run")
    images = bundle["images"]
    names = bundle.meta["class_names"]
    assert names == [str(d) for d in range(10)]
    assert [names[y] for y in images["labels"]] == [
        i.split("/")[0] for i in bundle.meta["image_ids"]
    ]
    assert (images["predictions"] == images["labels"]).mean() >= 0.8
    matching = bundle.meta["label_matching"]
    assert matching["source"] == "folders" and matching["classes"] == "model"
    assert matching["labels"]["7"] == {"class": 7, "name": "7", "by": "name"}


def test_imagenet_folder_names_in_every_spelling(tmp_path, fast_config, rng, capsys):
    """A 1,000-class checkpoint without names gets ImageNet-1k's; synset ids, curated names,
    synonyms and underscores all find their class. Broken files and a decompression bomb in the
    folder are skipped by name."""
    config = TINY.replace(num_classes=1000)
    params = init_params(config, 2)
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    checkpoint = tmp_path / "vit_imagenet.npz"
    np.savez(checkpoint, **flat)
    root = tmp_path / "photos"
    folders = {"n01440764": 0, "Tinca tinca": 0, "goldfish": 1, "Great_White_Shark": 2}
    for name in folders:
        for i in range(2):
            _write_png(root / name / f"{i}.png", rng)
    write_truncated_png(root / "goldfish" / "cut.png", rng)
    write_bomb(root / "goldfish" / "bomb.png")
    (root / "goldfish" / "notes.txt").write_text("not an image")

    result = analyze(capsys, checkpoint, root, tmp_path / "run", fast_config)
    assert result.returncode == 0, result.stderr
    for name in ("cut.png", "bomb.png", "notes.txt"):
        assert f"skipped goldfish/{name}" in result.stderr
    assert "DecompressionBomb" in result.stderr
    bundle = load_bundle(tmp_path / "run")
    assert bundle.meta["class_names"] == list(imagenet1k().names)
    ids = bundle.meta["image_ids"]
    assert len(ids) == 8
    want = [folders[i.split("/")[0]] for i in ids]
    np.testing.assert_array_equal(bundle["images"]["labels"], want)
    by = {k: v["by"] for k, v in bundle.meta["label_matching"]["labels"].items()}
    assert by == {
        "n01440764": "alias",
        "Tinca tinca": "alias",
        "goldfish": "name",
        "Great_White_Shark": "name",
    }


def test_label_of_no_class_is_refused_before_anything_is_written(tmp_path, fast_config, capsys):
    write_digit_folders(tmp_path / "flat", {"all": 3}, per_class=3)
    files = sorted(p.name for p in (tmp_path / "flat" / "all").iterdir())
    labels = tmp_path / "labels.csv"
    rows = [f"all/{f},{label}" for f, label in zip(files, ["3", "7", "banana"], strict=True)]
    labels.write_text("file,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    result = run_main(
        capsys,
        "analyze",
        "--checkpoint",
        "builtin:digits",
        "--images",
        tmp_path / "flat",
        "--labels",
        labels,
        "--out",
        out,
    )
    assert_one_line_error(result, f"{labels}:4", "'banana'", "0..9")
    assert not out.exists()


def test_model_without_names_takes_sorted_folders_only_when_they_are_its_classes(
    tmp_path, tiny_checkpoint, fast_config, rng, capsys
):
    for name in ("cat", "dog"):  # two folders for a model of three classes
        _write_png(tmp_path / "two" / name / "0.png", rng)
    out = tmp_path / "run"
    result = analyze(capsys, tiny_checkpoint, tmp_path / "two", out, fast_config)
    assert_one_line_error(result, "'cat'", "--class-names", "no class names")
    assert not out.exists()


def test_class_names_file_names_the_classes_and_the_page_shows_them_as_text(
    tmp_path, tiny_checkpoint, fast_config, rng, capsys
):
    """--class-names gives a nameless model its names; CSV labels are matched to them (a near
    miss is refused with the nearest name); a name written to break out of HTML stays text."""
    evil = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    names = tmp_path / "names.txt"
    names.write_text(f"dog\n{evil}\nowl\n")
    root = tmp_path / "pics"
    rows = []
    for i in range(8):
        _write_png(root / f"{i}.png", rng)
        rows.append(f"{i}.png,{['dog', evil, 'OWL', '1'][i % 4]}")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "\n".join(rows) + "\n")
    near_miss = tmp_path / "near.csv"
    near_miss.write_text("file,label\n0.png,dgo\n")

    base = ["--images", root, "--class-names", names]
    refused = run_main(
        capsys,
        "analyze",
        "--checkpoint",
        tiny_checkpoint,
        *base,
        "--labels",
        near_miss,
        "--out",
        tmp_path / "refused",
    )
    assert_one_line_error(refused, f"{near_miss}:2", "'dgo'", "nearest class names: 'dog'")
    assert not (tmp_path / "refused").exists()

    result = analyze(
        capsys, tiny_checkpoint, root, tmp_path / "run", fast_config, *base[2:], "--labels", labels
    )
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(tmp_path / "run")
    assert bundle.meta["class_names"] == ["dog", evil, "owl"]
    np.testing.assert_array_equal(bundle["images"]["labels"], [0, 1, 2, 1] * 2)
    site = run_main(capsys, "site", tmp_path / "run", "--out", tmp_path / "site")
    assert site.returncode == 0, site.stderr

    from jaxvit_interp.site.browser import BrowserUnavailable, chromium, open_site

    try:
        with chromium() as browser:
            page = open_site(browser, tmp_path / "site" / "index.html")
            assert page.evaluate("() => window.__xss") is None
            shown = page.evaluate(
                "() => Array.from(Bokeh.documents[0].get_model_by_name('images').data.label)"
            )
            assert evil in shown
            assert page.evaluate("() => window.__xss") is None
            assert not page.site_errors, page.site_errors
    except BrowserUnavailable as err:
        pytest.skip(f"no headless Chromium: {err}")


# ----------------------------------------------------------------------------------------------
# Every option checked before anything is written.
# ----------------------------------------------------------------------------------------------

BAD_OPTIONS = {
    "max-images 0": (["--max-images", "0"], "--max-images"),
    "max-images -3": (["--max-images", "-3"], "--max-images"),
    "memory budget 0": (["--memory-budget-mb", "0"], "--memory-budget-mb"),
    "memory budget too small": (["--memory-budget-mb", "0.01"], "memory budget"),
    "batch size 0": (["--batch-size", "0"], "--batch-size"),
    "clusters 0": (["--clusters", "0"], "--clusters"),
    "more clusters than patterns": (["--clusters", "100000"], "100000 clusters"),
    "thumbnail size 0": (["--thumbnail-size", "0"], "--thumbnail-size"),
    "chunk images 0": (["--chunk-images", "0"], "--chunk-images"),
    "too few pattern samples": (
        ["--pattern-samples", "5"],
        "--pattern-samples: must be an integer of at least 32, got 5",
    ),
    "negative seed": (["--seed", "-1"], "--seed"),
    "not a number": (["--partial-images", "many"], "--partial-images"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_is_refused_before_the_run_folder_exists(
    case, tmp_path, tiny_checkpoint, pics, capsys
):
    flags, needle = BAD_OPTIONS[case]
    out = tmp_path / "out" / "run"
    args = ["analyze", "--checkpoint", tiny_checkpoint, "--images", pics]
    result = run_main(capsys, *args, "--out", out, *FAST, *flags)  # later flags win
    assert_one_line_error(result, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "toml, needle",
    [
        ("max_images = 0\n", "max_images"),
        ('[analysis]\nclusters = "three"\n', "clusters"),
        ("[analysis]\nautoencoder = { max_epochs = 0 }\n", "max_epochs"),
        ("[analysis]\nautoencoder = { epochs = 3 }\n", "epochs"),
        ("[analysis]\nseed = 1.5\n", "seed"),
        ("images = [\n", "not valid TOML"),
    ],
)
def test_bad_config_file_is_refused_before_the_run_folder_exists(
    toml, needle, tmp_path, tiny_checkpoint, pics, capsys
):
    config = tmp_path / "run.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    result = run_main(
        capsys,
        "analyze",
        "--checkpoint",
        tiny_checkpoint,
        "--images",
        pics,
        "--out",
        out,
        "--config",
        config,
    )
    assert_one_line_error(result, needle)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Corrupt checkpoints, closed pipes, unwritable folders.
# ----------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _checkpoints(tmp_path: Path, tiny_checkpoint: Path) -> dict[str, Path]:
    """One truncated or corrupt checkpoint of each container format."""
    import torch
    from safetensors.numpy import save_file

    flat = {
        k: np.asarray(v)
        for k, v in traverse_util.flatten_dict(init_params(TINY, 0), sep="/").items()
    }
    out = {}
    out["npz"] = tmp_path / "model.npz"
    np.savez(out["npz"], **flat)
    out["safetensors"] = tmp_path / "model.safetensors"
    save_file({k.replace("/", "."): v for k, v in flat.items()}, out["safetensors"])
    out["pth"] = tmp_path / "model.pth"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in flat.items()}, out["pth"])
    for path in out.values():
        _truncate(path)
    out["orbax"] = tmp_path / "orbax"
    shutil.copytree(tiny_checkpoint, out["orbax"])
    data_files = [
        p for p in (out["orbax"] / "params").rglob("*") if p.is_file() and p.stat().st_size > 64
    ]
    for path in data_files:
        path.write_bytes(b"\0" * path.stat().st_size)
    return out


def test_corrupt_checkpoints_of_every_format_are_one_line_errors(
    tmp_path, tiny_checkpoint, pics, capsys
):
    for kind, path in _checkpoints(tmp_path, tiny_checkpoint).items():
        extra = ["--allow-pickle"] if kind == "pth" else []
        assert_one_line_error(run_main(capsys, "inspect", path, *extra), path.name)
        out = tmp_path / f"run-{kind}"
        args = ["--checkpoint", path, "--images", pics, "--out", out, *extra]
        result = run_main(capsys, "analyze", *args)
        assert_one_line_error(result, path.name)
        assert not out.exists()


def test_pickle_is_refused_without_running_it(tmp_path, pics, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    for args in (
        ["inspect", path],
        ["analyze", "--checkpoint", path, "--images", pics, "--out", tmp_path / "run"],
    ):
        assert_one_line_error(run_main(capsys, *args), "pickle", "model.pth")
    assert not marker.exists()


def test_closed_output_pipe_ends_without_a_traceback(tiny_checkpoint):
    proc = subprocess.Popen(
        [*command(), "inspect", str(tiny_checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before anything is written, as with `| head`
    stderr = proc.stderr.read()
    proc.wait(timeout=300)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert_one_line_error(result, "broken pipe")


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")


@pytest.fixture
def mounts():
    """Mount points to unmount after the test, whatever happens."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_unwritable_output_folders_are_one_line_errors(
    tmp_path, tiny_checkpoint, pics, mounts, capsys
):
    args = ["analyze", "--checkpoint", tiny_checkpoint, "--images", pics]
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
        pytest.skip(
            "chattr +i is not allowed here (an immutable folder stands in for one "
            "without write permission, which root would ignore)"
        )
    try:
        result = run_main(capsys, *args, "--out", locked / "run", *FAST)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
    assert_one_line_error(result, "Operation not permitted", str(locked / "run"))

    readonly = tmp_path / "readonly"
    _mount_tmpfs(readonly, "ro,size=1m")
    mounts.append(readonly)
    result = run_main(capsys, *args, "--out", readonly / "run", *FAST)
    assert_one_line_error(result, "Read-only file system", str(readonly / "run"))


def test_full_disk_leaves_no_temporary_file_and_the_rerun_resumes(tmp_path, reference_run, mounts):
    # The shared uninterrupted run of the same command is the reference.
    size = sum(p.stat().st_size for p in reference_run.run.rglob("*") if p.is_file())

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, f"size={max(64 << 10, size // 2)}")
    mounts.append(disk)
    out = disk / "run"
    full = cli(*reference_run.args(out))
    assert_one_line_error(full, "No space left on device", "rerun the same command")
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or "tmp-" in p.name]
    assert not leftovers, leftovers
    kept = {p: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.npz")}

    remount = subprocess.run(
        ["mount", "-o", f"remount,size={4 * size + (1 << 20)}", str(disk)],
        capture_output=True,
        text=True,
    )
    assert remount.returncode == 0, remount.stderr
    resumed = cli(*reference_run.args(out))
    assert resumed.returncode == 0, resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished chunks were kept
    a, b = load_bundle(reference_run.run), load_bundle(out)
    for part in a.parts:
        for name, value in a[part].items():
            np.testing.assert_allclose(
                b[part][name], value, rtol=1e-6, atol=1e-6, err_msg=f"{part}/{name}"
            )


# ----------------------------------------------------------------------------------------------
# Interruptions and other runs' folders.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng()
    for name in ("0", "1", "2"):
        for i in range(4):
            _write_png(root / name / f"{i}.png", rng)
    return root


def test_resume_after_kill_equals_uninterrupted_run(reference_run, tmp_path):
    # The shared uninterrupted run of the same command is the reference.
    out = tmp_path / "killed"
    args = reference_run.args(out)
    proc = subprocess.Popen(
        [*command(), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "chunks").glob("chunk-*.npz")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((out / "chunks").glob("chunk-*.npz")), "the run was killed before a chunk"
    assert not (out / "bundle.json").exists(), "the run finished before it was killed"

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_bundle(reference_run.run), load_bundle(out)
    for part in ("images", "importance", "strength", "partial", "attention", "patterns"):
        for name, value in a[part].items():
            np.testing.assert_array_equal(b[part][name], value, err_msg=f"{part}/{name}")


def test_another_runs_folder_is_refused_untouched(tiny_checkpoint, class_folders, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text('{"fingerprint": "0123456789abcdef"}')
    (other / "mine.txt").write_text("keep me")
    before = sorted(os.listdir(other))
    result = run_main(
        capsys,
        "analyze",
        "--checkpoint",
        tiny_checkpoint,
        "--images",
        class_folders,
        "--out",
        other,
        *FAST,
    )
    assert_one_line_error(result, "another run")
    assert sorted(os.listdir(other)) == before
    assert (other / "mine.txt").read_text() == "keep me"


def test_missing_paths_are_one_line_errors_in_every_command(tmp_path, pics, capsys):
    from jaxvit_interp.cli import main

    missing = tmp_path / "missing"
    cases = {
        "inspect": (["inspect", missing], missing.name),
        "inspect a pickle": (["inspect", "--allow-pickle", tmp_path / "gone.pth"], "gone.pth"),
        "site": (["site", missing, "--out", tmp_path / "site"], missing.name),
        "site build": (["site", "build", tmp_path / "gone.toml", "--out", tmp_path / "s"], "gone"),
        "prune": (
            ["prune", "--checkpoint", missing, "--images", pics, "--remove", "1"]
            + ["--out", tmp_path / "pruned"],
            missing.name,
        ),
        # Refused before the timing starts, not when its figures are written at the end.
        "benchmark": (
            ["benchmark", "--variant", "mu/2", "--image-size", "8", "--images", "2"]
            + ["--json", missing / "figures.json"],
            str(missing),
        ),
    }
    for case, (args, needle) in cases.items():
        args = [str(a) for a in args]
        status = main(args)  # in this process: each case takes a second, not a JAX start-up
        out, err = capsys.readouterr()
        assert_one_line_error(subprocess.CompletedProcess(args, status, out, err), needle)
        assert not out, (case, out)
    assert sorted(os.listdir(tmp_path)) == []


def test_pruned_model_is_refused_by_analyze_before_anything_is_written(tmp_path, pics, capsys):
    from jaxvit_interp import save_safetensors
    from jaxvit_interp.cli import main
    from jaxvit_interp.model.prune import remove_heads

    rng = np.random.default_rng()
    removed = [(int(rng.integers(TINY.num_layers)), int(rng.integers(TINY.num_heads)))]
    config, params = remove_heads(TINY, init_params(TINY, 3), removed)
    path = save_safetensors(tmp_path / "model.safetensors", config, params)
    out = tmp_path / "out" / "run"
    args = ["analyze", "--checkpoint", path, "--images", pics, "--out", out, *FAST]
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    result = subprocess.CompletedProcess(args, status, "", err)
    assert_one_line_error(result, "per-head analyses need the full model", "prune.json", path.name)
    assert not (tmp_path / "out").exists()


def test_a_refused_budget_says_why_the_model_is_that_large_and_what_fits(tmp_path, pics, capsys):
    """DINOv2 with registers saved by save_pretrained alone loads at its config's 518 px."""
    import re

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxvit_interp.cli import main

    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=518, patch_size=14, num_register_tokens=4,
    )  # fmt: skip
    model = transformers.Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(tmp_path / "dino")  # weights and config.json, no processor config
    with torch.no_grad():
        tokens = {
            side: model(pixel_values=torch.zeros(1, 3, side, side)).last_hidden_state.shape[1]
            for side in (518, 224)
        }
    out = tmp_path / "out" / "run"

    def analyze(*flags):
        args = ["analyze", "--checkpoint", tmp_path / "dino", "--images", pics, "--out", out]
        args = [str(a) for a in [*args, *FAST, *flags]]
        status = main(args)
        return subprocess.CompletedProcess(args, status, "", capsys.readouterr().err)

    text = assert_one_line_error(
        analyze("--memory-budget-mb", "4"),
        "the model is loaded at 518x518 px because its config.json says image_size 518 and no "
        f"preprocessor_config.json gives a crop size: {tokens[518]:,} tokens per image",
        "--image-size",
    )
    least = int(re.search(r"a budget of (\d+) MiB fits: --memory-budget-mb \1 ", text).group(1))
    assert not (tmp_path / "out").exists()
    # With the budget named every check passes, up to the run folder (holding another run
    # here, so that nothing is computed); with a MiB less it is refused again.
    out.mkdir(parents=True)
    (out / "run.json").write_text('{"fingerprint": "0123456789abcdef"}')
    assert_one_line_error(analyze("--memory-budget-mb", str(least)), "holds another run")
    assert_one_line_error(analyze("--memory-budget-mb", str(least - 1)), "too small")
    # At 224 px (the size DINOv2's processor crops to) the model has transformers' token count.
    assert_one_line_error(
        analyze("--memory-budget-mb", "1", "--image-size", "224"),
        f"loaded at 224x224 px because image_size 224x224 was asked for: {tokens[224]:,} tokens",
    )
    assert sorted(os.listdir(out)) == ["run.json"]


def test_a_folder_holding_another_run_names_what_differs(reference_run, tmp_path, capsys):
    from jaxvit_interp import save_checkpoint
    from jaxvit_interp.cli import main

    run, images = tmp_path / "run", tmp_path / "images"
    shutil.copytree(reference_run.run, run)
    shutil.copytree(reference_run.images, images)  # the same ids and pixels
    ids = load_bundle(reference_run.run).meta["image_ids"]
    run_json = run / "run.json"

    def analyze(*flags, checkpoint=reference_run.checkpoint):
        args = ["analyze", "--checkpoint", checkpoint, "--images", images, "--out", run]
        args = [str(a) for a in [*args, "--config", reference_run.config, *FAST, *flags]]
        status = main(args)
        return subprocess.CompletedProcess(args, status, "", capsys.readouterr().err)

    def refused(*needles, **kwargs):
        before = sorted(p.relative_to(run) for p in run.rglob("*"))
        text = assert_one_line_error(analyze(**kwargs), "holds another run", *needles)
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
        return text

    assert analyze().returncode == 0  # this very run, finished: read back
    # Each difference named, and only it.
    text = assert_one_line_error(analyze("--partial-images", "3"), "setting partial_images: 5 -> 3")
    assert len(text.splitlines()) == 3, text  # the refusal, the one difference, what to do
    other = tmp_path / "other"
    save_checkpoint(other, TINY, init_params(TINY, 2))
    refused(f"model: {reference_run.checkpoint} (sha256 ", f"-> {other} (sha256 ", checkpoint=other)
    (tmp_path / "names.txt").write_text("cat\ndog\nowl\n")
    text = assert_one_line_error(
        analyze("--class-names", tmp_path / "names.txt"),
        'model config class_names: null -> ["cat", "dog", "owl"]',
    )
    assert len(text.splitlines()) == 3, text
    rng = np.random.default_rng()
    first_class = ids[0].split("/")[0]
    _write_png(images / first_class / "zz-new.png", rng)
    refused(f"images: {len(ids)} -> {len(ids) + 1} (1 new, first: {first_class}/zz-new.png)")
    (images / ids[0]).unlink()
    refused(f"1 image ids differ (first: {first_class}/zz-new.png)")
    (images / first_class / "zz-new.png").rename(images / ids[0])  # its id back, other pixels
    refused("same ids, different pixels")
    # A run.json written before the config, the ids and the pixels were recorded: it still
    # refuses (naming what it records: the settings) and says what it cannot tell.
    old = {k: v for k, v in json.loads(run_json.read_text()).items()}
    for key in ("config", "image_ids", "pixels"):
        del old[key]
    run_json.write_text(json.dumps(old))
    refused("the model's config, the image ids or the pixels: its run.json, written before")
    text = assert_one_line_error(analyze("--seed", "7"), "setting seed: 0 -> 7")
    assert "does not say" not in text
    # And it resumes when nothing changed, recording what it lacked for the next refusal.
    shutil.rmtree(images)
    shutil.copytree(reference_run.images, images)
    assert analyze().returncode == 0
    assert json.loads(run_json.read_text())["image_ids"] == ids
