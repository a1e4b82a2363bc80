"""The ``jaxvit-interp`` command: ``demo``, ``analyze``, ``site``, ``inspect``, ``train-digits``.

Every failure that is the input's or the environment's fault (a bad option, file or label, a
corrupt checkpoint, a full disk, a closed pipe) ends with one line, ``jaxvit-interp: error:
...`` (plus indented detail), and exit status 2. Tracebacks are only for bugs; set
``JAXVIT_DEBUG=1`` to see one for any error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from jaxvit_interp.errors import InputError, environment_error_message

DEFAULT_DEMO_OUT = "demo-site"
DEMO_SPEC = "digits.toml"
# The settings of a distributed run that flags can give (else their environment variables).
DISTRIBUTED_OPTIONS = ("coordinator", "num_processes", "process_id")
QUIET_HELP = (
    "no progress: without it, a bar per stage on a terminal, and elsewhere (a log file, a pipe) "
    "a line on stderr as each stage starts and ends and every few percent, with the time taken "
    "and an estimate of what is left (at most one every JAXVIT_PROGRESS_SECONDS seconds, "
    "default 10)"
)
HUB_HELP = (
    "hf-hub:ORG/NAME[@REVISION] (a Hugging Face, timm or OpenCLIP repository, fetched into "
    "huggingface_hub's cache: HF_HOME, HF_HUB_OFFLINE, HF_TOKEN apply)"
)
# The run folders of a comparison spec's models, under `site build`'s --out.
RUNS_DIR = "runs"
SPEC_MAX_IMAGES_HELP = (
    "analyse only the first N of the spec's images (default: the spec's max_images; the demo's "
    "is 300; with [[model]] tables, at most N of each model's), for a quicker first look; a run "
    "folder keeps one image count, so use a new --out"
)


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


def _arg_type(how):
    """An argparse ``type`` reading a flag's text with ``how``, a
    :class:`~jaxvit_interp.setting.Setting`: the flag accepts what the setting accepts."""

    def parse(text: str):
        try:
            return how.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = how.name or "value"  # argparse names the type in its messages
    return parse


def _add_setting(p, how) -> None:
    """The flag of one declared setting (:mod:`jaxvit_interp.setting`): its name, parser, value
    shown in ``--help`` and help stating the default all come from the declaration; it is
    stored under the setting's name, and left None when not given (the settings' default)."""
    p.add_argument(
        how.flag_name,
        dest=how.name,
        type=_arg_type(how),
        metavar=how.metavar,
        help=how.help_text().replace("%", "%%"),
    )


def _count(name: str, least: int):
    """An argparse ``type`` of the commands' own counts (not analysis settings), read and
    checked as a setting's flag is."""
    from jaxvit_interp.setting import Setting

    return _arg_type(Setting(help="", name=name, least=least))


POSITIVE_INT, COUNT = _count("positive_int", 1), _count("count", 0)


def _image_size_value(value, where: str | None = None) -> tuple[int, int] | None:
    """An image size given as ``224``, ``"224"``, ``"224x320"`` or ``[224, 320]`` (height, width),
    or a :class:`UsageError` naming ``where`` it was given (default ``--image-size``)."""
    if value is None:
        return None
    where = f"config file {where}: image_size" if where else "--image-size"
    text = "x".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"{where} must be a side in pixels or HEIGHTxWIDTH, got {value!r}")
    return int(parts[0]), int(parts[1])


