"""Do the analyses recover the planted rules of the built-in shapes model?

The shapes images (:mod:`jaxvit_interp.data.shapes`) are labelled by three planted rules: a
marker in patch 0 decides two classes, two touching squares (a local question) a third, and the
number of squares (a global question) the last three. The analyses below are run on the held-out
images exactly as a user would run them, without the rules; the rules are used only afterwards,
to score what the analyses found:

a. Marker. Each head's attention to the marker patch (CLS row, and the mean over all query
   rows) on the marker images, against its class-specific importance for the two marker classes
   (``class_specificity`` of ``prob_drop``) and its activation-patching score between each marker
   image and the same image with the marker blanked (``activation_patching``, denoising).
b. Touch. Each head's 1-hop strength (``model_strength_over_images``), against its
   class-specific importance for ``touching``.
c. Count. Each head's attention distance and its attention mass beyond hop 1, against its
   class-specific importance for ``two`` / ``three`` / ``four``. Those two measures average over
   every query row, blank patches included; a count needs attention that reaches every square,
   so three more measures read the attention where the squares are (each square is one patch),
   on the count images: the CLS row's mass on the squares, how evenly it covers them (the least
   square's share of the CLS row's attention to the squares, times the number of squares: 1 when
   every square gets the same, 0 when one is missed), and each square's attention to the other
   squares (which stand at least one blank patch apart: a reach of 2 hops or more).

For each pair of head scores: the Spearman correlation over the 24 heads (with its p-value), the
overlap of the top 4 heads of each (chance: 4 x 4 / 24 = 0.67; with the chance of an overlap at
least that large between two random sets of 4), and where the top head of the first score ranks
in the second. Then the spread of head entropy, shapes model against digits
model, and the accuracy each class group keeps when its top 4 heads by importance are removed
together, against 4 random heads.

Run:  python benchmarks/shapes_recovery.py [--images 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from scipy.stats import hypergeom, spearmanr

from jaxvit_interp.data.builtin_models import DIGITS, SHAPES
from jaxvit_interp.data.shapes import (
    BACKGROUND,
    CLASS_NAMES,
    COUNT_CLASSES,
    GRID,
    MARKER_CLASSES,
    SQUARE,
    TOUCHING_CLASS,
    load_shapes,
    remove_marker,
)
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import activation_patching, class_specificity, head_importance
from jaxvit_interp.model.run import run_model
from jaxvit_interp.strength import model_strength_over_images

QUIET = Execution(progress=False)
TOP = 4  # heads in a "top set": one layer's worth
MARKER_TOKEN = 1  # patch 0, after CLS


def top_set(scores: np.ndarray, count: int = TOP) -> set[int]:
    """Flat indices of the ``count`` highest scores (NaN lowest)."""
    flat = np.nan_to_num(scores.ravel(), nan=-np.inf)
    return set(np.argsort(-flat, kind="stable")[:count].tolist())


def compare(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> dict:
    """How well head score ``a`` [layer, head] predicts head score ``b``."""
    rho, p = spearmanr(a.ravel(), b.ravel(), nan_policy="omit")
    order_b = np.argsort(-np.nan_to_num(b.ravel(), nan=-np.inf), kind="stable")
    best_a = int(np.nanargmax(a.ravel()))
    heads = a.shape[1]
    overlap = len(top_set(a) & top_set(b))
    return {
        "a": name_a,
        "b": name_b,
        "spearman": float(rho),
        "p_value": float(p),
        "top_overlap": overlap,
        # The chance of so large an overlap between two random top sets (hypergeometric).
        "top_overlap_p": float(hypergeom.sf(overlap - 1, a.size, TOP, TOP)),
        "top_a": [divmod(i, heads) for i in sorted(top_set(a))],
        "top_b": [divmod(i, heads) for i in sorted(top_set(b))],
        "rank_in_b_of_top_a": int(np.nonzero(order_b == best_a)[0][0]) + 1,
        "top_a_head": divmod(best_a, heads),
    }


def attention_to_marker(config, params, images) -> tuple[np.ndarray, np.ndarray]:
    """``(cls_row, all_rows)`` ``[layer, head]``: mean attention paid to patch 0 by CLS and by
    every query (all tokens), over ``images``."""
    cls_row, all_rows = [], []
    for start in range(0, len(images), 100):
        attention = np.asarray(run_model(config, params, images[start : start + 100]).attention)
        cls_row.append(attention[:, :, :, 0, MARKER_TOKEN])
        all_rows.append(attention[:, :, :, :, MARKER_TOKEN].mean(-1))
    return np.concatenate(cls_row).mean(0), np.concatenate(all_rows).mean(0)


def square_patches(images: np.ndarray) -> np.ndarray:
    """``[images, patches]`` whether each 2x2 patch holds ink (a square, or the marker)."""
    n, side = len(images), GRID
    blocks = images.reshape(n, side, SQUARE, side, SQUARE)
    return (blocks > BACKGROUND).any(axis=(2, 4)).reshape(n, side * side)


def attention_to_squares(config, params, images) -> dict[str, np.ndarray]:
    """Per head ``[layer, head]``, means over ``images`` (count images: squares only, no marker):
    the CLS row's mass on the squares, its cover of them (the least square's share of that mass,
    times their number), each square's mass on the other squares, and the entropy of the CLS
    row's attention over the patches (renormalised; ln 64 = 4.16 when uniform), which needs no
    knowledge of where the squares are."""
    mass, cover, between, entropy = [], [], [], []
    for start in range(0, len(images), 100):
        batch = images[start : start + 100]
        attention = np.asarray(run_model(config, params, batch).attention)  # [B, L, H, N, N]
        occupied = square_patches(batch)
        cls = attention[:, :, :, 0, 1:].astype(np.float64)
        cls /= cls.sum(-1, keepdims=True)
        entropy.append(-(cls * np.log(np.maximum(cls, 1e-30))).sum(-1))  # [B, L, H]
        for b, where in enumerate(occupied):
            tokens = np.flatnonzero(where) + 1  # after CLS
            to_squares = attention[b, :, :, 0][..., tokens]  # [L, H, squares]
            total = to_squares.sum(-1)
            mass.append(total)
            cover.append(to_squares.min(-1) * len(tokens) / np.maximum(total, 1e-12))
            rows = attention[b][:, :, tokens][..., tokens]  # [L, H, squares, squares]
            others = rows.sum(-1) - np.diagonal(rows, axis1=-2, axis2=-1)
            between.append(others.mean(-1))
    return {
        "mass": np.mean(mass, axis=0),
        "cover": np.mean(cover, axis=0),
        "between": np.mean(between, axis=0),
        "cls_entropy": np.concatenate(entropy).mean(0),
    }


def group_accuracy_without(config, params, images, labels, heads, classes) -> float:
    """Accuracy on the images of ``classes`` with ``heads`` (flat indices) removed together."""
    mask = np.ones((config.num_layers, config.num_heads), np.float32)
    for flat in heads:
        mask[divmod(flat, config.num_heads)] = 0.0
    keep = np.isin(labels, classes)
    logits = np.asarray(run_model(config, params, images[keep], head_mask=mask).logits)
    return float((logits.argmax(-1) == labels[keep]).mean())


def entropy_spread(config, params, images) -> dict:
    entropy = np.asarray(
        model_strength_over_images(
            config, params, images, execution=QUIET
        ).summary.head_entropy_mean
    )
    layer_means = entropy.mean(axis=1)
    return {
        "min": float(entropy.min()),
        "max": float(entropy.max()),
        "std_over_heads": float(entropy.std()),
        "std_within_layers_mean": float(entropy.std(axis=1).mean()),
        "layer_means": [round(float(v), 3) for v in layer_means],
        "heads": np.round(entropy, 3).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600, help="held-out images analysed")
    parser.add_argument("--json", help="write every figure there as JSON too")
    args = parser.parse_args()
    started = time.perf_counter()
    config, params = SHAPES.load_model()
    images, labels = load_shapes("test")
    images, labels = images[: args.images], labels[: args.images]
    counting = list(COUNT_CLASSES)
    groups = {"marker": list(MARKER_CLASSES), "touching": [TOUCHING_CLASS], "count": counting}
    report: dict = {"images": len(labels), "machine": platform.processor() or platform.machine()}
    report["recorded_test_accuracy"] = SHAPES.info()["test_accuracy"]

    predictions = np.asarray(run_model(config, params, images).logits).argmax(-1)
    report["accuracy"] = {
        name: float((predictions == labels)[np.isin(labels, cls)].mean())
        for name, cls in groups.items()
    }

    # The analyses, told nothing about the rules.
    importance = head_importance(config, params, images, labels, execution=QUIET)
    specificity = class_specificity(importance, config.num_classes)["prob_drop_class_specificity"]
    strength = model_strength_over_images(config, params, images, execution=QUIET).summary
    is_marker = np.isin(labels, MARKER_CLASSES)
    marker_images = images[is_marker]
    patching = activation_patching(
        config,
        params,
        marker_images,
        remove_marker(marker_images),
        labels[is_marker],
        execution=QUIET,
    )
    cls_row, all_rows = attention_to_marker(config, params, marker_images)
    squares = attention_to_squares(config, params, images[np.isin(labels, counting)])

    specific = {
        name: np.nanmean(specificity[cls], axis=0) for name, cls in groups.items()
    }  # [layer, head] mean specificity over the group's classes
    patch_score = np.nanmean(np.asarray(patching.score), axis=0)
    one_hop = np.asarray(strength.strength_mean)[:, :, 1]
    mass = np.asarray(strength.mass_mean)
    beyond_one_hop = 1.0 - mass[:, :, 0] - mass[:, :, 1]
    distance = np.asarray(strength.distance_mean)

    report["comparisons"] = [
        compare("CLS attention to patch 0", cls_row, "marker specificity", specific["marker"]),
        compare("all-row attention to patch 0", all_rows, "marker specificity", specific["marker"]),
        compare("CLS attention to patch 0", cls_row, "marker patching score", patch_score),
        compare("all-row attention to patch 0", all_rows, "marker patching score", patch_score),
        compare("marker specificity", specific["marker"], "marker patching score", patch_score),
        compare("1-hop strength", one_hop, "touching specificity", specific["touching"]),
        compare("1-hop strength", one_hop, "count specificity", specific["count"]),
        compare("attention distance", distance, "count specificity", specific["count"]),
        compare("mass beyond hop 1", beyond_one_hop, "count specificity", specific["count"]),
        compare("attention distance", distance, "touching specificity", specific["touching"]),
        compare("CLS mass on the squares", squares["mass"], "count specificity", specific["count"]),
        compare("CLS cover of the squares", squares["cover"], "count specificity",
                specific["count"]),
        compare("square-to-square attention", squares["between"], "count specificity",
                specific["count"]),
        compare("CLS-row entropy (count images)", squares["cls_entropy"], "count specificity",
                specific["count"]),
    ]  # fmt: skip
    report["squares"] = {name: np.round(v, 4).tolist() for name, v in squares.items()}

    # Removing each group's top heads (by its specificity) together, against random sets.
    draws = np.random.default_rng(0)
    removal = {}
    for name, cls in groups.items():
        top = sorted(top_set(specific[name]))
        random_sets = [draws.choice(config.num_layers * config.num_heads, TOP, replace=False)
                       for _ in range(20)]  # fmt: skip
        removal[name] = {
            "top_heads": [divmod(i, config.num_heads) for i in top],
            "accuracy_without_top": group_accuracy_without(
                config, params, images, labels, top, cls
            ),
            "accuracy_without_random_mean": float(
                np.mean(
                    [
                        group_accuracy_without(config, params, images, labels, r, cls)
                        for r in random_sets
                    ]
                )
            ),
            "other_groups_without_top": {
                other: group_accuracy_without(config, params, images, labels, top, ocls)
                for other, ocls in groups.items()
                if other != name
            },
        }
    report["removal"] = removal

    digits_config, digits_params = DIGITS.load_model()
    report["entropy"] = {
        "shapes": entropy_spread(config, params, images),
        "digits": entropy_spread(digits_config, digits_params, DIGITS.load_images("test")[0]),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)

    print(f"{len(labels)} held-out images; classes {CLASS_NAMES}")
    print("accuracy by group:", {k: round(v, 4) for k, v in report["accuracy"].items()})
    for c in report["comparisons"]:
        print(
            f"{c['a']:>30} vs {c['b']:<24} spearman {c['spearman']:+.2f} (p {c['p_value']:.2g})"
            f"  top-{TOP} overlap {c['top_overlap']}/{TOP} (p {c['top_overlap_p']:.2g})  top head {c['top_a_head']} ranks "
            f"{c['rank_in_b_of_top_a']} (top a {c['top_a']}, top b {c['top_b']})"
        )
    for name, r in removal.items():
        print(
            f"{name}: without its top {TOP} heads {r['top_heads']}: accuracy "
            f"{r['accuracy_without_top']:.3f} (4 random heads: {r['accuracy_without_random_mean']:.3f}); "
            f"other groups {r['other_groups_without_top']}"
        )
    for model, e in report["entropy"].items():
        print(
            f"{model}: head entropy {e['min']:.2f}..{e['max']:.2f} nats, std over heads "
            f"{e['std_over_heads']:.3f}, mean std within a layer {e['std_within_layers_mean']:.3f}, "
            f"layer means {e['layer_means']}"
        )
    print(f"{report['seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=lambda o: o.tolist())


if __name__ == "__main__":
    main()
