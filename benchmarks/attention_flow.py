"""Seconds per image of attention flow's max-flow (:func:`jaxvit_interp.explain.flow.flow_maps`)
by token count and depth: where it stops being usable.

The host max-flow dominates ``attention_flow``: the attention pass that feeds it is one compiled
forward per batch (timed in ``forward_throughput.py``), so only ``flow_maps`` is timed here, on
each layer's step ``w I + (1 - w) mean_h A`` (``w = 1/2``) of attention drawn as the softmax of
random logits with a random temperature per head (rows as peaked as a trained model's, more or
less), a CLS token first and a square patch grid. Each size runs ``--images`` images in one call
(as a batch of the attention pass does) after one warm-up call of one image.

With ``--digits N`` it also runs ``attention_flow`` end to end on the first ``N`` test images of
the shipped digits model (attention pass included) and scores its maps, rollout's and a random
order's by deletion and insertion (zero baseline, 16 steps): is flow the more faithful map?

Run:  python benchmarks/attention_flow.py
      python benchmarks/attention_flow.py --sizes 17x6 65x6 --images 4
      python benchmarks/attention_flow.py --sizes --digits 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np

from jaxvit_interp.data.digits import load_digits, load_digits_model
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain import attention_flow, faithfulness
from jaxvit_interp.explain.flow import flow_maps
from jaxvit_interp.rollout import final_rollout_over_images


def random_steps(rng, images: int, tokens: int, layers: int, heads: int = 6) -> np.ndarray:
    """``[images, layers, tokens, tokens]`` rollout steps of random softmax attention."""
    temperature = rng.uniform(0.5, 3.0, (images, layers, heads, 1, 1))
    logits = rng.normal(size=(images, layers, heads, tokens, tokens)) * temperature
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    return 0.5 * np.eye(tokens) + 0.5 * attention.mean(axis=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="*",
        default=["17x6", "65x6", "65x12", "197x6", "197x12"],
        help="TOKENSxLAYERS, tokens = 1 + a square number of patches",
    )
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, default=0, help="digits test images to score")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "load": os.getloadavg(),
            }
        )
    )
    for size in args.sizes:
        tokens, layers = (int(v) for v in size.split("x"))
        side = math.isqrt(tokens - 1)
        if side * side != tokens - 1:
            parser.error(f"--sizes {size}: tokens must be 1 + a square number of patches")
        flow_maps(random_steps(rng, 1, tokens, layers), (side, side), 1, True)  # warm-up
        steps = random_steps(rng, args.images, tokens, layers)
        start = time.perf_counter()
        maps = flow_maps(steps, (side, side), 1, True)
        seconds = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "tokens": tokens,
                    "layers": layers,
                    "images": args.images,
                    "s_per_image": round(seconds / args.images, 4),
                    "map_sum_mean": round(float(maps.sum(axis=(1, 2)).mean()), 4),
                }
            )
        )
    if args.digits:
        score_digits(args.digits)


def score_digits(count: int) -> None:
    """Deletion and insertion areas of flow, rollout and random maps on the digits model."""
    config, params = load_digits_model()
    images, labels = load_digits("test")
    images, labels = images[:count], labels[:count]
    quiet = Execution(progress=False)
    attention_flow(config, params, images[:1], execution=quiet)  # compiles the pass
    start = time.perf_counter()
    flow = attention_flow(config, params, images, execution=quiet)
    seconds = time.perf_counter() - start
    rollout = final_rollout_over_images(config, params, images, execution=quiet).map
    row = {"digits_images": count, "flow_s_per_image": round(seconds / count, 4)}
    for mode in ("deletion", "insertion"):
        for name, maps in (("flow", flow), ("rollout", rollout)):
            result = faithfulness(
                config, params, images, labels, maps, mode=mode, steps=16, execution=quiet
            )
            row[f"{mode}_{name}"] = round(float(result.area.mean()), 4)
        row[f"{mode}_random"] = round(float(result.random_area.mean()), 4)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
