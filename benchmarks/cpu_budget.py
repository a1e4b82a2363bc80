"""The ablation engine's CPU memory budget: time and peak memory of ViT-B/16 ablations per budget.

The engine plans its batches to fit ``memory_budget_bytes`` (by default on a CPU a sixteenth of
RAM, at most ``CPU_MEMORY_BUDGET``). A smaller budget means smaller batches: less memory, and
possibly less speed. For each ``--budgets-mb`` value this times, on a random-weight model,

- single-head ablations of every head (``head_importance``) on ``--images`` images, and
- partial pruning of every head in its six modes (``partial_pruning``) on ``--partial-images``,

side by side in one process (every budget compiled first, then ``--rounds`` rounds that take the
budgets in turn), and then measures each budget's peak resident memory in a fresh child process
(the kernel's high-water mark ``VmHWM``, reset before each of the two calls).

    python benchmarks/cpu_budget.py
    python benchmarks/cpu_budget.py --budgets-mb 1536 1280 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20


def _peak_mib() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.M).group(1)) // 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _setup(args):
    import jaxvit_interp as jvi

    config = jvi.ViTConfig.from_variant(args.variant, num_classes=1000)
    params = jvi.init_params(config, 0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.images, *config.image_size, 3), dtype=np.float32)
    return config, params, images


def _calls(args, config, params, images):
    """The two timed calls, each a function of the budget in bytes."""
    from jaxvit_interp.execution import Execution
    from jaxvit_interp.importance import head_importance, partial_pruning

    heads = [(layer, h) for layer in range(config.num_layers) for h in range(config.num_heads)]
    return {
        "head importance": lambda budget: head_importance(
            config, params, images, execution=Execution(memory_budget_bytes=budget, progress=False)
        ),
        "partial pruning": lambda budget: partial_pruning(
            config,
            params,
            images[: args.partial_images],
            heads=heads,
            execution=Execution(memory_budget_bytes=budget, progress=False),
        ),
    }


def child(args) -> None:
    """One budget's peaks, printed as JSON: ``{call: MiB}``."""
    config, params, images = _setup(args)
    calls = _calls(args, config, params, images)
    peaks = {"before": _peak_mib()}
    for name, call in calls.items():
        _reset_peak()
        call(args.child * MIB)
        peaks[name] = _peak_mib()
    print(json.dumps(peaks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--partial-images", type=int, default=1)
    parser.add_argument("--budgets-mb", type=int, nargs="+", default=[1536, 1280])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    config, params, images = _setup(args)
    calls = _calls(args, config, params, images)
    for budget in args.budgets_mb:  # compile every budget's programs before timing
        for call in calls.values():
            call(budget * MIB)
    seconds = {name: {b: [] for b in args.budgets_mb} for name in calls}
    for _ in range(args.rounds):
        for budget in args.budgets_mb:
            for name, call in calls.items():
                start = time.perf_counter()
                call(budget * MIB)
                seconds[name][budget].append(time.perf_counter() - start)
    peaks = {}
    for budget in args.budgets_mb:
        command = [sys.executable, __file__, "--child", str(budget), "--variant", args.variant]
        command += ["--images", str(args.images), "--partial-images", str(args.partial_images)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        peaks[budget] = json.loads(out.strip().splitlines()[-1])

    base = args.budgets_mb[0]
    print(f"\n{args.variant}, random weights; head importance on {args.images} images, partial "
          f"pruning on {args.partial_images}; seconds per call (rounds), peak MiB (VmHWM):")  # fmt: skip
    print("| budget | head importance s | vs first | partial pruning s | vs first | peak MiB, "
          "importance | peak MiB, partial |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for budget in args.budgets_mb:
        cells = []
        for name in calls:
            mean = np.mean(seconds[name][budget])
            rounds = ", ".join(f"{t:.1f}" for t in seconds[name][budget])
            cells += [f"{mean:.1f} ({rounds})", f"{mean / np.mean(seconds[name][base]):.2f}x"]
        p = peaks[budget]
        print(f"| {budget} MiB | {' | '.join(cells)} | {p['head importance']} | "
              f"{p['partial pruning']} |")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        result = {"command": sys.argv, "seconds": seconds, "peaks_mib": peaks}
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