def IMAGE_SIZE(text: str) -> tuple[int, int]:  # noqa: N802 (an argparse type, named like the others)
    try:
        return _image_size_value(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--image-size ")) from None


class LoadedModel(NamedTuple):
    """A model the command analyses.

    Attributes:
      config, params: the model.
      identity: the checkpoint's ``path`` and ``sha256`` (and the probe's), for the run.
      size: why it is loaded at ``config.image_size``, as a clause ("its config.json says
        image_size 518"), for messages about its cost.
    """

    config: Any
    params: Any
    identity: dict
    size: str


def _load_model(
    checkpoint: str,
    allow_pickle: bool = False,
    class_names_file: str | None = None,
    args=None,
    probe_file: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """A checkpoint path, a hub name (``hf-hub:ORG/NAME[@REVISION]``) or a built-in model
    (``builtin:digits``, ``builtin:shapes``), loaded.

    ``probe_file`` (an ``.npz`` with ``kernel`` [pooled width, classes] and ``bias``) becomes
    the model's classifier; one that does not read the pooled width is refused here, before any
    image is read.  ``class_names_file`` (one name per line, or JSON) replaces the class names
    the checkpoint (or the probe) carries, or gives them to one that carries none.
    ``image_size`` loads the checkpoint at that size (its position table resampled). What the
    loader had to guess is told as one ``jaxvit-interp: warning: ...`` line each.
    """
    import hashlib

    from jaxvit_interp.data import builtin_models

    if builtin_models.is_builtin(checkpoint):
        builtin = builtin_models.find_builtin(checkpoint, "--checkpoint ")
        if image_size is not None:
            raise UsageError(f"--image-size: {checkpoint} takes its own images' size only")
        config, params = builtin.load_model()
        identity = {"path": builtin.source, "sha256": _sha256(builtin.weights_path)}
        size = f"it is {builtin.about}"
    else:
        from jaxvit_interp.model.checkpoint.hub import fetch_snapshot, is_hub_name
        from jaxvit_interp.model.checkpoint.load import convert, make_plan
        from jaxvit_interp.model.identity import hub_identity

        if is_hub_name(checkpoint):
            quiet = getattr(args, "quiet", False)
            hub = fetch_snapshot(checkpoint, allow_pickle=allow_pickle, progress=not quiet)
            path, identity = hub.local_path, hub_identity(hub.name.repo_id, hub.commit)
        else:
            path = Path(checkpoint)
            if not path.exists():
                raise UsageError(f"checkpoint {checkpoint} does not exist")
            digest = (
                _sha256(path)
                if path.is_file()
                else hashlib.sha256(str(path.resolve()).encode()).hexdigest()
            )
            identity = {"path": str(path), "sha256": digest}
        plan = make_plan(path, image_size=image_size, allow_pickle=allow_pickle)
        config, params, size = plan.config, convert(plan), plan.size_source
        for warning in plan.warnings:  # a guess that changes results if wrong: never --quiet
            print(f"jaxvit-interp: warning: {plan.where}: {warning}", file=sys.stderr)
    if probe_file:
        from jaxvit_interp.model.probe import LinearProbe, with_probe

        if not Path(probe_file).is_file():
            raise UsageError(f"probe file {probe_file} does not exist")
        probe = LinearProbe.load(probe_file)
        config, params = with_probe(config, params, probe)
        if probe.class_names is None and not class_names_file:
            from jaxvit_interp.data.imagenet import assumed_class_names

            assumed = assumed_class_names(probe.num_classes, f"the probe {probe_file}")
            if assumed is not None:  # it decides which labels match: never --quiet
                print(f"jaxvit-interp: note: {assumed[1]}", file=sys.stderr)
        identity["probe"] = {"path": str(probe_file), "sha256": _sha256(Path(probe_file))}
    if class_names_file:
        from jaxvit_interp.data.labels import read_class_names

        if not Path(class_names_file).is_file():
            raise UsageError(f"class names file {class_names_file} does not exist")
        config = config.replace(class_names=read_class_names(class_names_file, config.num_classes))
    elif config.class_names is None and args is not None and config.num_classes:
        _log(
            args,
            f"note: the model has no class names; its classes are shown as 0..{config.num_classes - 1} (give --class-names FILE to name them)",
        )
    return LoadedModel(config, params, identity, size)


def metrics_line(config) -> str:
    """Which importance metrics exist for the model, in one line (a backbone has fewer)."""
    from jaxvit_interp.importance.validate import LOGIT_METRICS, METRICS

    if config.num_classes:
        return f"metrics: {', '.join(METRICS)} (a classifier with {config.num_classes} classes)"
    have = ", ".join(m for m in METRICS if m not in LOGIT_METRICS)
    need = ", ".join(m for m in METRICS if m in LOGIT_METRICS)
    width = config.pooled_size
    return (
        f"metrics: {have} only (a backbone without a classifier, pooled width {width}); "
        f"--probe probe.npz (kernel [{width}, classes], bias [classes]) adds {need}"
    )


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_images(
    source: str, config, labels_csv: str | None, max_images: int | None, args, store=None
):
    """``(images, labels, ids, class_names, label_matching)`` from a folder or a built-in's
    held-out images (``builtin:digits``, ``builtin:shapes``).

    Labels are the model's class indices (:mod:`jaxvit_interp.data.labels`); ``label_matching``
    records how they were matched, for the results bundle. With ``store`` (a ``.npy`` path), a
    folder's images are written there and come back memory-mapped (:func:`_run_images_file`).
    """
    from jaxvit_interp.data.labels import display_class_names, match_labels

    names = display_class_names(config.class_names, config.num_classes)
    from jaxvit_interp.data import builtin_models

    if builtin_models.is_builtin(source):
        builtin = builtin_models.find_builtin(source, "--images ")
        if labels_csv:
            raise UsageError(f"--labels cannot be combined with the built-in images {source}")
        images, indices = builtin.load_images("test")
        shape = images.shape[1:]
        wanted = (*config.image_size, config.channels)
        if shape != wanted:  # before any work: another built-in's images do not fit this model
            raise UsageError(
                f"--images {source}: its images are {'x'.join(map(str, shape))} (HxWxC) but the "
                f"model takes {'x'.join(map(str, wanted))}; give the built-in model's own images"
            )
        width = max(3, len(str(len(images) - 1)))
        ids = [f"test-{i:0{width}d}" for i in range(len(images))]
        if max_images:
            images, indices, ids = images[:max_images], indices[:max_images], ids[:max_images]
        texts = [builtin.class_names[i] for i in indices]
        matching = match_labels(
            texts,
            class_names=config.class_names,
            num_classes=config.num_classes,
            origins={t: f"built-in {builtin.name} image of class {t}" for t in texts},
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
                folder, config, labels_csv=labels_csv, progress=not args.quiet, out=store
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


def _settings_from(args, file_settings):
    """The :class:`AnalysisSettings` of the config file's ``[analysis]`` (None: the defaults),
    with every analysis flag given on the command line in its place."""
    from jaxvit_interp.pipeline.settings import AnalysisSettings
    from jaxvit_interp.setting import declared

    flags = {name: getattr(args, name, None) for name in declared(AnalysisSettings)}
    given = {name: value for name, value in flags.items() if value is not None}
    return dataclasses.replace(file_settings or AnalysisSettings(), **given)


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
        "patching_pairs",
        "class_names",
        "out",
        "max_images",
        "allow_pickle",
        "probe",
        "image_size",
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
    from jaxvit_interp.pipeline.settings import AnalysisSettings

    try:
        data["analysis"] = AnalysisSettings.from_dict(data.get("analysis", {}), "analysis.")
    except InputError as err:
        raise UsageError(f"config file {path}: {err}") from None
    return data


def _benchmark(args) -> int:
    if args.json and not Path(args.json).absolute().parent.is_dir():
        # Found before the timing, not when the figures are written at its end.
        raise UsageError(f"--json {args.json}: the folder {Path(args.json).parent} does not exist")
    _maybe_distributed(args)
    import json

    from jaxvit_interp.benchmark import run_benchmark
    from jaxvit_interp.execution import Execution
    from jaxvit_interp.parallel import all_devices_mesh

    record = run_benchmark(
        args.variant,
        args.images,
        image_size=args.image_size,
        precision=args.precision,
        rounds=args.rounds,
        loop_heads=args.loop_heads,
        execution=Execution(memory_budget_bytes=args.memory_budget_bytes, mesh=all_devices_mesh()),
    )
    dev, eng, loop = record["device"], record["engine"], record["loop"]
    share = lambda side: (  # noqa: E731
        "" if side["share_of_peak"] is None else f", {100 * side['share_of_peak']:.1f}% of peak"
    )
    print(
        f"{record['variant']} at {record['image_size']} px, {record['heads']} heads x {record['images']} images, precision "
        f"{record['precision']}, {dev['count']} {dev['kind']} device(s) ({dev['platform']})\n"
        f"engine: {eng['seconds']:.2f} s, {eng['heads_x_images_per_s']:.1f} heads x images/s, "
        f"{eng['executed_tflop']:.3f} TFLOP executed, {eng['tflop_per_s']:.3f} TFLOP/s"
        f"{share(eng)}\n"
        f"loop:   {loop['seconds']:.2f} s, {loop['heads_x_images_per_s']:.1f} heads x images/s, "
        f"{loop['executed_tflop']:.3f} TFLOP executed, {loop['tflop_per_s']:.3f} TFLOP/s"
        f"{share(loop)} (timed on {loop['timed_heads']} heads)\n"
        f"engine {record['speedup']:.2f}x faster"
    )
    if "error_vs_highest" in record:
        worst = max(record["error_vs_highest"].items(), key=lambda kv: kv[1])
        print(f"largest difference from precision highest: {worst[1]:.3g} ({worst[0]})")
    if args.json:
        from jaxvit_interp.multihost import is_writer
        from jaxvit_interp.storage import write_text

        if is_writer():
            write_text(Path(args.json), json.dumps(record, indent=1))
    return 0


def _maybe_distributed(args) -> None:
    """Start JAX's distributed runtime for ``--distributed``, before anything else uses JAX."""
    settings = {name: getattr(args, name, None) for name in DISTRIBUTED_OPTIONS}
    if not getattr(args, "distributed", False):
        given = [
            f"--{name.replace('_', '-')}" for name, value in settings.items() if value is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)} given without --distributed, which they set up")
        return
    from jaxvit_interp import multihost

    multihost.initialize(**settings)


@contextlib.contextmanager
def _run_images_file(run: Path):
    """Where ``analyze`` keeps the images it loads from a folder while the run reads them.

    The images of a large set do not fit in memory, so they are written to a ``.npy`` file and
    memory-mapped. The file lies in the run folder's ``input/`` (``analyze.INPUT_DIR``): on the disk
    the user chose for the run, not in a temporary folder that may live in memory (tmpfs),
    beside the chunks of the same run; one file per process, so that the processes of a
    distributed run never write the same file. It is written before the run folder is set up
    (the run's fingerprint is of the decoded images), so a new run folder may hold ``input/``
    and nothing else. It lasts as long as the command: a rerun decodes the folder again
    anyway, to check that the images are those of the run it resumes, so the file is removed at
    the end, finished or not, with the folders made for it when nothing else came into them.
    """
    import jax

    from jaxvit_interp.pipeline.run_folder import INPUT_DIR, check_run_folder

    check_run_folder(run)  # another folder is refused before anything is written into it
    folder = run / INPUT_DIR
    made = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        made.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"images-{jax.process_index()}.npy"
    try:
        yield path
    finally:
        # This process's file, and what a killed earlier run of it left half written.
        for stale in (path, *folder.glob(f".{path.name}.*.tmp")):
            stale.unlink(missing_ok=True)
        for parent in (folder, *made):  # inner first; input/ also when an older run left it
            with contextlib.suppress(OSError):  # not empty, or another process removed it
                parent.rmdir()


def _analyze_images(
    run: Path,
    source: str,
    labels_csv,
    max_images,
    model: LoadedModel,
    settings,
    args,
    pairs_csv: str | None = None,
) -> None:
    """``analyze`` of the images at ``source`` with ``model`` into ``run``; a folder's images
    are decoded into the run folder's file for the run's duration. The run folder is held for
    this command from the start (another command writing it is refused at once, naming it).
    ``pairs_csv``: the patching pairs' CSV, its files under ``source`` (:func:`_patching_pairs`
    checked them); each must be among the analysed images, or the run is refused before any
    model work."""
    from jaxvit_interp.data.images import pair_positions, read_pairs_csv
    from jaxvit_interp.pipeline.analyze import analyze
    from jaxvit_interp.pipeline.run_folder import RunFolder, check_run_folder

    config = model.config
    check_run_folder(run)  # another folder is refused before anything is written into it
    with (
        RunFolder(run).lock(),
        _run_images_file(run) as store,
        _why_this_budget(model, args),
    ):
        images, labels, ids, class_names, matching = _load_images(
            source, config, labels_csv, max_images, args, store
        )
        pairs = None
        if pairs_csv:
            pairs = pair_positions(
                read_pairs_csv(source, pairs_csv),
                ids,
                pairs_csv,
                f"the {len(ids)} analysed images of {source} (files that could not be read, "
                "and those past --max-images, are not)",
            )
        analyze(
            config,
            model.params,
            images,
            run,
            labels=labels,
            image_ids=ids,
            class_names=class_names,
            label_matching=matching,
            model_identity=model.identity,
            settings=settings,
            patching_pairs=pairs,
            progress=not args.quiet,
        )
        del images  # the mapping of the file, closed before the file goes


@contextlib.contextmanager
def _why_this_budget(model: LoadedModel, args):
    """A memory budget refused inside says why the model is as large as it is: the size it is
    loaded at and why, its tokens per image, and how to load it at another size (where the
    command has ``--image-size``)."""
    from jaxvit_interp.budget import MemoryBudgetError

    try:
        yield
    except MemoryBudgetError as err:
        first, *rest = str(err).splitlines()
        height, width = model.config.image_size
        why = (
            f"the model is loaded at {height}x{width} px because {model.size}: "
            f"{model.config.num_tokens:,} tokens per image"
        )
        from jaxvit_interp.data.builtin_models import is_builtin

        if hasattr(args, "image_size") and not is_builtin(model.identity.get("path", "")):
            why += (
                "; --image-size PX (or HxW) loads it at another size, its position table resampled"
            )
        raise UsageError("\n".join([first, why, *rest])) from None


def _analyze(args) -> int:
    from jaxvit_interp.importance.validate import check_unpruned

    file_cfg = _read_config_file(args.config)
    checkpoint = args.checkpoint or file_cfg.get("checkpoint")
    images_src = args.images or file_cfg.get("images")
    out = args.out or file_cfg.get("out")
    for flag, value in (("--checkpoint", checkpoint), ("--images", images_src), ("--out", out)):
        if not value:
            raise UsageError(f"{flag} is required (on the command line or in --config)")
    # Every setting is checked before the model or the images are read, and all of them before
    # the run folder is made: a rejected option never leaves a folder behind.
    settings = _settings_from(args, file_cfg.get("analysis"))
    pairs_csv = _patching_pairs(args.patching_pairs or file_cfg.get("patching_pairs"), images_src)
    _maybe_distributed(args)
    image_size = args.image_size or _image_size_value(file_cfg.get("image_size"), args.config)
    model = _load_model(
        checkpoint,
        args.allow_pickle or file_cfg.get("allow_pickle", False),
        args.class_names or file_cfg.get("class_names"),
        args,
        probe_file=args.probe or file_cfg.get("probe"),
        image_size=image_size,
    )
    config = model.config
    check_unpruned(config, f"--checkpoint {checkpoint}")  # before the images are read
    if not config.num_classes:
        labels_file = args.labels or file_cfg.get("labels")
        if labels_file:  # refused before the images are read
            raise UsageError(
                f"--labels {labels_file}: {checkpoint} is a backbone without a classifier, with "
                f"no classes to match labels to\n{metrics_line(config)}"
            )
        if not args.quiet:
            print(f"jaxvit-interp: note: {checkpoint}: {metrics_line(config)}", file=sys.stderr)
    max_images = args.max_images if args.max_images is not None else file_cfg.get("max_images")
    _analyze_images(
        Path(out),
        images_src,
        args.labels or file_cfg.get("labels"),
        max_images,
        model,
        settings,
        args,
        pairs_csv,
    )
    print(f"results bundle written to {out}")
    return 0


def _patching_pairs(pairs_csv: str | None, images_src: str) -> str | None:
    """The patching pairs' CSV, its rows and files checked before the model is read (the files
    under the images folder, as ``--labels`` names them); None when not given."""
    if not pairs_csv:
        return None
    from jaxvit_interp.data import builtin_models
    from jaxvit_interp.data.images import read_pairs_csv

    if builtin_models.is_builtin(images_src):
        raise UsageError(
            f"--patching-pairs names image files, and {images_src} has none: give an image folder"
        )

    read_pairs_csv(images_src, pairs_csv)
    return str(pairs_csv)


def _site(args) -> int:
    from jaxvit_interp.bundle import load_bundle
    from jaxvit_interp.site import build_site

    if len(args.target) == 2 and args.target[0] == "build":
        return _site_from_spec(args, args.target[1])
    if len(args.target) > 1:
        return _site_comparison(args)
    run = Path(args.target[0])
    if not run.exists():
        raise UsageError(f"run folder {run} does not exist")
    html = build_site(load_bundle(run), args.out, title=args.title, layout=args.layout)
    print(f"site written to {html}")
    return 0


def _site_comparison(args) -> int:
    """``site RUN_A RUN_B ... --out DIR``: every run is read and checked before anything is
    written (:func:`~jaxvit_interp.site.comparison.load_runs`)."""
    from jaxvit_interp.site.comparison import build_comparison_site, load_runs

    names, bundles = load_runs(args.target)
    html = build_comparison_site(
        bundles,
        args.out,
        names=names,
        title=args.title,
        layout=args.layout,
        **_shared_pattern_options(args),
    )
    print(f"comparison site of {len(bundles)} runs written to {html}")
    return 0


def _shared_pattern_options(args) -> dict:
    """build_comparison_site's shared pattern space options from ``site``'s flags: computed
    unless ``--no-shared-patterns``, its progress and notes on stderr unless ``--quiet``."""
    return dict(
        shared_patterns=not args.no_shared_patterns,
        progress=not args.quiet,
        note=None if args.quiet else lambda line: print(f"jaxvit-interp: {line}", file=sys.stderr),
    )


def _site_from_spec(args, spec_path: str) -> int:
    from jaxvit_interp.bundle import load_bundle
    from jaxvit_interp.site import build_site
    from jaxvit_interp.site.spec import load_site_spec

    spec = load_site_spec(spec_path)
    if spec.models:
        return _site_comparison_from_spec(args, spec)
    out = Path(args.out)
    run = out / "run"
    model = _load_model(str(spec.model))
    spec.check_views_for(model.config.num_classes, f"model = {str(spec.model)!r}")
    labels_csv = str(spec.labels) if spec.labels else None
    max_images = args.max_images if args.max_images is not None else spec.max_images
    pairs_csv = str(spec.patching_pairs) if spec.patching_pairs else None
    _analyze_images(
        run, str(spec.images), labels_csv, max_images, model, spec.analysis, args, pairs_csv
    )
    options = spec.site_options()
    if args.title:
        options["title"] = args.title
    html = build_site(load_bundle(run), out, layout=getattr(args, "layout", "auto"), **options)
    print(f"site written to {html}")
    return 0


def _site_comparison_from_spec(args, spec) -> int:
    """``site build`` of a spec with ``[[model]]`` tables: each model's analysis into
    ``DIR/runs/<name>`` (resumable: a finished run is read back, not computed again), then the
    comparison site over them into ``DIR``. Every run folder is checked before the first
    analysis starts; ``--max-images`` caps every table's ``max_images``."""
    from jaxvit_interp.bundle import load_bundle
    from jaxvit_interp.pipeline.run_folder import check_run_folder
    from jaxvit_interp.site.comparison import build_comparison_site

    out = Path(args.out)
    runs = [out / RUNS_DIR / model.name for model in spec.models]
    for run in runs:
        check_run_folder(run)  # a folder holding something else, refused before any analysis
    for number, (model, run) in enumerate(zip(spec.models, runs), 1):
        if not args.quiet:
            print(
                f"jaxvit-interp: model {number} of {len(runs)}: {model.name} ({model.model} on "
                f"{model.images}) into {run}",
                file=sys.stderr,
            )
        loaded = _load_model(str(model.model))
        # Before its analysis; the runs before it are kept, and read back when run again.
        spec.check_views_for(loaded.config.num_classes, f"model[{number}] ({model.model})")
        labels_csv = str(model.labels) if model.labels else None
        max_images = model.max_images
        if args.max_images is not None:
            max_images = min(max_images, args.max_images)
        pairs_csv = str(model.patching_pairs) if model.patching_pairs else None
        _analyze_images(
            run, str(model.images), labels_csv, max_images, loaded, model.analysis, args, pairs_csv
        )
        del loaded
    options = spec.site_options()
    title = options.pop("title")  # the comparison page's; each model's site titles itself
    if args.title:
        title = args.title
    bundles = [load_bundle(run) for run in runs]
    html = build_comparison_site(
        bundles,
        out,
        names=[model.name for model in spec.models],
        title=title,
        layout=getattr(args, "layout", "auto"),
        **_shared_pattern_options(args),
        **options,
    )
    print(f"comparison site of {len(bundles)} models written to {html}")
    return 0


def _demo(args) -> int:
    from importlib import resources

    from jaxvit_interp.data.builtin_models import BUILTIN_DIR

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
    print(metrics_line(report.config))
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


def _prune(args) -> int:
    import json

    import numpy as np

    from jaxvit_interp.execution import Execution
    from jaxvit_interp.model.checkpoint import save_checkpoint, save_safetensors
    from jaxvit_interp.pipeline.prune import choose_heads, prune_model
    from jaxvit_interp.storage import write_text

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty; choose a new folder for the pruned model")
    model = _load_model(
        args.checkpoint,
        args.allow_pickle,
        args.class_names,
        args,
        probe_file=args.probe,
        image_size=args.image_size,
    )
    config, params = model.config, model.params
    if config.heads_per_layer is not None:
        raise UsageError(f"{args.checkpoint} already has heads removed; prune the full model")
    if not config.num_classes:
        raise UsageError(
            f"{args.checkpoint} is a backbone without a classifier; pruning is measured on "
            f"accuracy\n{metrics_line(config)}"
        )
    total = config.num_layers * config.num_heads
    if args.remove is not None and args.remove > total:
        raise UsageError(f"--remove {args.remove} is more than the model's {total} heads")
    images, labels, _, _, _ = _load_images(args.images, config, args.labels, args.max_images, args)
    labels = None if labels is None else np.asarray(labels)
    with _why_this_budget(model, args):
        heads = choose_heads(
            config,
            params,
            images,
            labels,
            remove=args.remove,
            max_accuracy_drop=args.max_accuracy_drop,
            order=args.order,
            execution=Execution(
                memory_budget_bytes=args.memory_budget_bytes, progress=not args.quiet
            ),
        )
    if not heads:
        raise UsageError(
            f"no head can go without accuracy dropping more than {args.max_accuracy_drop} "
            "points on these images"
        )
    new_config, new_params, report = prune_model(config, params, images, labels, heads)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model", new_config, new_params)
    save_safetensors(out / "model.safetensors", new_config, new_params)
    write_text(out / "prune.json", json.dumps(report.to_dict(), indent=2) + "\n")
    r = report
    print(f"removed {len(heads)} of {total} heads ({args.order} order); heads per layer "
          f"{list(r.heads_per_layer)}")  # fmt: skip
    print(f"accuracy   {100 * r.accuracy_before:.2f}% -> {100 * r.accuracy_after:.2f}% "
          f"on {len(images)} images")  # fmt: skip
    print(f"parameters {r.parameters_before:,} -> {r.parameters_after:,}")
    print(f"forward    {r.seconds_before * 1e3:.1f} ms -> {r.seconds_after * 1e3:.1f} ms "
          f"(best of 3, all {len(images)} images, {jax_backend()})")  # fmt: skip
    print(f"wrote {out / 'model'} (load_checkpoint), {out / 'model.safetensors'}, "
          f"{out / 'prune.json'}")  # fmt: skip
    return 0


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    from jaxvit_interp.pipeline.settings import AnalysisSettings
    from jaxvit_interp.setting import declared

    g = p.add_argument_group(
        "analysis options (the fields of AnalysisSettings; also the [analysis] table of --config)"
    )
    for how in declared(AnalysisSettings).values():
        if how.flag_name:
            _add_setting(g, how)


def _budget_setting():
    """``--memory-budget-mb`` of every command that runs the ablation engine."""
    from jaxvit_interp.pipeline.settings import AnalysisSettings
    from jaxvit_interp.setting import declared

    return declared(AnalysisSettings)["memory_budget_bytes"]


def _add_distributed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "several processes (start the same command in each; see docs/scale.md)"
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join the other processes through JAX's distributed runtime; with none of the "
        "three options below nor their environment variables, JAX detects the cluster "
        "(SLURM, Cloud TPU)",
    )
    g.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0's coordination service (default: $JAX_COORDINATOR_ADDRESS)",
    )
    g.add_argument(
        "--num-processes",
        type=POSITIVE_INT,
        metavar="N",
        help="number of processes (default: $JAX_NUM_PROCESSES)",
    )
    g.add_argument(
        "--process-id",
        type=COUNT,
        metavar="I",
        help="this process's id, 0..N-1 (default: $JAX_PROCESS_ID)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line told in one line (plus where to look) like any error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n  (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from jaxvit_interp.data.builtin_models import BUILTIN_MODELS

    builtins = " or ".join(BUILTIN_MODELS)
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
    p.add_argument("--max-images", type=POSITIVE_INT, metavar="N", help=SPEC_MAX_IMAGES_HELP)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "analyze",
        help="run every analysis on a checkpoint and an image folder; write a results bundle",
        description="Run head importance (with partial pruning), attention strength and attention "
        "patterns. Results are written in chunks; rerunning the same command resumes.",
    )
    p.add_argument(
        "--checkpoint",
        help="checkpoint file or folder (.npz, .safetensors, Hugging Face folder, own orbax "
        f"folder), {HUB_HELP} or {builtins}",
    )
    p.add_argument(
        "--images", help=f"image folder (class subfolders or --labels CSV) or {builtins}"
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
    p.add_argument(
        "--patching-pairs",
        metavar="PAIRS.csv",
        help="CSV with columns clean,corrupted (files under --images, among the analysed "
        "images): every head patched between each pair's images, in both directions",
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
        "--probe",
        metavar="PROBE.npz",
        help="a linear probe on the pooled output (kernel [pooled width, classes], bias "
        "[classes], optional class_names) that becomes the classifier: needed for a backbone "
        "without one (DINOv2, CLIP, SigLIP towers), whose own metrics are layer and repr only",
    )
    p.add_argument(
        "--image-size",
        type=IMAGE_SIZE,
        metavar="PX|HxW",
        help="load the checkpoint at this input size instead of the one it says (its position "
        "table resampled as its library does, its preprocessing for that size): fewer tokens "
        "per image, e.g. 224 for a DINOv2 folder saved without its processor config (518)",
    )
    _add_distributed_options(p)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    _add_analysis_options(p)
    p.set_defaults(func=_analyze)

    p = sub.add_parser(
        "site",
        help="write the site of a run folder, compare several, or build one from a site spec",
        description="`site RUN --out DIR` renders a finished run; `site RUN_A RUN_B ... --out DIR` "
        "writes a comparison page of the runs with each run's own site under DIR/models/; "
        "`site build SPEC.toml --out DIR` runs the analysis a site spec describes and renders it "
        "(a spec of several [[model]] tables: one analysis each into DIR/runs/NAME, and their "
        "comparison site).",
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="RUN [RUN ...] | build SPEC",
        help="a run folder, several to compare, or `build` and a site spec",
    )
    p.add_argument("--out", required=True, help="folder for index.html")
    p.add_argument("--title", help="page title")
    p.add_argument("--max-images", type=POSITIVE_INT, metavar="N", help=SPEC_MAX_IMAGES_HELP)
    p.add_argument(
        "--layout",
        choices=("auto", "single", "folder"),
        default="auto",
        help="one index.html, or index.html with a record file per image loaded on demand "
        "(default auto: one file while it stays under 30 MB)",
    )
    p.add_argument(
        "--no-shared-patterns",
        action="store_true",
        help="comparing runs: leave out the shared pattern space (one autoencoder trained on "
        "every run's attention patterns; kept in DIR/shared-patterns/ and reused)",
    )
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=_site)

    p = sub.add_parser(
        "prune",
        help="remove heads physically and save the smaller model",
        description="Choose heads on a set of images (least important first, or greedily), "
        "remove them from the query/key/value/output matrices, save the model (own format and "
        "safetensors) and report accuracy, parameters and forward time before and after.",
    )
    p.add_argument(
        "--checkpoint", required=True, help=f"checkpoint file or folder, {HUB_HELP} or {builtins}"
    )
    p.add_argument(
        "--images",
        required=True,
        help=f"image folder (class subfolders or --labels CSV) or {builtins}",
    )
    p.add_argument("--labels", help="CSV with columns file,label")
    p.add_argument("--class-names", metavar="FILE", help="the model's class names, one per line")
    p.add_argument(
        "--probe", metavar="PROBE.npz", help="a linear probe that becomes the classifier"
    )
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--remove", type=POSITIVE_INT, metavar="N", help="remove N heads")
    how.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="POINTS",
        help="remove as many heads as keep accuracy within POINTS percentage points",
    )
    p.add_argument(
        "--order",
        choices=("importance", "greedy"),
        default="importance",
        help="least important first by mean prob_drop (default), or greedily (slower)",
    )
    p.add_argument("--max-images", type=POSITIVE_INT, metavar="N", help="use the first N images")
    p.add_argument(
        "--image-size",
        type=IMAGE_SIZE,
        metavar="PX|HxW",
        help="load (and save) the model at this input size, its position table resampled",
    )
    _add_setting(p, _budget_setting())
    p.add_argument("--out", required=True, help="new folder for the pruned model and report")
    p.add_argument("--allow-pickle", action="store_true", help="allow PyTorch pickles")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=_prune)

    p = sub.add_parser(
        "benchmark",
        help="time every single-head ablation on this machine's devices: engine vs a plain loop",
        description="Time the batched ablation engine against a plain jitted forward pass per "
        "head, on random images and random weights of a model variant, on every device JAX sees; "
        "print heads x images per second, executed TFLOP and TFLOP/s (and the share of the "
        "device's peak where it is known), and write them as JSON.",
    )
    p.add_argument("--variant", default="B/16", help="model variant (default: B/16)")
    p.add_argument(
        "--image-size",
        type=POSITIVE_INT,
        metavar="PX",
        help="square image side in pixels (default: the variant's, 224)",
    )
    p.add_argument(
        "--images", type=POSITIVE_INT, default=8, metavar="N", help="images (default: 8)"
    )
    p.add_argument(
        "--precision",
        choices=("highest", "default", "bfloat16"),
        default="highest",
        help="matrix-product precision; other than highest, the error against highest is "
        "measured too (default: highest)",
    )
    p.add_argument(
        "--rounds", type=POSITIVE_INT, default=2, help="timed rounds, best kept (default: 2)"
    )
    p.add_argument(
        "--loop-heads",
        type=POSITIVE_INT,
        default=12,
        metavar="N",
        help="heads the plain loop is timed on, scaled to all heads (default: 12)",
    )
    _add_setting(p, _budget_setting())
    p.add_argument("--json", metavar="FILE", help="write the figures there as JSON too")
    _add_distributed_options(p)
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("inspect", help="list a checkpoint's tensors against what the model needs")
    p.add_argument("checkpoint", help=f"checkpoint file or folder, or {HUB_HELP}")
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
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
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
        status = _run(args, debug)
    except Exception:
        if not _joined_others():
            raise
        import traceback

        traceback.print_exc()  # a bug, told as one
        _leave(1)
    if status and _joined_others():
        _leave(status)
    return status


