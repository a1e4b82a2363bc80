"""Peak resident memory of a whole ``analyze`` run, overall and per stage.

Runs the real :func:`jaxvit_interp.analyze` on a random-weight model (ViT-B/16 by default) over
``--images`` random images in a child process, and from this process samples the child's resident
memory (``VmRSS``) every ``--interval`` seconds. The child names the stage it is in on stderr: it
wraps the library functions ``analyze`` calls (head importance, partial pruning, the attention
pass, gathering, autoencoder training, projection, the bundle) without changing them, and at
each stage's start resets the kernel's high-water mark (``/proc/self/clear_refs``), so the peak of
every stage is exact (``VmHWM``) and not only as fine as the sampling.

    python benchmarks/memory.py --images 4
    python benchmarks/memory.py --images 4 16 --json benchmarks/results/memory.json

Several ``--images`` counts run one after another, each in a fresh process.

``--from-folder`` runs it as a user would: the images are written as PNG files into a folder,
the model is saved as a checkpoint, and the child runs ``jaxvit-interp analyze`` (the command's
own ``main``), which loads the folder itself.

``--distinct D`` shows what grows with the number of images without the hours a B/16 image's
ablations take: the ``--images`` images are copies of ``D`` random ones, in order, and each
per-image library function (the ablations, partial pruning, the attention pass) returns its
earlier result when called again on the same pixels and arguments, so
only the first chunks are computed (with ``--chunk-images`` a multiple of ``D``, only the first
one). Everything ``analyze`` itself does with the results (holding, merging, gathering, the
pattern stage, thumbnails, pixels, the bundle) runs on all of them; the per-image stages' peaks
are those of the chunks computed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STAGE_MARK = "@@stage "
PEAK_MARK = "@@peak "
MIB = 1 << 20


# ------------------------------------------------------------------------------------------
# The child: one analyze run with its stages named.
# ------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Stages:
    """The stage the run is in (a stack: projection runs inside the bundle stage), told on
    stderr with the exact peak of the stage that ends."""

    def __init__(self):
        self.stack: list[str] = []
        self.exact = _reset_peak()

    def enter(self, name: str) -> None:
        self._close()
        self.stack.append(name)
        self._open()

    def leave(self) -> None:
        self._close()
        self.stack.pop()
        if self.stack:
            self._open()

    def _open(self) -> None:
        if self.exact:
            _reset_peak()
        print(f"{STAGE_MARK}{self.stack[-1]}", file=sys.stderr, flush=True)

    def _close(self) -> None:
        if self.stack and self.exact:
            peak = _status_kib("VmHWM") * 1024
            print(f"{PEAK_MARK}{self.stack[-1]}\t{peak}", file=sys.stderr, flush=True)

    def wrap(self, module, name: str, stage: str, memo: dict | None = None) -> None:
        fn = getattr(module, name, None)
        if fn is None:  # a stage this version of the package does not have
            return

        def wrapped(*args, **kwargs):
            key = None if memo is None else _memo_key(name, args, kwargs)
            if key is not None and key in memo:
                return memo[key]
            self.enter(stage)
            try:
                result = fn(*args, **kwargs)
            finally:
                self.leave()
            if key is not None:
                memo[key] = result
            return result

        setattr(module, name, wrapped)


def _memo_key(name: str, args, kwargs) -> tuple:
    """What a per-image function's result depends on: its arrays' bytes and its other arguments
    (the model's config and parameters are the run's own and are left out)."""
    import numpy as np

    from jaxvit_interp import ViTConfig

    def part(value):
        if isinstance(value, ViTConfig) or isinstance(value, dict):
            return None
        if isinstance(value, np.ndarray):
            data = np.ascontiguousarray(value)
            return (str(data.dtype), data.shape, hashlib.sha1(data.tobytes()).hexdigest())
        return repr(value)

    # How the work runs, not what it computes.
    ignored = {"mesh", "progress", "batcher", "execution"}
    return (
        name,
        tuple(part(a) for a in args),
        tuple(sorted((k, part(v)) for k, v in kwargs.items() if k not in ignored)),
    )


def child(args) -> None:
    stages = _Stages()
    stages.enter("setup (model, images)")
    import numpy as np

    import jaxvit_interp
    import jaxvit_interp.importance
    import jaxvit_interp.model.run
    import jaxvit_interp.patterns
    import jaxvit_interp.patterns.train
    import jaxvit_interp.pipeline.analyze
    import jaxvit_interp.strength
    from jaxvit_interp.patterns import AutoencoderSettings

    # The package re-exports the function ``analyze`` under its module's name.
    analyze_module = sys.modules["jaxvit_interp.pipeline.analyze"]
    chunk_module = sys.modules["jaxvit_interp.pipeline.chunk"]
    bundle_stage_module = sys.modules["jaxvit_interp.pipeline.bundle_stage"]
    run_folder_module = sys.modules["jaxvit_interp.pipeline.run_folder"]

    import jaxvit_interp.data.images
    import jaxvit_interp.rollout

    # Where analyze looks each function up when it calls it (its chunk imports them at call time).
    # With --distinct the per-image functions remember their results (see the docstring).
    memo = {} if args.distinct else None
    for module, name, stage, per_image in (
        (jaxvit_interp.data.images, "load_image_folder", "image loading", False),
        (jaxvit_interp.importance, "head_importance", "head importance (ablations)", True),
        (jaxvit_interp.importance, "partial_pruning", "partial pruning", True),
        (
            chunk_module,
            "run_pass",
            "attention pass (strength, special tokens, patterns, rollout, attention)",
            True,
        ),
        (run_folder_module.RunFolder, "gather", "gathering from the chunks", False),
        (analyze_module, "train_pattern_models", "autoencoder training", False),
        (analyze_module, "build_bundle", "bundle (thumbnails, pixels, layouts)", False),
        (
            bundle_stage_module,
            "pattern_stage_part",
            "pattern encoding, projection, clustering",
            False,
        ),
        (analyze_module, "save_bundle", "bundle writing", False),
    ):
        stages.wrap(module, name, stage, memo if per_image else None)

    config = jaxvit_interp.ViTConfig.from_variant(args.variant, num_classes=args.num_classes)
    params = jaxvit_interp.init_params(config, 0)
    rng = np.random.default_rng(0)
    distinct = args.distinct or args.num_images
    images = rng.standard_normal((distinct, *config.image_size, config.channels), dtype=np.float32)
    settings = jaxvit_interp.AnalysisSettings(
        chunk_images=args.chunk_images,
        memory_budget_bytes=None if args.memory_budget_mb is None else args.memory_budget_mb * MIB,
        partial_images=args.partial_images,
        attention_images=args.attention_images,
        pattern_samples=args.pattern_samples,
        set_images=args.set_images,
        autoencoder=AutoencoderSettings(max_epochs=args.epochs),
    )
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = Path(work)
        if args.from_folder:
            command = _command_inputs(args, config, params, images, work)
            del params, images
        else:
            images = images[np.arange(args.num_images) % distinct]
        stages.leave()
        stages.enter("analyze (other)")
        if args.from_folder:
            import jaxvit_interp.cli

            status = jaxvit_interp.cli.main(command)
            if status:
                sys.exit(status)
        else:
            jaxvit_interp.analyze(config, params, images, work / "run", settings=settings)
        stages.leave()


def _command_inputs(args, config, params, images, work: Path) -> list[str]:
    """The checkpoint, the image folder (``--images`` PNG files, copies of the distinct images
    in order) and the settings file of a ``jaxvit-interp analyze`` run; its arguments."""
    import numpy as np
    from PIL import Image

    import jaxvit_interp

    jaxvit_interp.save_checkpoint(work / "checkpoint", config, params)
    folder = work / "images"
    folder.mkdir()
    pre = config.preprocessing
    pixels = np.clip(
        (images * np.asarray(pre.std, np.float32) + np.asarray(pre.mean, np.float32)) * 255, 0, 255
    ).astype(np.uint8)
    for i in range(args.num_images):
        name = folder / f"{i:06d}.png"
        if i < len(pixels):
            Image.fromarray(pixels[i]).save(name)
        else:
            shutil.copyfile(folder / f"{i % len(pixels):06d}.png", name)
    (work / "run.toml").write_text(f"[analysis]\nautoencoder = {{ max_epochs = {args.epochs} }}\n")
    command = ["analyze", "--checkpoint", str(work / "checkpoint"), "--images", str(folder)]
    command += ["--out", str(work / "run"), "--config", str(work / "run.toml"), "--quiet"]
    command += ["--chunk-images", str(args.chunk_images)]
    command += ["--partial-images", str(args.partial_images)]
    command += ["--attention-images", str(args.attention_images)]
    command += ["--pattern-samples", str(args.pattern_samples)]
    command += ["--set-images", str(args.set_images)]
    if args.memory_budget_mb is not None:
        command += ["--memory-budget-mb", str(args.memory_budget_mb)]
    return command


# ------------------------------------------------------------------------------------------
# The parent: run the child, sample its memory, attribute samples to stages.
# ------------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pass
    except Exception:  # the process has ended
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return None if found is None else int(found.group(1)) * 1024


def measure(args, num_images: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        str(num_images),
        *_child_options(args),
    ]
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1)
    stage = ["start"]
    sampled: dict[str, int] = {}
    exact: dict[str, int] = {}
    seconds: dict[str, float] = {}
    order: list[str] = []
    tail: list[str] = []
    lock = threading.Lock()
    last = [start]

    def read():
        for line in proc.stderr:
            line = line.rstrip("\n")
            with lock:
                now = time.perf_counter()
                if line.startswith(STAGE_MARK):
                    seconds[stage[0]] = seconds.get(stage[0], 0.0) + now - last[0]
                    last[0] = now
                    stage[0] = line[len(STAGE_MARK) :]
                    if args.verbose:
                        print(f"{now - start:8.1f} s  {stage[0]}", flush=True)
                    if stage[0] not in order:
                        order.append(stage[0])
                elif line.startswith(PEAK_MARK):
                    name, value = line[len(PEAK_MARK) :].split("\t")
                    exact[name] = max(exact.get(name, 0), int(value))
                else:
                    tail.append(line)
                    del tail[:-40]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        rss = _rss_bytes(proc.pid)
        if rss is not None:
            with lock:
                sampled[stage[0]] = max(sampled.get(stage[0], 0), rss)
            peak = max(peak, rss)
        time.sleep(args.interval)
    reader.join()
    wall = time.perf_counter() - start
    seconds[stage[0]] = seconds.get(stage[0], 0.0) + time.perf_counter() - last[0]
    if proc.returncode != 0:
        sys.exit(f"the analyze run failed (exit {proc.returncode}):\n" + "\n".join(tail))
    rows = [
        {
            "stage": name,
            "peak_sampled_mib": round(sampled.get(name, 0) / MIB),
            "peak_exact_mib": round(exact[name] / MIB) if name in exact else None,
            "seconds": round(seconds.get(name, 0.0), 1),
        }
        for name in order
    ]
    worst = max(rows, key=lambda r: r["peak_exact_mib"] or r["peak_sampled_mib"])
    return {
        "images": num_images,
        "peak_sampled_mib": round(peak / MIB),
        "peak_exact_mib": max((r["peak_exact_mib"] or 0) for r in rows) or None,
        "peak_stage": worst["stage"],
        "wall_s": round(wall, 1),
        "load_average": [round(x, 1) for x in (*load_before, *os.getloadavg())],
        "stages": rows,
    }


def _child_options(args) -> list[str]:
    options = [
        "--variant",
        args.variant,
        "--num-classes",
        str(args.num_classes),
        "--chunk-images",
        str(args.chunk_images),
        "--partial-images",
        str(args.partial_images),
        "--attention-images",
        str(args.attention_images),
        "--pattern-samples",
        str(args.pattern_samples),
        "--epochs",
        str(args.epochs),
        "--set-images",
        str(args.set_images),
        "--distinct",
        str(args.distinct),
    ]
    if args.from_folder:
        options.append("--from-folder")
    if args.workdir is not None:
        options += ["--workdir", str(args.workdir)]
    if args.memory_budget_mb is not None:
        options += ["--memory-budget-mb", str(args.memory_budget_mb)]
    return options


def report(result: dict) -> None:
    print(
        f"\n{result['images']} images: peak {result['peak_exact_mib'] or '?'} MiB exact "
        f"(VmHWM), {result['peak_sampled_mib']} MiB sampled, in '{result['peak_stage']}'; "
        f"{result['wall_s']} s; load average {result['load_average'][:3]} before, "
        f"{result['load_average'][3:]} after"
    )
    print("| stage | peak MiB (exact) | peak MiB (sampled) | s |\n| --- | ---: | ---: | ---: |")
    for r in result["stages"]:
        print(
            f"| {r['stage']} | {r['peak_exact_mib'] if r['peak_exact_mib'] is not None else '-'} "
            f"| {r['peak_sampled_mib']} | {r['seconds']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[4], help="image counts to run")
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--chunk-images", type=int, default=64)
    parser.add_argument("--partial-images", type=int, default=1)
    parser.add_argument("--attention-images", type=int, default=2)
    parser.add_argument("--pattern-samples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="autoencoder epochs")
    parser.add_argument("--memory-budget-mb", type=int, default=None)
    parser.add_argument(
        "--set-images", type=int, default=32, help="images of the head-set stage (0: none)"
    )
    parser.add_argument(
        "--distinct",
        type=int,
        default=0,
        help="the images are copies of this many; per-image results are reused (0: all distinct)",
    )
    parser.add_argument(
        "--from-folder", action="store_true", help="run the command on a folder of PNG files"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the run folder goes")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--verbose", action="store_true", help="print each stage as it starts")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        args.num_images = args.child
        child(args)
        return
    results = []
    for count in args.images:
        result = measure(args, count)
        report(result)
        results.append(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
