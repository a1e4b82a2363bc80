"""The ``jaxvit-interp`` command: ``demo``, ``analyze``, ``site``, ``inspect``, ``train-digits``.

Every command ends a failure with one line, ``jaxvit-interp: error: ...``, and exit status 2;
tracebacks are only for bugs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

BUILTIN_DIGITS = "builtin:digits"
DEFAULT_DEMO_OUT = "demo-site"


class UsageError(ValueError):
    """A bad command line or configuration file."""


def _log(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _load_model(checkpoint: str, allow_pickle: bool = False):
    """``(config, params, identity)`` of a checkpoint path or ``builtin:digits``."""
    import hashlib

    if checkpoint == BUILTIN_DIGITS:
        from jaxvit_interp.data.digits import WEIGHTS_FILE, builtin_path, load_digits_model

        config, params = load_digits_model()
        path = builtin_path(WEIGHTS_FILE)
        return config, params, {"path": BUILTIN_DIGITS, "sha256": _sha256(path)}
    from jaxvit_interp.model.checkpoint import load_checkpoint

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    config, params = load_checkpoint(path, allow_pickle=allow_pickle)
    digest = (
        _sha256(path)
        if path.is_file()
        else hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    )
    return config, params, {"path": str(path), "sha256": digest}


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_images(source: str, config, labels_csv: str | None, max_images: int | None, args):
    """``(images, labels, ids, class_names)`` from a folder or ``builtin:digits``."""
    if source == BUILTIN_DIGITS:
        from jaxvit_interp.data.digits import CLASS_NAMES, load_digits

        if labels_csv:
            raise UsageError("--labels cannot be combined with the built-in digits images")
        images, labels = load_digits("test")
        ids = [f"test-{i:03d}" for i in range(len(images))]
        if max_images:
            images, labels, ids = images[:max_images], labels[:max_images], ids[:max_images]
        return images, labels, ids, list(CLASS_NAMES)
    from jaxvit_interp.data.images import load_image_folder

    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {source} does not exist")
    import logging
    import warnings

    # The loader logs each skipped file and warns once; here one clean line per file says it all.
    loader_log = logging.getLogger("jaxvit_interp.data.images")
    level = loader_log.level
    loader_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            image_set = load_image_folder(
                folder, config, labels_csv=labels_csv, progress=not args.quiet
            )
    finally:
        loader_log.setLevel(level)
    for path, reason in image_set.skipped:
        print(f"jaxvit-interp: skipped {path}: {reason}", file=sys.stderr)
    images, labels, ids = image_set.images, image_set.labels, list(image_set.ids)
    if max_images:
        images, ids = images[:max_images], ids[:max_images]
        labels = None if labels is None else labels[:max_images]
    class_names = list(image_set.class_names) if image_set.class_names else None
    if labels is not None and len(labels) and int(max(labels)) >= config.num_classes:
        worst = int(max(labels))
        name = class_names[worst] if class_names else str(worst)
        raise UsageError(
            f"label {name!r} (class index {worst}) is outside the model's {config.num_classes} classes"
        )
    if class_names is not None and len(class_names) != config.num_classes:
        class_names = None  # the folder's classes are a subset; name the model's by index
    return images, labels, ids, class_names


def _settings_from(args, file_settings: dict):
    from jaxvit_interp.pipeline.settings import AnalysisSettings

    values = dict(file_settings)
    for name in (
        "chunk_images",
        "batch_size",
        "partial_images",
        "attention_images",
        "clusters",
        "projection",
        "seed",
        "thumbnail_size",
        "pattern_samples",
    ):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if getattr(args, "memory_budget_mb", None) is not None:
        values["memory_budget_bytes"] = int(args.memory_budget_mb * 2**20)
    return AnalysisSettings.from_dict(values)


def _read_config_file(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"config file {path} is not valid TOML: {err}") from None
    allowed = {"checkpoint", "images", "labels", "out", "max_images", "allow_pickle", "analysis"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return data


def _maybe_distributed(args) -> None:
    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()


def _analyze(args) -> int:
    from jaxvit_interp.pipeline.analyze import analyze

    file_cfg = _read_config_file(args.config)
    checkpoint = args.checkpoint or file_cfg.get("checkpoint")
    images_src = args.images or file_cfg.get("images")
    out = args.out or file_cfg.get("out")
    for flag, value in (("--checkpoint", checkpoint), ("--images", images_src), ("--out", out)):
        if not value:
            raise UsageError(f"{flag} is required (on the command line or in --config)")
    settings = _settings_from(args, file_cfg.get("analysis", {}))
    _maybe_distributed(args)
    config, params, identity = _load_model(
        checkpoint, args.allow_pickle or file_cfg.get("allow_pickle", False)
    )
    images, labels, ids, class_names = _load_images(
        images_src,
        config,
        args.labels or file_cfg.get("labels"),
        args.max_images or file_cfg.get("max_images"),
        args,
    )
    analyze(
        config,
        params,
        images,
        out,
        labels=labels,
        image_ids=ids,
        class_names=class_names,
        model_identity=identity,
        settings=settings,
        progress=not args.quiet,
    )
    print(f"results bundle written to {out}")
    return 0


def _site(args) -> int:
    from jaxvit_interp.bundle import load_bundle
    from jaxvit_interp.site import build_site

    if len(args.target) == 2 and args.target[0] == "build":
        return _site_from_spec(args, args.target[1])
    if len(args.target) != 1:
        raise UsageError(
            "usage: jaxvit-interp site RUN --out DIR, or site build SPEC.toml --out DIR"
        )
    run = Path(args.target[0])
    if not run.exists():
        raise FileNotFoundError(f"run folder {run} does not exist")
    html = build_site(load_bundle(run), args.out, title=args.title)
    print(f"site written to {html}")
    return 0


def _site_from_spec(args, spec_path: str) -> int:
    from jaxvit_interp.bundle import load_bundle
    from jaxvit_interp.pipeline.analyze import analyze
    from jaxvit_interp.pipeline.settings import AnalysisSettings
    from jaxvit_interp.site import build_site
    from jaxvit_interp.site.spec import load_site_spec

    spec = load_site_spec(spec_path)
    out = Path(args.out)
    run = out / "run"
    config, params, identity = _load_model(str(spec.model))
    labels_csv = str(spec.labels) if spec.labels else None
    images, labels, ids, class_names = _load_images(
        str(spec.images), config, labels_csv, spec.max_images, args
    )
    settings = AnalysisSettings.from_dict(
        {
            **spec.analysis,
            "partial_images": spec.partial_images,
            "attention_images": spec.attention_images,
            "thumbnail_size": spec.thumbnail_size,
        }
    )
    analyze(
        config,
        params,
        images,
        run,
        labels=labels,
        image_ids=ids,
        class_names=class_names,
        model_identity=identity,
        settings=settings,
        progress=not args.quiet,
    )
    options = spec.site_options()
    if args.title:
        options["title"] = args.title
    html = build_site(load_bundle(run), out, **options)
    print(f"site written to {html}")
    return 0


def _demo(args) -> int:
    spec = Path(__file__).resolve().parents[1] / "sites" / "digits.toml"
    if not spec.exists():
        raise FileNotFoundError(
            f"the demo's site spec {spec} is missing: run the demo from a checkout of the repository"
        )
    args.target = ["build", str(spec)]
    args.out = args.out or DEFAULT_DEMO_OUT
    return _site_from_spec(args, str(spec))


def _inspect(args) -> int:
    from jaxvit_interp.model.checkpoint import inspect_checkpoint

    report = inspect_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle)
    print(report)
    return 0 if report.ok else 1


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


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis options (defaults: see AnalysisSettings)")
    g.add_argument("--chunk-images", type=int, help="images per resumable chunk (default 64)")
    g.add_argument(
        "--batch-size", type=int, help="images per device pass (default: fit the memory budget)"
    )
    g.add_argument(
        "--memory-budget-mb", type=float, help="per-device working-set budget in MiB for ablations"
    )
    g.add_argument(
        "--partial-images",
        type=int,
        help="images that get partial pruning of every head (default 64)",
    )
    g.add_argument(
        "--attention-images",
        type=int,
        help="images whose full attention is kept for the site (default 32)",
    )
    g.add_argument(
        "--clusters", type=int, help="number of pattern clusters (default: chosen from the data)"
    )
    g.add_argument(
        "--projection",
        choices=("umap", "tsne"),
        help="2-D projection of pattern latents (default umap)",
    )
    g.add_argument(
        "--pattern-samples",
        type=int,
        help="most patterns each autoencoder trains on (default 20000)",
    )
    g.add_argument(
        "--thumbnail-size", type=int, help="longest thumbnail side in pixels (default 112)"
    )
    g.add_argument("--seed", type=int, help="seed of every random choice (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxvit-interp",
        description="How attention works in Vision Transformers: head importance, attention strength "
        "and patterns, published as one offline HTML file.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="analyse the built-in digits model and write its site",
        description="Run every analysis on the built-in digits model and held-out digits, and write "
        "the site. A second run reuses the finished analysis.",
    )
    p.add_argument("--out", help=f"output folder (default: {DEFAULT_DEMO_OUT})")
    p.add_argument("--title", help="page title")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "analyze",
        help="run every analysis on a checkpoint and an image folder; write a results bundle",
        description="Run head importance (with partial pruning), attention strength and attention "
        "patterns. Results are written in chunks; rerunning the same command resumes.",
    )
    p.add_argument(
        "--checkpoint",
        help=f"checkpoint file or folder (.npz, .safetensors, Hugging Face folder, own orbax folder) or {BUILTIN_DIGITS}",
    )
    p.add_argument(
        "--images", help=f"image folder (class subfolders or --labels CSV) or {BUILTIN_DIGITS}"
    )
    p.add_argument("--labels", help="CSV with columns file,label (label: class name or index)")
    p.add_argument("--out", help="run folder to write (resumed if it holds this run)")
    p.add_argument(
        "--config",
        help="TOML file with the same keys as the flags (flags win); settings under [analysis]",
    )
    p.add_argument("--max-images", type=int, help="analyse only the first N images (sorted by id)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow PyTorch pickles (.bin/.pth): loading one runs code",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_analysis_options(p)
    p.set_defaults(func=_analyze)

    p = sub.add_parser(
        "site",
        help="write the site of a run folder, or build one from a site spec",
        description="`site RUN --out DIR` renders a finished run; `site build SPEC.toml --out DIR` runs "
        "the analysis a site spec describes and renders it.",
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="RUN | build SPEC",
        help="a run folder, or `build` and a site spec",
    )
    p.add_argument("--out", required=True, help="folder for index.html")
    p.add_argument("--title", help="page title")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_site)

    p = sub.add_parser("inspect", help="list a checkpoint's tensors against what the model needs")
    p.add_argument("checkpoint")
    p.add_argument("--allow-pickle", action="store_true", help="allow PyTorch pickles (.bin/.pth)")
    p.set_defaults(func=_inspect)

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
    from jaxvit_interp.bundle import BundleError
    from jaxvit_interp.model.checkpoint import CheckpointError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("jaxvit-interp: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (
        UsageError,
        CheckpointError,
        BundleError,
        FileNotFoundError,
        NotADirectoryError,
        ValueError,
    ) as err:
        if os.environ.get("JAXVIT_DEBUG"):
            raise
        print(f"jaxvit-interp: error: {err or type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