def _joined_others() -> bool:
    import jax

    return jax.distributed.is_initialized()


def _leave(status: int) -> None:
    """End a process of a distributed run that failed, at once.

    JAX's exit handler waits at a barrier for every process of the run; after a failure some never
    come, and the wait would end only at its timeout, with a crash report. Leaving now closes
    this process's connections instead, so each of the others stops with its own message at its
    next exchange with this one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@contextlib.contextmanager
def _notes_as_lines():
    """The library's notices meant for the user (a default memory budget grown to fit the
    model) as one ``jaxvit-interp: note:`` line each, once, rather than Python's warning format."""
    import warnings

    from jaxvit_interp.budget import BudgetGrownWarning

    shown = warnings.showwarning

    def show(message, category, *rest, **kwargs):
        if issubclass(category, BudgetGrownWarning):
            print(f"jaxvit-interp: note: {message}", file=sys.stderr)
        else:
            shown(message, category, *rest, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("once", BudgetGrownWarning)
        warnings.showwarning = show
        yield


def _run(args, debug: bool) -> int:
    try:
        if not getattr(args, "quiet", False):
            from jaxvit_interp.progress import log_seconds

            log_seconds()  # a bad JAXVIT_PROGRESS_SECONDS is refused before any work
        with _notes_as_lines():
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
    except Exception as err:
        from jaxvit_interp import multihost

        if debug or not _joined_others() or not multihost.peer_failure(err):
            raise
        import jax

        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        _report(
            f"process {jax.process_index()} of {jax.process_count()}: another process of this "
            f"distributed run stopped (killed, crashed or out of memory?)\n"
            f"{type(err).__name__}: {first}\n"
            "rerun the same command in every process to resume: finished chunks are kept"
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
