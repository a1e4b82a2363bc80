"""The ``jaxvit-interp`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train_digits(args) -> int:
    from jaxvit_interp.data.digits import train_digits_model
    from jaxvit_interp.model.train import TrainConfig

    train_config = TrainConfig(steps=args.steps, seed=args.seed)
    out = Path(args.out) if args.out else None
    meta = train_digits_model(train_config, directory=out, progress=not args.quiet)
    where = out or "the package's built-in folder"
    print(
        f"held-out accuracy {meta['test_accuracy']:.4f} on {meta['test_images']} images "
        f"(train {meta['train_accuracy']:.4f}); {meta['train_seconds']:.0f} s; saved to {where}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxvit-interp",
        description="How attention works in Vision Transformers: analyses and offline HTML sites.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train-digits",
        help="train the built-in digits ViT (fixed seed, reproducible) and save it",
        description="Train the built-in ViT on scikit-learn's bundled digits and save it, by default "
        "over the copy shipped inside the package.",
    )
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default: 3000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", help="folder to write to instead of the shipped copy")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_digits)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
