"""``jaxvit-interp benchmark``: the engine against a plain per-head loop, on a tiny variant."""

import json
import os
import subprocess
import sys

import pytest

from jaxvit_interp.benchmark import executed_flops, full_flops, needed_flops
from jaxvit_interp.importance import SET_METRICS
from jaxvit_interp.model import ViTConfig
from jaxvit_interp.quantities import PRUNING_METRICS


def test_flop_counts_order():
    """The engine needs less than a full pass per head and executes no more than that."""
    c = ViTConfig.from_variant("B/16")
    heads = c.num_layers * c.num_heads
    assert full_flops(c) < executed_flops(c) <= needed_flops(c) < (heads + 1) * full_flops(c)
    # ViT-B/16 at 224 px: 17.6 G multiply-adds per forward pass (the figure usually quoted as
    # its "GFLOPs"), 35.1 GFLOP counting both operations.
    assert 34.8e9 < full_flops(c) < 35.4e9


def test_benchmark_command_writes_figures_and_the_precision_error(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--variant", "Ti/16", "--image-size", "32", "--images", "2", "--rounds", "1"]
    args += ["--loop-heads", "3", "--precision", "bfloat16", "--json", out]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "jaxvit_interp.cli", "benchmark", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "heads x images/s" in run.stdout and "engine" in run.stdout
    record = json.loads(out.read_text())
    c = ViTConfig.from_variant("Ti/16", image_size=32)
    heads = c.num_layers * c.num_heads
    assert record["heads"] == heads and record["images"] == 2
    assert record["device"]["platform"] == "cpu"
    for side, flops in (("engine", executed_flops(c) * 2), ("loop", heads * full_flops(c) * 2)):
        figures = record[side]
        assert figures["executed_tflop"] >= flops / 1e12
        assert figures["heads_x_images_per_s"] == pytest.approx(heads * 2 / figures["seconds"])
        assert figures["tflop_per_s"] == pytest.approx(
            figures["executed_tflop"] / figures["seconds"]
        )
    # Every metric of a pruning is timed and compared (the registry's tuple: all but taylor).
    assert tuple(record["error_vs_highest"]) == PRUNING_METRICS == SET_METRICS
    # A CPU computes float32 whatever precision is asked: no difference from "highest".
    assert max(record["error_vs_highest"].values()) <= 1e-6
