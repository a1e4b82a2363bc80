"""Shapley values of heads: how many set ablations (and seconds) permutation sampling needs for
a given standard error, and whether antithetic sampling lowers the error per set ablation.

Sections:

1. Digits (the built-in model, 6 layers x 4 heads, trained): ``head_shapley`` on held-out
   digits with ``target_stderr`` 0.01 and 0.005 on ``prob_drop`` (permutations, set ablations,
   seconds until every head's standard error is below the target); then antithetic and
   independent sampling with the same number of permutations, over several seeds.
2. ViT-S/16 and ViT-B/16 shaped models with random weights, a few images, a fixed number of
   permutations of every head (72 and 144 players; antithetic, then independent).  Random
   weights leave the unpruned model unsure (``init_params``: p(top-1) about 0.02 on 1,000
   classes, so every ``prob_drop`` is below 0.02 and any target is met at once): the classifier's
   kernel and bias are multiplied by ``--logit-scale`` so that p(top-1) is large, as a trained
   model's is.  The labels are the unpruned predictions.  The permutations a target needs are
   projected from the measured errors (``permutations * (stderr / target)^2``: the error falls as
   one over the square root of the permutations), with the largest head's error and the mean
   head's.  With ``--reach``, each variant is instead run until every head's standard error is
   below the smallest of ``--targets`` (antithetic, at most 2,048 permutations), and the
   permutations, set ablations and seconds at which each target was met are measured, as for the
   digits model.

"Error per set ablation" is the mean over heads of ``stderr^2`` times the set ablations that
gave it: the variance bought per unit of work, lower is better.  Seconds include compiling the
set engine's layer programs (each first stream-count shape compiles once per process).

Run (each under 10 minutes on the busy 2-core development CPU; benchmarks/RESULTS.md):
      python benchmarks/shapley.py --skip-vit --compare-seeds 0 --digits-images 32
      python benchmarks/shapley.py --skip-vit --targets --compare-seeds 2
             --compare-permutations 64 --digits-images 32
      python benchmarks/shapley.py --skip-digits --variants S/16 --images 2 --permutations 8
             --samplings antithetic                  (and --samplings independent)
      python benchmarks/shapley.py --skip-digits --variants B/16 --images 1 --permutations 4
             --samplings antithetic
      python benchmarks/shapley.py --skip-digits --variants S/16 --images 2 --reach
             --targets 0.02 0.01               (until every head's stderr is below 0.01)
With no options it runs the digits sections and ViT-S/16 with both samplings in one process (not
timed so; its parts took 24 minutes in all above). ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
from head_sets import set_flops

from jaxvit_interp.benchmark import full_flops
from jaxvit_interp.budget import params_bytes
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import head_shapley
from jaxvit_interp.importance.shapley import (
    MIN_PERMUTATIONS_TO_STOP,
    ROUND_PERMUTATIONS,
    SHAPLEY_SAMPLINGS,
    draw_unit,
    prefix_sets,
)
from jaxvit_interp.model import ViTConfig, init_params, run_model
from jaxvit_interp.progress import Progress

QUIET = Execution(progress=False)


def run(config, params, images, labels, **kwargs) -> tuple[dict, object]:
    """One ``head_shapley`` call, timed: its figures and the result."""
    start = time.perf_counter()
    result = head_shapley(config, params, images, labels, execution=QUIET, **kwargs)
    seconds = time.perf_counter() - start
    stderr = result.stderr[~np.isnan(result.stderr)]
    return {
        "sampling": result.sampling,
        "permutations": result.permutations,
        "set_ablations": result.set_ablations,
        "seconds": round(seconds, 1),
        "converged": result.converged,
        "max_stderr": float(stderr.max()),
        "mean_stderr": float(stderr.mean()),
        "error_per_ablation": float((stderr**2).mean() * result.set_ablations),
        "v_all": result.v_all,
        "sum_of_values": float(np.nansum(result.values)),
        "load_average": os.getloadavg()[0],
    }, result


def compare_samplings(config, params, images, labels, permutations: int, seeds) -> dict:
    """Antithetic and independent sampling, the same permutations, each seed in turn."""
    rows = []
    for seed in seeds:
        for sampling in ("antithetic", "independent"):
            row, _ = run(
                config,
                params,
                images,
                labels,
                exact=False,
                permutations=permutations,
                target_stderr=None,
                sampling=sampling,
                seed=seed,
            )
            rows.append({"seed": seed, **row})
            print(json.dumps(rows[-1]), flush=True)
    mean = {
        s: float(np.mean([r["error_per_ablation"] for r in rows if r["sampling"] == s]))
        for s in ("antithetic", "independent")
    }
    return {
        "runs": rows,
        "mean_error_per_ablation": mean,
        "antithetic_over_independent": mean["antithetic"] / mean["independent"],
    }


class Rounds(Progress):
    """What ``head_shapley`` tells its progress after each round: the permutations so far, the
    largest standard error and the seconds since the start."""

    def __init__(self):
        super().__init__(None)
        self.start = time.perf_counter()
        self.rows: list[tuple[int, float, float]] = []

    def note(self, stderr):
        self.rows.append((round(self.done), float(stderr), time.perf_counter() - self.start))


def drawn_sets(n: int, permutations: int, seed: int, sampling: str = "antithetic") -> np.ndarray:
    """``[set, player]`` bool: the distinct prefixes of the first ``permutations`` permutations
    that ``head_shapley`` draws with ``seed``, the sets it ablates for them."""
    rng = np.random.default_rng(seed)
    units = permutations // (2 if sampling == "antithetic" else 1)
    orders = [o for _ in range(units) for o in draw_unit(rng, n, sampling)]
    return np.unique(np.concatenate([prefix_sets(o) for o in orders]), axis=0)


def digits_section(num_images: int, targets, compare_permutations: int, seeds) -> dict:
    from jaxvit_interp.data import digits

    config, params = digits.load_digits_model()
    images, labels = digits.load_digits("test")
    images, labels = images[:num_images], labels[:num_images]
    # Compile the layer programs of a round first, so the timed runs compare sampling, not
    # compilation (later rounds may still meet a new stream-count shape).
    run(config, params, images, labels, exact=False, permutations=16, target_stderr=None)
    out = {
        "model": "digits (6 layers x 4 heads)",
        "images": num_images,
        "round_gflop_per_image": {
            s: round_flops(config, params, num_images, 0, s) for s in SHAPLEY_SAMPLINGS
        },
    }
    if targets:
        out.update(until_targets(config, params, images, labels, targets))
    if seeds:
        out["compare"] = compare_samplings(
            config, params, images, labels, compare_permutations, seeds
        )
    return out


def until_targets(config, params, images, labels, targets) -> dict:
    """One run until the smallest target is met; where each larger one was met on the way (the
    rule stops at the first round below the target, and a run with that target draws the same
    permutations)."""
    n = config.num_layers * config.num_heads
    rounds = Rounds()
    cap = 2048
    start = time.perf_counter()
    result = head_shapley(
        config,
        params,
        images,
        labels,
        exact=False,
        permutations=cap,
        target_stderr=min(targets),
        execution=Execution(progress=rounds.share(cap)),
    )
    out = {
        "seconds": round(time.perf_counter() - start, 1),
        "permutations": result.permutations,
        "set_ablations": result.set_ablations,
        "rounds": rounds.rows,
        "targets": {},
    }
    for target in targets:
        done, stderr, seconds = next(
            r for r in rounds.rows if r[0] >= MIN_PERMUTATIONS_TO_STOP and r[1] < target
        )
        out["targets"][str(target)] = {
            "permutations": done,
            "set_ablations": len(drawn_sets(n, done, seed=0)),
            "seconds": round(seconds, 1),
            "max_stderr": stderr,
        }
        print(json.dumps({"target": target, **out["targets"][str(target)]}), flush=True)
    top = np.argsort(-np.nan_to_num(result.values, nan=-np.inf).reshape(-1))[:5]
    out["top_heads"] = [
        [int(i // config.num_heads), int(i % config.num_heads), float(result.values.flat[i])]
        for i in top
    ]
    return out


def round_flops(config, params, num_images: int, seed: int, sampling: str) -> dict:
    """GFLOP per image of the first round's sets (the prefixes of ``ROUND_PERMUTATIONS``
    permutations, as ``head_shapley`` draws them with ``seed``) in the set engine's layout
    (see ``head_sets.py``), against one masked forward pass per set."""
    subsets = drawn_sets(config.num_layers * config.num_heads, ROUND_PERMUTATIONS, seed, sampling)
    masks = 1.0 - subsets.reshape(-1, config.num_layers, config.num_heads).astype(np.float32)
    flops = set_flops(config, masks, num_images, params_bytes(params))
    return {
        "sets": len(masks),
        **{k: round(v / 1e9, 1) for k, v in flops.items()},
        "one_pass_per_set": round(len(masks) * full_flops(config) / 1e9, 1),
    }


def vit_section(
    variant: str,
    num_images: int,
    permutations: int,
    logit_scale: float,
    targets,
    samplings,
    reach: bool = False,
):
    c = ViTConfig.from_variant(variant)
    params = init_params(c, 0)
    params["head"] = {k: v * logit_scale for k, v in params["head"].items()}
    images = np.random.default_rng(0).normal(size=(num_images, *c.image_size, 3))
    images = images.astype(np.float32)
    probs = np.asarray(jax.nn.softmax(run_model(c, params, images).logits))
    out = {
        "model": f"ViT-{variant} random weights, classifier x{logit_scale}",
        "images": num_images,
        "players": c.num_layers * c.num_heads,
        "unpruned_top1_prob": probs.max(-1).round(3).tolist(),
        "round_gflop_per_image": {
            s: round_flops(c, params, num_images, 0, s) for s in SHAPLEY_SAMPLINGS
        },
    }
    print(json.dumps(out), flush=True)
    if reach:  # measured, not projected: until every head's error is below the targets
        out["reached"] = until_targets(c, params, images, None, targets)
        return out
    for sampling in samplings:
        row, _ = run(
            c,
            params,
            images,
            None,
            exact=False,
            permutations=permutations,
            target_stderr=None,
            sampling=sampling,
        )
        row["seconds_per_permutation"] = row["seconds"] / row["permutations"]
        row["projected"] = {}
        for target in targets:
            need = {
                which: max(16, int(np.ceil(permutations * (row[f"{which}_stderr"] / target) ** 2)))
                for which in ("max", "mean")
            }
            row["projected"][str(target)] = {
                "permutations_for_max": need["max"],
                "permutations_for_mean": need["mean"],
                "set_ablations_for_max": need["max"] * row["set_ablations"] // permutations,
                "seconds_for_max": round(need["max"] * row["seconds_per_permutation"]),
            }
        out[sampling] = row
        print(json.dumps({sampling: row}), flush=True)
    if len(samplings) == 2:
        out["antithetic_over_independent"] = (
            out["antithetic"]["error_per_ablation"] / out["independent"]["error_per_ablation"]
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits-images", type=int, default=32)
    parser.add_argument("--targets", type=float, nargs="*", default=[0.01, 0.005])
    parser.add_argument("--compare-permutations", type=int, default=64)
    parser.add_argument("--compare-seeds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["S/16"])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--permutations", type=int, default=8)
    parser.add_argument("--logit-scale", type=float, default=8.0)
    parser.add_argument(
        "--samplings", nargs="+", default=list(SHAPLEY_SAMPLINGS), choices=SHAPLEY_SAMPLINGS
    )
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument(
        "--reach",
        action="store_true",
        help="run each ViT until every head's stderr is below the smallest --targets",
    )
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs",
        "load_average_start": os.getloadavg(),
    }
    start = time.perf_counter()
    if not args.skip_digits:
        report["digits"] = digits_section(
            args.digits_images, args.targets, args.compare_permutations, range(args.compare_seeds)
        )
    if not args.skip_vit:
        for variant in args.variants:
            report[variant] = vit_section(
                variant,
                args.images,
                args.permutations,
                args.logit_scale,
                args.targets,
                args.samplings,
                args.reach,
            )
    report["seconds"] = round(time.perf_counter() - start)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
