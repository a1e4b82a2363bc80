"""The ``jaxvit-interp`` command: ``demo``, ``analyze``, ``site``, ``inspect``, ``train-digits``.

Every failure that is the input's or the environment's fault (a bad option, file or label, a
corrupt checkpoint, a full disk, a closed pipe) ends with one line, ``jaxvit-interp: error:
...`` (plus indented detail), and exit status 2. Tracebacks are only for bugs; set
``JAXVIT_DEBUG=1`` to see one for any error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from jaxvit_interp.errors import InputError, environment_error_message

BUILTIN_DIGITS = "builtin:digits"
DEFAULT_DEMO_OUT = "demo-site"
BUILTIN_DIR = "builtin"
DEMO_SPEC = "digits.toml"


class UsageError(InputError):
    """A bad command line or configuration file."""


def _log(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _positive_int(value, what: str = "the value") -> int:
    """``value`` as an integer of at least 1, or a :class:`UsageError` naming ``what``."""
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or str(number) != str(value).strip() or number < 1:
        raise UsageError(f"{what} must be a whole number of at least 1, got {value!r}")
    return number


def _arg_type(kind: str):
    """An argparse ``type`` that rejects what the analysis would only reject later."""

    def parse(text: str):
        try:
            value = float(text) if kind == "positive_float" else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        least_ok = value > 0 if kind in ("positive_int", "positive_float") else value >= 0
        if not least_ok or value != value:  # the second test refuses NaN
            need = "more than 0" if kind != "count" else "0 or more"
            raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
        return value

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


POSITIVE_INT, POSITIVE_FLOAT, COUNT = (
    _arg_type("positive_int"),
    _arg_type("positive_float"),
    _arg_type("count"),
)


def ALL_OR_COUNT(text: str):  # noqa: N802 (an argparse type, named like the others)
    return text if text == "all" else COUNT(text)


def _load_model(
    checkpoint: str, allow_pickle: bool = False, class_names_file: str | None = None, args=None
):
    """``(config, params, identity)`` of a checkpoint path or ``builtin:digits``.

    ``class_names_file`` (one name per line, or JSON) replaces the class names the checkpoint
    carries, or gives them to one that carries none.
    """
    import hashlib

    if checkpoint == BUILTIN_DIGITS:
        from jaxvit_interp.data.digits import WEIGHTS_FILE, builtin_path, load_digits_model

        config, params = load_digits_model()
        identity = {"path": BUILTIN_DIGITS, "sha256": _sha256(builtin_path(WEIGHTS_FILE))}
    else:
        from jaxvit_interp.model.checkpoint import load_checkpoint

        path = Path(checkpoint)
        if not path.exists():
            raise UsageError(f"checkpoint {checkpoint} does not exist")
        config, params = load_checkpoint(path, allow_pickle=allow_pickle)
        digest = (
            _sha256(path)
            if path.is_file()
            else hashlib.sha256(str(path.resolve()).encode()).hexdigest()
        )
        identity = {"path": str(path), "sha256": digest}
    if class_names_file:
        from jaxvit_interp.data.labels import read_class_names

        if not Path(class_names_file).is_file():
            raise UsageError(f"class names file {class_names_file} does not exist")
        config = config.replace(class_names=read_class_names(class_names_file, config.num_classes))
    elif config.class_names is None and args is not None:
        _log(
            args,
            f"note: the model has no class names; its classes are shown as 0..{config.num_classes - 1} (give --class-names FILE to name them)",
        )
    return config, params, identity


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_images(source: str, config, labels_csv: str | None, max_images: int | None, args):
    """``(images, labels, ids, class_names, label_matching)`` from a folder or ``builtin:digits``.

    Labels are the model's class indices (:mod:`jaxvit_interp.data.labels`); ``label_matching``
    records how they were matched, for the results bundle.
    """
    from jaxvit_interp.data.labels import display_class_names, match_labels

    names = display_class_names(config.class_names, config.num_classes)
    if source == BUILTIN_DIGITS:
        from jaxvit_interp.data.digits import load_digits

        if labels_csv:
            raise UsageError("--labels cannot be combined with the built-in digits images")
        images, digits = load_digits("test")
        ids = [f"test-{i:03d}" for i in range(len(images))]
        if max_images:
            images, digits, ids = images[:max_images], digits[:max_images], ids[:max_images]
        texts = [str(d) for d in digits]
        matching = match_labels(
            texts,
            class_names=config.class_names,
            num_classes=config.num_classes,
            origins={t: f"built-in digit {t}" for t in texts},
            source="builtin",
        )
        labels = [matching.index[t] for t in texts]
        return images, labels, ids, names, matching.to_dict(names)
    from jaxvit_interp.data.images import load_image_folder

    folder = Path(source)
    if not folder.is_dir():
        raise UsageError(f"image folder {source} does not exist")
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
    matching = image_set.label_matching
    if matching is not None and matching.note:
        print(f"jaxvit-interp: note: {matching.note}", file=sys.stderr)
    images, labels, ids = image_set.images, image_set.labels, list(image_set.ids)
    if max_images:
        images, ids = images[:max_images], ids[:max_images]
        labels = None if labels is None else labels[:max_images]
    names = image_set.class_names
    return images, labels, ids, names, None if matching is None else matching.to_dict(names)


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
    if not p.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"config file {path} is not valid TOML: {err}") from None
    allowed = {
        "checkpoint",
        "images",
        "labels",
        "class_names",
        "out",
        "max_images",
        "allow_pickle",
        "analysis",
    }
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    if "max_images" in data:
        data["max_images"] = _positive_int(data["max_images"], f"config file {path}: max_images")
    if not isinstance(data.get("analysis", {}), dict):
        raise UsageError(f"config file {path}: [analysis] must be a table of settings")
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
    # Every setting is checked before the model or the images are read, and all of them before
    # the run folder is made: a rejected option never leaves a folder behind.
    settings = _settings_from(args, file_cfg.get("analysis", {}))
    _maybe_distributed(args)
    config, params, identity = _load_model(
        checkpoint,
        args.allow_pickle or file_cfg.get("allow_pickle", False),
        args.class_names or file_cfg.get("class_names"),
        args,
    )
    max_images = args.max_images if args.max_images is not None else file_cfg.get("max_images")
    images, labels, ids, class_names, matching = _load_images(
        images_src, config, args.labels or file_cfg.get("labels"), max_images, args
    )
    analyze(
        config,
        params,
        images,
        out,
        labels=labels,
        image_ids=ids,
        class_names=class_names,
        label_matching=matching,
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
        raise UsageError(f"run folder {run} does not exist")
    html = build_site(load_bundle(run), args.out, title=args.title, layout=args.layout)
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
    images, labels, ids, class_names, matching = _load_images(
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
        label_matching=matching,
        model_identity=identity,
        settings=settings,
        progress=not args.quiet,
    )
    options = spec.site_options()
    if args.title:
        options["title"] = args.title
    html = build_site(load_bundle(run), out, layout=getattr(args, "layout", "auto"), **options)
    print(f"site written to {html}")
    return 0


def _demo(args) -> int:
    from importlib import resources

    # The demo's site spec ships inside the package (data/builtin/digits.toml is the file
    # sites/digits.toml), so the demo runs from a wheel installed anywhere.
    spec = resources.files("jaxvit_interp.data").joinpath(BUILTIN_DIR, DEMO_SPEC)
    with resources.as_file(spec) as path:
        if not path.is_file():
            raise UsageError(f"the demo's site spec {path} is missing from the installed package")
        args.target = ["build", str(path)]
        args.out = args.out or DEFAULT_DEMO_OUT
        return _site_from_spec(args, str(path))


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
    g.add_argument(
        "--chunk-images", type=POSITIVE_INT, help="images per resumable chunk (default 64)"
    )
    g.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        help="images per device pass (default: fit the memory budget)",
    )
    g.add_argument(
        "--memory-budget-mb",
        type=POSITIVE_FLOAT,
        help="per-device working-set budget in MiB for ablations",
    )
    g.add_argument(
        "--partial-images",
        type=COUNT,
        help="images that get partial pruning of every head (default 64; 0: none)",
    )
    g.add_argument(
        "--attention-images",
        type=ALL_OR_COUNT,
        help="images whose full attention is kept for the site: 'all' (the default) or a "
        "count of images chosen at random (0: none)",
    )
    g.add_argument(
        "--clusters",
        type=POSITIVE_INT,
        help="number of pattern clusters (default: chosen from the data)",
    )
    g.add_argument(
        "--projection",
        choices=("umap", "tsne"),
        help="2-D projection of pattern latents (default umap)",
    )
    g.add_argument(
        "--pattern-samples",
        type=POSITIVE_INT,
        help="most patterns each autoencoder trains on (default 20000, at least 32)",
    )
    g.add_argument(
        "--thumbnail-size",
        type=POSITIVE_INT,
        help="longest thumbnail side in pixels (default 112)",
    )
    g.add_argument("--seed", type=int, help="seed of every random choice (default 0)")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line told in one line (plus where to look) like any error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n  (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument(
        "--labels",
        help="CSV with columns file,label (label: one of the model's class names or indices)",
    )
    p.add_argument(
        "--class-names",
        metavar="FILE",
        help="the model's class names, one per line in class-index order (or a JSON list); "
        "replaces the names the checkpoint carries",
    )
    p.add_argument("--out", help="run folder to write (resumed if it holds this run)")
    p.add_argument(
        "--config",
        help="TOML file with the same keys as the flags (flags win); settings under [analysis]",
    )
    p.add_argument(
        "--max-images",
        type=POSITIVE_INT,
        metavar="N",
        help="analyse only the first N images (sorted by id)",
    )
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
    p.add_argument(
        "--layout",
        choices=("auto", "single", "folder"),
        default="auto",
        help="one index.html, or index.html with a record file per image loaded on demand "
        "(default auto: one file while it stays under 30 MB)",
    )
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


def _report(message: str) -> None:
    """``jaxvit-interp: error: <first line>``, then the message's detail lines, indented."""
    first, *rest = message.strip().splitlines() or [""]
    lines = [f"jaxvit-interp: error: {first}"]
    lines += [line if line.startswith(" ") else f"  {line}" for line in rest]
    print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("JAXVIT_DEBUG"))
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
        return status
    except KeyboardInterrupt:
        print("jaxvit-interp: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read the output stopped reading (`| head`). Point stdout at /dev/null so that
        # the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _report("the output was closed before everything was written (broken pipe)")
        return 2
    except InputError as err:
        if debug:
            raise
        _report(str(err) or type(err).__name__)
        return 2
    except OSError as err:
        message = environment_error_message(err)
        if message is None or debug:
            raise  # not the environment's fault: a bug, with its traceback
        _report(message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
