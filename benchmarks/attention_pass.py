"""The attention-reading part of ``analyze``'s chunk stage: one pass for every analysis against
one pass per analysis.

The chunk stage (:mod:`jaxvit_interp.pipeline.chunk`) runs the model once per batch and reduces
that batch's attention for hop strength, special-token mass, patterns, rollout and the kept
attention (every reducer of :data:`~jaxvit_interp.pipeline.analyses.PASS_ANALYSES`). Before, each
of them ran its own pass over the chunk: the public ``*_over_images`` functions still do, so both
ways are timed here in one process, on the same images (random weights and pixels), in turn for
``--rounds`` rounds after a round that compiles them:

  one pass:  the chunk stage's attention pass with every reducer (every image's attention kept);
  separate:  model_strength_over_images, model_special_mass_over_images (a model with special
             tokens), collect_patterns, final_rollout_over_images and attention_over_images with
             the same encoding of the attention.

Both compute the same arrays (the suite checks each reducer against its function). The ablations,
which dominate a chunk, are not part of either.

Run:  python benchmarks/attention_pass.py                          (ViT-B/16, 8 images)
      python benchmarks/attention_pass.py --variant S/16 --images 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from jaxvit_interp import AnalysisSettings, Execution, ViTConfig, init_params
from jaxvit_interp.attention_codes import encode_attention
from jaxvit_interp.model.run import attention_over_images
from jaxvit_interp.patterns import collect_patterns
from jaxvit_interp.pipeline.analyses import PASS_ANALYSES, pattern_kinds
from jaxvit_interp.pipeline.chunk import _pass_arrays, _reducers
from jaxvit_interp.rollout import final_rollout_over_images
from jaxvit_interp.strength import model_special_mass_over_images, model_strength_over_images


def one_pass(config, params, images, execution):
    keep = np.arange(len(images))
    analyses = _reducers(config, AnalysisSettings(), keep, PASS_ANALYSES)
    return _pass_arrays(config, params, images, analyses, execution)


def separate(config, params, images, execution):
    out = {"strength": model_strength_over_images(config, params, images, execution=execution)}
    if config.num_prefix_tokens:
        out["special"] = model_special_mass_over_images(config, params, images, execution=execution)
    kinds = pattern_kinds(config, AnalysisSettings())
    out["patterns"] = collect_patterns(config, params, images, kinds=kinds, execution=execution)
    out["rollout"] = final_rollout_over_images(config, params, images, execution=execution)
    attention = attention_over_images(config, params, images, execution=execution)
    out["attention"] = encode_attention(attention, config.num_prefix_tokens)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    config = ViTConfig.from_variant(args.variant, num_classes=1000)
    params = init_params(config, 0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.images, *config.image_size, 3)).astype(np.float32)
    execution = Execution(progress=False)
    ways = {"one pass": one_pass, "separate": separate}

    def timed(way):
        start = time.perf_counter()
        ways[way](config, params, images, execution)
        return time.perf_counter() - start

    first = {way: timed(way) for way in ways}  # compiles
    rounds = []
    for _ in range(args.rounds):
        rounds.append({way: timed(way) for way in ways})
        r = rounds[-1]
        print(
            f"round: one pass {r['one pass']:.2f} s, separate {r['separate']:.2f} s, "
            f"ratio {r['separate'] / r['one pass']:.2f}",
            flush=True,
        )
    median = {way: statistics.median(r[way] for r in rounds) for way in ways}
    ratios = [r["separate"] / r["one pass"] for r in rounds]
    print(
        f"{args.variant}, {args.images} images ({platform.processor() or platform.machine()}): "
        f"one pass {median['one pass'] / args.images:.3f} s an image, separate passes "
        f"{median['separate'] / args.images:.3f} s an image (medians of {args.rounds} rounds); "
        f"separate / one pass: median {statistics.median(ratios):.2f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}); first calls with compilation "
        f"{first['one pass']:.1f} s and {first['separate']:.1f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "variant": args.variant,
                    "images": args.images,
                    "rounds": rounds,
                    "first": first,
                    "median_seconds": median,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
