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
   steps) and the FLOPs the engine executes against those the sets need.

Run:  python benchmarks/head_sets.py                 (about 50 minutes on a busy 2-core CPU)
      python benchmarks/head_sets.py --skip-vit      (digits only)
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np
from head_importance import (
    _timed,
    full_flops,
    layer_flops,
    prepare_jax_loop,
    prepare_torch_loop,
    readout_flops,
)

from jaxvit_interp.importance import (
    head_importance,
    pairwise_interactions,
    pruning_curves,
    rank_by_metric,
)
from jaxvit_interp.importance.sets import _slot_table, head_masks
from jaxvit_interp.model import ViTConfig, init_params


def digits_section(images_for_curves: int, random_orders: int) -> dict:
    from jaxvit_interp.data import digits

    config, params = digits.load_digits_model()
    train_x, train_y = digits.load_digits("train")
    test_x, test_y = digits.load_digits("test")
    pick = np.random.default_rng(0).choice(len(train_y), 256, replace=False)
    importance = head_importance(
        config, params, train_x[pick], train_y[pick], metrics=("prob_drop",), progress=False
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
        progress=False,
    )
    seconds = time.perf_counter() - start
    out = {"images": len(y), "heads": config.num_layers * config.num_heads, "seconds": seconds}
    for name, curve in curves.items():
        out[name] = {
            "area": curve.area.tolist(),
            "removable_1pt": curve.removable(1.0).tolist(),
            "removable_5pt": curve.removable(5.0).tolist(),
            "accuracy": np.round(curve.accuracy, 4).tolist(),
        }
    return out


def interactions_section(num_images: int, loop_sets: int, torch_too: bool) -> dict:
    c = ViTConfig.from_variant("S/16")
    params = init_params(c, 0)
    images = np.random.default_rng(0).normal(size=(num_images, *c.image_size, 3))
    images = images.astype(np.float32)
    ranked = rank_by_metric(
        head_importance(c, params, images[:2], metrics=("prob_drop",), progress=False), "prob_drop"
    )
    heads = [tuple(map(int, h)) for h in ranked[:16]]
    sets = 16 + 16 * 15 // 2
    first = _timed(lambda: pairwise_interactions(c, params, images, heads, progress=False))
    engine = _timed(lambda: pairwise_interactions(c, params, images, heads, progress=False))
    # One forward pass per set costs the same whatever the set holds: time a sample of passes.
    sample = heads[:loop_sets]
    jax_per_pass = prepare_jax_loop(c, params, images, sample)()
    out = {
        "model": "ViT-S/16 random weights",
        "images": num_images,
        "sets": sets,
        "engine_seconds": engine,
        "engine_first_call_seconds": first,
        "jax_loop_seconds": jax_per_pass * sets,
        "ratio_jax_loop_over_engine": jax_per_pass * sets / engine,
    }
    if torch_too:
        run, _, versions = prepare_torch_loop(c, images, sample)
        out["torch_loop_seconds"] = run() * sets
        out["ratio_torch_loop_over_engine"] = out["torch_loop_seconds"] / engine
        out["torch"] = versions
    return out


def set_flops(c: ViTConfig, masks: np.ndarray) -> tuple[int, int]:
    """(needed, executed) FLOPs per image of ablating ``masks`` ``[set, L, H]``: a set needs its
    layers from the lowest pruned one up and the readout; the engine also runs the padding
    slots of the less crowded spawn layers (the unpruned pass is shared and left out of both)."""
    lowest = (masks.min(axis=2) == 0).argmax(axis=1)
    per_set = lambda low: (c.num_layers - low) * layer_flops(c) + readout_flops(c)  # noqa: E731
    needed = int(sum(per_set(int(low)) for low in lowest))
    spawn_layers, table, _ = _slot_table(masks)
    executed = int(sum(table.shape[1] * per_set(layer) for layer in spawn_layers))
    return needed, executed


def greedy_section(num_images: int, steps: int) -> dict:
    c = ViTConfig.from_variant("S/16")
    params = init_params(c, 0)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(num_images, *c.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, c.num_classes, num_images)
    start = time.perf_counter()
    curve = pruning_curves(
        c, params, images, labels, orders=("greedy",), max_heads=steps, progress=False
    )["greedy"]
    seconds = time.perf_counter() - start
    # FLOPs of the steps run: step t ablates removed[:t] + each remaining head.
    all_heads = [(layer, h) for layer in range(c.num_layers) for h in range(c.num_heads)]
    needed = executed = 0
    for t in range(steps):
        removed = [tuple(v) for v in curve.heads[0, :t]]
        sets = [[*removed, h] for h in all_heads if h not in removed]
        n, e = set_flops(c, head_masks(c, sets))
        needed, executed = needed + n, executed + e
    total_heads = c.num_layers * c.num_heads
    return {
        "model": "ViT-S/16 random weights",
        "images": num_images,
        "steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "needed_gflop_per_image": needed / 1e9,
        "executed_gflop_per_image": executed / 1e9,
        "full_pass_gflop_per_image": full_flops(c) / 1e9,
        "steps_for_all_heads": total_heads,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curve-images", type=int, default=500)
    parser.add_argument("--random-orders", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--loop-sets", type=int, default=4)
    parser.add_argument("--greedy-steps", type=int, default=2)
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
        "digits": digits_section(args.curve_images, args.random_orders),
    }
    print(json.dumps(report, indent=1), flush=True)
    if not args.skip_vit:
        report["interactions"] = interactions_section(
            args.images, args.loop_sets, not args.no_torch
        )
        print(json.dumps(report["interactions"], indent=1), flush=True)
        report["greedy"] = greedy_section(args.images, args.greedy_steps)
        print(json.dumps(report["greedy"], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
