"""Head sets: pruning curves on the digits model, and the speed of pairwise interactions and
greedy pruning against one forward pass per set.

Sections:

1. Digits (the built-in model): pruning curves on held-out images in importance order
   (``prob_drop`` from training images), greedy order and random orders; curve areas and the
   heads that can go before accuracy drops 1 and 5 points.
2. Pairwise interactions of 16 heads (120 pairs + 16 singles) of a random-weight ViT-S/16 on 8
   images: ``pairwise_interactions`` against a plain jitted JAX forward pass per set and
   transformers on PyTorch with ``head_mask`` per set, timed in the same run (the loops are timed
   on a sample of sets and scaled).
3. Greedy pruning of ViT-S/16 on 8 images: time per greedy step (the first ``--greedy-steps``
   steps; 72 is the whole curve), the programs compiled, and the FLOPs the engine executes
   against those the sets need.

FLOPs are per image, the shared unpruned pass left out: "needed" runs each set from its lowest
pruned layer up, "shared" each distinct set from the layer where it leaves the set it shares
the most layers with (what a tree of streams needs), "executed" what the engine's layout runs
(padding to bucket sizes included).

Run:  python benchmarks/head_sets.py                 (about 50 minutes on a busy 2-core CPU)
      python benchmarks/head_sets.py --skip-vit      (digits only)
      python benchmarks/head_sets.py --skip-digits --greedy-steps 72   (ViT-S/16 parts)
      python benchmarks/head_sets.py --skip-digits --skip-interactions --greedy-steps 72
                                                     (the whole greedy curve alone)
      python benchmarks/head_sets.py --layout-only   (FLOPs and program shapes of a whole
                                                      greedy curve, host only, a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
from head_importance import _timed, prepare_jax_loop, prepare_torch_loop

from jaxvit_interp.benchmark import full_flops, last_layer_flops, layer_flops, readout_flops
from jaxvit_interp.budget import params_bytes
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import (
    head_importance,
    pairwise_interactions,
    pruning,
    pruning_curves,
    rank_by_metric,
    set_engine,
)
from jaxvit_interp.importance.sets import head_masks
from jaxvit_interp.model import ViTConfig, init_params

QUIET = Execution(progress=False)


def digits_section(images_for_curves: int, random_orders: int) -> dict:
    from jaxvit_interp.data import digits

    config, params = digits.load_digits_model()
    train_x, train_y = digits.load_digits("train")
    test_x, test_y = digits.load_digits("test")
    pick = np.random.default_rng(0).choice(len(train_y), 256, replace=False)
    importance = head_importance(
        config, params, train_x[pick], train_y[pick], metrics=("prob_drop",), execution=QUIET
    )
    x, y = test_x[:images_for_curves], test_y[:images_for_curves]
    # The importance order comes from the training images' importance, applied to held-out ones.
    start = time.perf_counter()
    curves = pruning_curves(
        config,
        params,
        x,
        y,
        importance=importance,
        random_orders=random_orders,
        execution=QUIET,
    )
    seconds = time.perf_counter() - start
    out = {"images": len(y), "heads": config.num_layers * config.num_heads, "seconds": seconds}
    for name, curve in curves.items():
        out[name] = {
            "area": curve.area.tolist(),
            "removable_1pt": curve.removable_by_run(1.0).tolist(),
            "removable_5pt": curve.removable_by_run(5.0).tolist(),
            "accuracy": np.round(curve.accuracy, 4).tolist(),
        }
    return out


def interactions_section(num_images: int, loop_sets: int, torch_too: bool) -> dict:
    c = ViTConfig.from_variant("S/16")
    params = init_params(c, 0)
    images = np.random.default_rng(0).normal(size=(num_images, *c.image_size, 3))
    images = images.astype(np.float32)
    ranked = rank_by_metric(
        head_importance(c, params, images[:2], metrics=("prob_drop",), execution=QUIET),
        "prob_drop",
    )
    heads = [tuple(map(int, h)) for h in ranked[:16]]
    sets = [[h] for h in heads] + [[a, b] for i, a in enumerate(heads) for b in heads[i + 1 :]]
    run = lambda: pairwise_interactions(c, params, images, heads, execution=QUIET)  # noqa: E731
    first = _timed(run)
    compiled = set_engine._layer_step._cache_size()
    # The engine and the two loops in turn, so that load from other jobs hits all of them.
    # One forward pass per set costs the same whatever the set holds: time a sample of passes.
    sample = heads[:loop_sets]
    jax_loop = prepare_jax_loop(c, params, images, sample)
    torch_loop = prepare_torch_loop(c, images, sample) if torch_too else None
    rounds = []
    for _ in range(2):
        row = {"engine": _timed(run), "jax_loop": jax_loop() * len(sets)}
        if torch_loop is not None:
            row["torch_loop"] = torch_loop[0]() * len(sets)
        rounds.append(row)
        print(json.dumps(row), flush=True)
    best = {k: min(r[k] for r in rounds) for k in rounds[0]}
    flops = set_flops(c, head_masks(c, sets), num_images, params_bytes(params))
    out = {
        "model": "ViT-S/16 random weights",
        "images": num_images,
        "heads": heads,
        "sets": len(sets),
        "engine_seconds": best["engine"],
        "engine_first_call_seconds": first,
        "layer_programs_compiled": compiled,
        "jax_loop_seconds": best["jax_loop"],
        "ratio_jax_loop_over_engine": best["jax_loop"] / best["engine"],
        "rounds": rounds,
        "gflop_per_image": {k: v / 1e9 for k, v in flops.items()},
        "loop_gflop_per_image": len(sets) * full_flops(c) / 1e9,
    }
    if torch_loop is not None:
        out["torch_loop_seconds"] = best["torch_loop"]
        out["ratio_torch_loop_over_engine"] = best["torch_loop"] / best["engine"]
        out["torch"] = torch_loop[2]
    return out


def default_plans(c, masks, num_images: int, param_bytes: int):
    """The chunk plans ``jvi.ablate`` makes for ``masks`` on one device with default settings."""
    _, _, plans = set_engine.plan_sets(
        c,
        masks,
        Execution(),
        num_images=num_images,
        fixed_bytes=param_bytes,
    )
    return plans


def set_flops(c: ViTConfig, masks: np.ndarray, num_images: int, param_bytes: int) -> dict:
    """Needed, shared and executed FLOPs per image of ablating ``masks`` ``[set, L, H]`` (see
    the module docstring), with the layout ``jvi.ablate`` uses for ``num_images`` images.  The
    last block counts as the engine runs it (CLS query only) in all three."""
    L = c.num_layers
    per_layer = [layer_flops(c)] * (L - 1) + [last_layer_flops(c)]
    from_layer = lambda low: sum(per_layer[low:]) + readout_flops(c)  # noqa: E731
    lowest = (masks.min(axis=2) == 0).argmax(axis=1)
    plans = default_plans(c, masks, num_images, param_bytes)
    executed = shared = 0
    for plan in plans:
        executed += sum(n * f for n, f in zip(plan.capacity, per_layer))
        executed += plan.capacity[-1] * readout_flops(c)
        shared += sum(from_layer(int(b)) for b in plan.branch)  # a chunk's sets are distinct
    return {
        "needed": int(sum(from_layer(int(low)) for low in lowest)),
        "shared": int(shared),
        "executed": int(executed),
    }


def greedy_section(num_images: int, steps: int) -> dict:
    c = ViTConfig.from_variant("S/16")
    params = init_params(c, 0)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(num_images, *c.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, c.num_classes, num_images)
    # Each greedy step is one ablate call: time each, and count the layer programs it compiles.
    step_seconds, step_compiled, flops = [], [], []
    ablate = pruning.ablate
    size = params_bytes(params)

    def timed_ablate(config, params, images, sets, *args, **kwargs):
        before = set_engine._layer_step._cache_size()
        start = time.perf_counter()
        result = ablate(config, params, images, sets, *args, **kwargs)
        step_seconds.append(time.perf_counter() - start)
        step_compiled.append(set_engine._layer_step._cache_size() - before)
        flops.append(set_flops(config, head_masks(config, sets), num_images, size))
        gflop = {k: round(v / 1e9, 1) for k, v in flops[-1].items()}
        print(
            f"greedy step {len(step_seconds)}: {len(sets)} sets, {step_seconds[-1]:.1f} s, "
            f"{step_compiled[-1]} layer programs compiled, GFLOP per image {gflop}",
            flush=True,
        )
        return result

    pruning.ablate = timed_ablate
    try:
        start = time.perf_counter()
        pruning_curves(
            c, params, images, labels, orders=("greedy",), max_heads=steps, execution=QUIET
        )
        seconds = time.perf_counter() - start
    finally:
        pruning.ablate = ablate
    total = {k: sum(f[k] for f in flops) for k in flops[0]}
    return {
        "model": "ViT-S/16 random weights",
        "images": num_images,
        "steps": steps,
        "seconds": sum(step_seconds),
        "wall_seconds": seconds,
        "step_seconds": [round(t, 2) for t in step_seconds],
        "step_programs_compiled": step_compiled,
        "gflop_per_image": {k: v / 1e9 for k, v in total.items()},
        "step_gflop_per_image": [{k: round(v / 1e9, 1) for k, v in f.items()} for f in flops],
        "full_pass_gflop_per_image": full_flops(c) / 1e9,
        "steps_for_all_heads": c.num_layers * c.num_heads,
    }


def greedy_layout_flops(num_images: int, seed: int = 0) -> dict:
    """FLOPs of all 72 greedy steps of ViT-S/16 with heads removed in a random order (host
    only: the layout depends on which heads are removed, not on the model's values), and how
    many distinct layer shapes (compiled programs) those steps use."""
    c = ViTConfig.from_variant("S/16")
    shapes = jax.tree_util.tree_leaves(jax.eval_shape(lambda: init_params(c, 0)))
    size = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in shapes)
    heads = [(layer, h) for layer in range(c.num_layers) for h in range(c.num_heads)]
    order = [heads[i] for i in np.random.default_rng(seed).permutation(len(heads))]
    total = {"needed": 0, "shared": 0, "executed": 0}
    shapes, readouts = set(), set()
    for t in range(len(heads)):
        removed = order[:t]
        sets = [[*removed, h] for h in heads if h not in removed]
        masks = head_masks(c, sets)
        for k, v in set_flops(c, masks, num_images, size).items():
            total[k] += v
        plans = default_plans(c, masks, num_images, size)
        for plan in plans:
            cap = (0, *plan.capacity)
            shapes.update((cap[j], cap[j + 1], j == c.num_layers - 1) for j in range(c.num_layers))
            readouts.add(plan.capacity[-1])
    return {
        "order": f"random (seed {seed})",
        "steps": len(heads),
        "gflop_per_image": {k: v / 1e9 for k, v in total.items()},
        "loop_gflop_per_image": sum(len(heads) - t for t in range(len(heads)))
        * full_flops(c)
        / 1e9,
        "distinct_layer_shapes": len(shapes),
        "distinct_readout_shapes": len(readouts),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curve-images", type=int, default=500)
    parser.add_argument("--random-orders", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--loop-sets", type=int, default=4)
    parser.add_argument("--greedy-steps", type=int, default=2)
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument(
        "--skip-interactions", action="store_true", help="ViT-S/16: the greedy steps only"
    )
    parser.add_argument(
        "--layout-only", action="store_true", help="only the FLOPs of a whole greedy curve's layout"
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
        "load_average_start": os.getloadavg(),
    }
    if args.layout_only:
        print(json.dumps(greedy_layout_flops(args.images), indent=1))
        return
    if not args.skip_digits:
        report["digits"] = digits_section(args.curve_images, args.random_orders)
        print(json.dumps(report, indent=1), flush=True)
    if not args.skip_vit and not args.skip_interactions:
        report["interactions"] = interactions_section(
            args.images, args.loop_sets, not args.no_torch
        )
        print(json.dumps(report["interactions"], indent=1), flush=True)
    if not args.skip_vit:
        if args.greedy_steps:
            report["greedy"] = greedy_section(args.images, args.greedy_steps)
            print(json.dumps(report["greedy"], indent=1), flush=True)
    report["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
