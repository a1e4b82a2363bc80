"""Explanation maps: seconds per image of each method of ``explain``, many images per compiled
call against one image per call.

``batched``: ``explain`` over every image at once (its batches as the memory planner cuts them);
``one by one``: ``explain`` called per image (``batch_size=1``), the loop a per-image autograd
implementation would run. Both compute the same maps; each way is timed for ``--rounds`` rounds
after a round that compiles it. ``--model digits`` is the shipped digits ViT on held-out digits;
a variant (``S/16``) has random weights and pixels.

Run:  python benchmarks/explain_maps.py                                    (digits, 32 images)
      python benchmarks/explain_maps.py --model S/16 --images 4 --methods grad_rollout gradcam
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from jaxvit_interp import Execution, ViTConfig, init_params
from jaxvit_interp.explain import DEFAULT_METHODS, explain


def load(model: str, count: int):
    if model == "digits":
        from jaxvit_interp.data.digits import load_digits, load_digits_model

        config, params = load_digits_model()
        images, labels = load_digits("test")
        return config, params, images[:count], labels[:count]
    config = ViTConfig.from_variant(model, num_classes=1000)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((count, *config.image_size, 3)).astype(np.float32)
    return config, init_params(config, 0), images, rng.integers(0, 1000, size=count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits", help="digits, or a variant such as S/16")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    config, params, images, labels = load(args.model, args.images)
    quiet = Execution(progress=False)
    one = Execution(batch_size=1, progress=False)

    def batched(method):
        return explain(
            config,
            params,
            images,
            labels,
            methods=(method,),
            execution=quiet,
            ig_steps=args.ig_steps,
        ).maps[method]

    def one_by_one(method):
        return np.concatenate(
            [
                explain(
                    config,
                    params,
                    images[i : i + 1],
                    labels[i : i + 1],
                    methods=(method,),
                    execution=one,
                    ig_steps=args.ig_steps,
                ).maps[method]
                for i in range(len(images))
            ]
        )

    print(
        f"{args.model}, {len(images)} images, ig_steps {args.ig_steps}, medians of "
        f"{args.rounds} rounds after a compiling one"
    )
    print("| method | batched s / image | one by one s / image | one by one / batched |")
    print("| --- | ---: | ---: | ---: |")
    for method in args.methods:
        times = {}
        for name, way in (("batched", batched), ("one", one_by_one)):
            way(method)  # compiles
            rounds = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                way(method)
                rounds.append(time.perf_counter() - start)
            times[name] = statistics.median(rounds) / len(images)
        print(
            f"| {method} | {times['batched']:.4f} | {times['one']:.4f} | "
            f"{times['one'] / times['batched']:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
