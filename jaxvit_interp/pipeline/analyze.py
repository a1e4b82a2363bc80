"""``analyze``: images -> every analysis -> a results bundle on disk, chunked and resumable.

A run folder holds ``run.json`` (what the run is: its fingerprint and what it is made of, the
settings, the model, its config, the image ids and the pixels' digest, so that a folder holding
another run is refused naming what differs), ``chunks/``
(per-image results, one ``.npz`` per chunk of images, written atomically as soon as each chunk
is done, and while the pattern stage runs each pattern kind gathered from them into one
memory-mapped ``.npy``), the pattern autoencoders' checkpoints, and finally the results bundle
files (:mod:`jaxvit_interp.bundle`). Run the same command again after an interruption and only
the missing chunks are computed; every random choice is seeded, so the result equals an
uninterrupted run's.

Memory does not grow with the number of images beyond a few kB of results per image: the images
may be a memory-mapped array (the command line maps the images it loads from a folder), read a
chunk at a time; patterns, pixels and attention go from the chunk files to files of their own a
chunk at a time, and the pattern stage reads them a block at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxvit_interp.attention_codes import encode_attention
from jaxvit_interp.bundle import INDEX_FILE, ResultsBundle, mapped_path, save_bundle
from jaxvit_interp.data.images import ImageSet
from jaxvit_interp.data.labels import display_class_names
from jaxvit_interp.data.preprocess import thumbnails
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.layout import image_layout, layout_metric
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import CLS_MODES, PRUNING_MODES
from jaxvit_interp.model.identity import model_identity as identify_model
from jaxvit_interp.multihost import is_writer, run_on_writer, share_from_writer
from jaxvit_interp.parallel import all_devices_mesh
from jaxvit_interp.pipeline.parts import (
    importance_part,
    partial_part,
    pattern_part,
    rollout_part,
    special_part,
    strength_part,
)
from jaxvit_interp.pipeline.settings import AnalysisSettings, run_fingerprint
from jaxvit_interp.progress import ProgressArg, start_progress
from jaxvit_interp.quantities import METRIC_NAMES, STRENGTH_FIELDS, model_metrics
from jaxvit_interp.storage import (
    UnreadableFileError,
    atomic_npy,
    load_npy,
    load_npz,
    page_releaser,
    read_rows,
    save_npz,
    write_text,
)
from jaxvit_interp.strength.special import special_token_names

RUN_FILE = "run.json"
CHUNK_DIR = "chunks"
# Images whose float attention is held at once before it is encoded (ViT-B/16: 11 MB an image
# as float16): the attention pass runs in slices of at most this many.
ATTENTION_SLICE_IMAGES = 8
# Chunk arrays that are not merged in memory: the final bundle's files are filled chunk by chunk.
STREAMED = {"attention_codes": ("attention", "codes"), "attention_steps": ("attention", "steps")}
# The patterns of each kind (``<kind>_pattern`` in a chunk, ``[image, layer, head, h, w]``, 0.5 MB
# an image for ViT-B/16) are not merged in memory either: they are gathered into this file of the
# chunk folder, which the pattern stage reads a block at a time.
PATTERN_FILE = "{kind}-patterns.npy"
# Images hashed, or turned into the bundle's thumbnails and pixels, at once (ViT-B/16: 38 MB).
IMAGE_STEP = 64
# Patterns normalised and encoded at once: the default batch of TrainedAutoencoder.encode, so
# that the latents are those of one call over them all (ViT-B/16: 24 MB of patch patterns).
ENCODE_BATCH = 8192
# A folder of the run folder that may hold the images of the run before the run itself starts
# (the command line maps the images it loads there): a run folder is "new" with it.
INPUT_DIR = "input"


class RunFolderError(InputError):
    """The output folder holds something other than this run."""


class _Images:
    """The analysed images ``[image, height, width, channels]`` float32, read a slice at a time.

    ``images[index]`` gives the rows in memory; from a memory-mapped file the mapping's pages are
    released after each read (:func:`~jaxvit_interp.storage.page_releaser`), so that resident
    memory holds the slices in use and never the whole set.
    """

    def __init__(self, array: np.ndarray, release):
        self.array, self._release = array, release
        self.shape = array.shape

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index) -> np.ndarray:
        if self._release is None:
            return self.array[index]
        rows = np.array(self.array[index])
        self._release()
        return rows


def image_digests(images, image_ids: list[str]) -> tuple[str, str]:
    """``(the images' and their ids' fingerprint, the pixels' alone)``, in one pass: the images
    hashed a slice at a time (equal to the hash of all their bytes at once)."""
    both, pixels = hashlib.sha256(), hashlib.sha256()
    both.update(json.dumps(list(image_ids)).encode())
    for start in range(0, len(images), IMAGE_STEP):
        block = np.ascontiguousarray(images[start : start + IMAGE_STEP], np.float32).tobytes()
        both.update(block)
        pixels.update(block)
    return both.hexdigest()[:16], pixels.hexdigest()[:16]


def image_digest(images, image_ids: list[str]) -> str:
    """The images' and their ids' fingerprint (see :func:`image_digests`)."""
    return image_digests(images, image_ids)[0]


def check_run_folder(out: Path) -> None:
    """Refuse a folder that exists, holds anything but :data:`INPUT_DIR` and is no run folder."""
    if (out / RUN_FILE).exists() or not out.exists():
        return
    if any(entry.name != INPUT_DIR for entry in out.iterdir()):
        raise RunFolderError(
            f"{out} is not empty and holds no {RUN_FILE}; choose an empty or new folder"
        )


def _prepare_run_folder(out: Path, fingerprint: str, record: dict[str, Any]) -> None:
    """Make ``out`` this run's folder, or check that it is: ``record`` (see :func:`run_record`)
    is kept in ``run.json`` beside the fingerprint, so that a refusal can name what changed."""
    run_file = out / RUN_FILE
    if run_file.exists():
        try:
            held = json.loads(run_file.read_text())
            held_fingerprint = held.get("fingerprint")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise RunFolderError(
                f"{run_file} is not readable; {out} may hold a damaged run: choose another "
                "output folder or delete it"
            ) from None
        if held_fingerprint != fingerprint:
            raise RunFolderError(
                f"{out} holds another run (fingerprint {held_fingerprint}, this one is "
                f"{fingerprint}):\n"
                + "\n".join(run_differences(held, record))
                + "\nchoose another output folder, or delete this one"
            )
        if any(key not in held for key in record):
            # Written before run.json recorded all of it: this very run's record, for a later
            # refusal to name what changed.
            write_text(run_file, json.dumps({"fingerprint": fingerprint, **record}, indent=1))
        return
    check_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(run_file, json.dumps({"fingerprint": fingerprint, **record}, indent=1))


def run_record(
    config: ViTConfig,
    model_identity: dict[str, Any],
    image_ids: list[str],
    pixel_digest: str,
    settings: AnalysisSettings,
) -> dict[str, Any]:
    """What ``run.json`` records of a run besides its fingerprint: every input of the
    fingerprint, or its digest (the pixels'), so that :func:`run_differences` can name them."""
    return {
        "settings": settings.to_dict(),
        "model": model_identity,
        "config": config.to_dict(),
        "images": len(image_ids),
        "image_ids": list(image_ids),
        "pixels": pixel_digest,
    }


def _flat(record: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``."""
    if not isinstance(record, dict):
        return {prefix: record}
    out = {}
    for key, value in record.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _change(name: str, old: Any, new: Any) -> str:
    """``name: old -> new``, values as JSON; long lists by their first difference."""
    if isinstance(old, list) and isinstance(new, list) and max(len(old), len(new)) > 8:
        at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), None)
        first = "" if at is None else f", first at {at}: {json.dumps(old[at])} -> "
        first += "" if at is None else json.dumps(new[at])
        return f"{name}: {len(old)} values -> {len(new)} values{first}"

    def show(value):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return f"{name}: {show(old)} -> {show(new)}"


def _changes(what: str, old: dict, new: dict) -> list[str]:
    """``what key: old -> new`` for each (nested) key whose value differs."""
    old, new = _flat(old), _flat(new)
    return [
        _change(f"{what} {key}", old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _model_change(what: str, old: dict | None, new: dict | None) -> str | None:
    """``what: path (sha256 ...) -> path (sha256 ...)`` when a checkpoint or probe differs."""

    def show(model):
        if not model:
            return "none"
        return f"{model.get('path')} (sha256 {str(model.get('sha256'))[:12]}...)"

    keys = ("path", "sha256")
    old = {k: old[k] for k in keys if k in old} if old else None
    new = {k: new[k] for k in keys if k in new} if new else None
    return None if old == new else f"{what}: {show(old)} -> {show(new)}"


def run_differences(held: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """What differs between the run a folder holds (its ``run.json``) and ``record`` (this
    run's :func:`run_record`), one line each: settings, model, probe, config, images.

    A ``run.json`` written before it recorded the config, the image ids and the pixels' digest
    tells what it can and says what it cannot.
    """
    record = json.loads(json.dumps(record))  # as run.json holds it: tuples are lists there
    lines = []
    if "settings" in held:
        lines += _changes("setting", held["settings"], record["settings"])
    if "model" in held:
        old, new = held["model"] or {}, record["model"] or {}
        lines += filter(None, [_model_change("model", old, new)])
        lines += filter(None, [_model_change("probe", old.get("probe"), new.get("probe"))])
        for key in sorted((set(old) | set(new)) - {"path", "sha256", "probe"}):
            if old.get(key) != new.get(key):
                lines.append(_change(f"model {key}", old.get(key), new.get(key)))
    if "config" in held:
        lines += _changes("model config", held["config"], record["config"])
    if "images" in held and held["images"] != record["images"]:
        line = f"images: {held['images']} -> {record['images']}"
        if "image_ids" in held:
            held_ids = set(held["image_ids"])
            gone = held_ids - set(record["image_ids"])
            added = [i for i in record["image_ids"] if i not in held_ids]
            parts = [f"{len(added)} new, first: {added[0]}"] if added else []
            parts += [f"{len(gone)} gone, first: {sorted(gone)[0]}"] if gone else []
            line += f" ({'; '.join(parts)})" if parts else ""
        lines.append(line)
    elif "image_ids" in held and held["image_ids"] != record["image_ids"]:
        held_ids = set(held["image_ids"])
        added = [i for i in record["image_ids"] if i not in held_ids]
        if added:
            lines.append(f"{len(added)} image ids differ (first: {added[0]})")
        else:
            lines.append("the same image ids in another order")
    elif "pixels" in held and held["pixels"] != record["pixels"]:
        lines.append("same ids, different pixels")
    if not lines:
        unknown = [
            what
            for key, what in (
                ("settings", "the settings"),
                ("model", "the model"),
                ("config", "the model's config"),
                ("image_ids", "the image ids"),
                ("pixels", "the pixels"),
            )
            if key not in held
        ]
        if unknown:
            what = " or ".join([", ".join(unknown[:-1]), unknown[-1]] if unknown[:-1] else unknown)
            lines.append(
                f"{what}: its run.json, written before it recorded them, does not say which"
            )
        else:
            lines.append("something its run.json does not record")
    return lines


def _subset(num_images: int, size: int, seed: int, stream: int = 0) -> np.ndarray:
    """Sorted image indices of a seeded random subset of ``size`` (all images when fewer).

    ``stream`` tells apart subsets drawn with the same seed, so that they are independent.
    """
    if size >= num_images:
        return np.arange(num_images)
    rng = np.random.default_rng([seed, stream] if stream else seed)
    return np.sort(rng.choice(num_images, size, replace=False))


def _local_indices(indices: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The members of ``indices`` inside ``[start, stop)``, counted from ``start``."""
    return indices[(indices >= start) & (indices < stop)] - start


def _from_image_set(image_set: ImageSet, **given) -> tuple:
    """``(images, labels, image_ids, class_names, label_matching)`` of an :class:`ImageSet`;
    ``given`` (what the call gave besides) must be None: the set carries all of them."""
    twice = [name for name, value in given.items() if value is not None]
    if twice:
        raise InputError(
            f"analyze was given an ImageSet, which carries its labels, ids, class names and "
            f"label matching, and also {', '.join(f'{n}=' for n in twice)}: give one of the two "
            "(the set's .images array to give them yourself)"
        )
    matching = image_set.label_matching
    return (
        image_set.images,
        image_set.labels,
        list(image_set.ids),
        list(image_set.class_names),
        None if matching is None else matching.to_dict(image_set.class_names),
    )


def _chunk_work(config: ViTConfig, images: int, partial: int, attention: int) -> dict[str, float]:
    """What each step of a chunk of ``images`` costs (``partial`` of them get partial pruning,
    ``attention`` keep their attention), roughly, in forward passes of one image: the progress
    report spreads the chunk's images over its steps by these, so that it moves through a chunk
    at about the pace of the work (the ablations are most of it)."""
    from jaxvit_interp.importance.validate import check_modes

    # Every head of a layer ablated, each rerunning the layers from its own up: (L + 1) / 2
    # forward passes a head on average.
    ablations = config.num_heads * (config.num_layers + 1) / 2
    pruned_modes = len(check_modes(config, None)) - 1  # "none" costs nothing
    return {
        "importance": images * (3 + ablations),  # the unpruned pass, Taylor's backward pass
        "strength": images,
        "special": images if config.num_prefix_tokens else 0,
        "patterns": images,
        "rollout": images,
        "partial": partial * (1 + pruned_modes * ablations),
        "attention": attention,
    }


def _compute_chunk(
    config, params, images, labels, partial_local, attention_local, settings, mesh,
    shares: dict[str, ProgressArg],
):  # fmt: skip
    """Every per-image result of one chunk of images, from the library's public functions;
    each step reports to its share of the run's progress (``shares``, by :func:`_chunk_work`'s
    names)."""
    from jaxvit_interp.importance import head_importance, partial_pruning
    from jaxvit_interp.model.run import attention_over_images
    from jaxvit_interp.patterns import collect_patterns
    from jaxvit_interp.strength import model_strength_over_images

    execution = _execution(settings, mesh)
    metrics = model_metrics(config.num_classes)
    importance = head_importance(
        config,
        params,
        images,
        labels,
        metrics=metrics,
        execution=execution.with_progress(shares["importance"]),
    )
    arrays = {m: np.asarray(importance[m], np.float32) for m in metrics}
    # A backbone's are [image, 0] and -1 (no classes); its bundle leaves them out.
    arrays["probs"] = importance.probs.astype(np.float32)
    arrays["predictions"] = importance.predictions.astype(np.int32)
    arrays["targets"] = importance.labels.astype(np.int32)
    strength = model_strength_over_images(
        config, params, images, execution=execution.with_progress(shares["strength"])
    )
    arrays.update({f: np.asarray(getattr(strength.local, f), np.float32) for f in STRENGTH_FIELDS})
    arrays.update(
        _special_arrays(config, params, images, execution.with_progress(shares["special"]))
    )
    patterns = collect_patterns(
        config,
        params,
        images,
        kinds=_kinds(config, settings),
        execution=execution.with_progress(shares["patterns"]),
    )
    arrays.update({f"{kind}_pattern": value for kind, value in patterns.items()})
    arrays.update(
        _rollout_arrays(config, params, images, execution.with_progress(shares["rollout"]))
    )
    if len(partial_local):
        partial = partial_pruning(
            config,
            params,
            images[partial_local],
            importance.labels[partial_local],
            top_k=min(5, config.num_classes),
            execution=execution.with_progress(shares["partial"]),
        )
        # [image, head pair, mode, ...] -> [image, layer, head, mode, ...]
        L, H = config.num_layers, config.num_heads
        order = np.argsort(partial.heads[:, 0] * H + partial.heads[:, 1])
        grid = lambda a: a[:, order].reshape(len(a), L, H, *a.shape[2:])  # noqa: E731
        arrays["partial_prob"] = grid(partial.prob).astype(np.float32)
        arrays["partial_top5_classes"] = grid(partial.top_classes).astype(np.int32)
        arrays["partial_top5_probs"] = grid(partial.top_probs).astype(np.float32)
    if len(attention_local):
        # Encoded slice by slice: a chunk's float attention is never held whole.
        encoded = []
        report = start_progress(shares["attention"], total=len(attention_local), desc="attention")
        for at in range(0, len(attention_local), ATTENTION_SLICE_IMAGES):
            pick = attention_local[at : at + ATTENTION_SLICE_IMAGES]
            attention = attention_over_images(config, params, images[pick], execution=execution)
            encoded.append(encode_attention(attention))
            report.update(len(pick))
        report.close()
        for k, name in enumerate(("attention_codes", "attention_steps", "attention_error")):
            arrays[name] = np.concatenate([e[k] for e in encoded])
    return arrays


def _execution(settings: AnalysisSettings, mesh, progress: ProgressArg = False) -> Execution:
    """How the run's analyses run: its batch size and memory budget over ``mesh``'s devices."""
    return Execution(settings.batch_size, settings.memory_budget_bytes, mesh, progress)


def _rollout_arrays(config, params, images, execution: Execution) -> dict[str, np.ndarray]:
    """Attention rollout of one chunk: each image's final map and per-layer contributions."""
    from jaxvit_interp.rollout import final_rollout_over_images

    rollout = final_rollout_over_images(config, params, images, execution=execution)
    return {"rollout_map": rollout.map, "rollout_contribution": rollout.contribution}


def _special_arrays(config, params, images, execution: Execution) -> dict[str, np.ndarray]:
    """Attention to and from each special token of one chunk (none without special tokens)."""
    from jaxvit_interp.strength import model_special_mass_over_images

    if not config.num_prefix_tokens:
        return {}
    special = model_special_mass_over_images(config, params, images, execution=execution)
    return {
        "special_to": np.asarray(special.to_token, np.float32),
        "special_from": np.asarray(special.from_token, np.float32),
        "special_between": np.asarray(special.between, np.float32),
    }


# Per-image quantities added after the chunk format: a chunk written before one existed (a
# resumed older run) gets it computed when it is read, so the bundle has it for every image.
# Each: an array that marks it, and what computes it.
ADDED_LATER = {"rollout_map": _rollout_arrays, "special_to": _special_arrays}


def _kinds(config: ViTConfig, settings: AnalysisSettings) -> tuple[str, ...]:
    return tuple(k for k in settings.pattern_kinds if k != "cls" or config.has_cls_token)


def _load_chunk(path: Path) -> dict[str, np.ndarray] | None:
    try:
        return load_npz(path)
    except UnreadableFileError:
        return None  # a torn file from an older writer: recompute it


def _pattern_path(out: Path, kind: str) -> Path:
    return out / CHUNK_DIR / PATTERN_FILE.format(kind=kind)


def _gather_patterns(paths: list[Path], out: Path, layouts: dict[str, tuple]) -> None:
    """Each kind's patterns copied from the chunk files ``paths``, one chunk at a time, into its
    memory-mapped file (:data:`PATTERN_FILE`); ``layouts`` gives each kind's shape and dtype.

    A file already there is kept: it is written whole or not at all (renamed into place when
    complete), from the chunks of this very run (the run folder's fingerprint), so a run
    interrupted after gathering them resumes from it.
    """
    for kind, (shape, dtype) in layouts.items():
        target = _pattern_path(out, kind)
        if target.exists():
            try:
                held = load_npy(target)
                if held.shape == shape and held.dtype == dtype:
                    continue
            except UnreadableFileError:
                pass  # written by something else: gathered again
        key = f"{kind}_pattern"
        with atomic_npy(target, shape, dtype) as stored:
            release = page_releaser(stored)
            at = 0
            for path in paths:
                with np.load(path, allow_pickle=False) as archive:
                    piece = archive[key]
                stored[at : at + len(piece)] = piece
                at += len(piece)
                release()
            if at != shape[0]:
                raise RuntimeError(f"the chunks hold {at} images' {key}, expected {shape[0]}")


def _train_pattern_models(config, patterns, settings, out: Path, mesh, progress: bool) -> dict:
    """The pattern autoencoder of each kind, trained data-parallel over every device of every
    process (each process calls this with the same patterns: the same file, read by index)."""
    from jaxvit_interp.patterns.extract import normalize_patterns
    from jaxvit_interp.patterns.train import train_autoencoder

    models = {}
    for kind, stored in patterns.items():
        flat = stored.reshape(-1, *stored.shape[-2:])
        pick = _subset(len(flat), settings.pattern_samples, settings.seed)
        with start_progress(
            progress, total=1, desc=f"training the {kind} pattern autoencoder"
        ) as stage:
            models[kind] = train_autoencoder(
                np.asarray(normalize_patterns(read_rows(flat, pick), config.num_patches)),
                settings.autoencoder,
                workdir=out / f"autoencoder-{kind}",
                mesh=mesh,
                progress=stage.share(1),
            )
    return models


def _encode_patterns(model, flat: np.ndarray, num_patches: int) -> np.ndarray:
    """Latents ``[pattern, latent]`` of the raw patterns ``flat`` ``[pattern, h, w]`` (memory-
    mapped), read, normalised and encoded a batch at a time.

    The batches are those one ``model.encode`` call over every pattern makes (as even as they can
    be, the last zero-padded to the same size), so the latents are that call's; only one batch
    of patterns is ever in memory.
    """
    from jaxvit_interp.patterns.extract import normalize_patterns

    batch = -(-len(flat) // -(-len(flat) // ENCODE_BATCH))
    latents = []
    for start in range(0, len(flat), batch):
        block = np.asarray(
            normalize_patterns(read_rows(flat, slice(start, start + batch)), num_patches),
            np.float32,
        )
        count = len(block)
        if count < batch:
            block = np.concatenate(
                [block, np.zeros((batch - count, *block.shape[1:]), block.dtype)]
            )
        latents.append(model.encode(block, batch_size=batch)[:count])
    return np.concatenate(latents)


def _pattern_part(config, patterns, models, settings, progress: bool) -> dict[str, np.ndarray]:
    """Encoding, projection and clustering of every pattern of each kind (one process's work)."""
    from jaxvit_interp.patterns.embed import embed_latents
    from jaxvit_interp.patterns.extract import normalize_patterns

    part = {}
    for kind, model in models.items():
        raw = patterns[kind]  # [image, layer, head, h, w], memory-mapped
        flat = raw.reshape(-1, *raw.shape[-2:])
        bar = start_progress(progress, total=1, desc=f"projecting the {kind} patterns")
        latents = _encode_patterns(model, flat, config.num_patches)
        emb = embed_latents(
            model,
            latents.reshape(*raw.shape[:-2], -1),
            lambda index, flat=flat: np.asarray(
                normalize_patterns(read_rows(flat, index), config.num_patches)
            ),
            projection=settings.projection,
            k=settings.clusters,
            seed=settings.seed,
        )
        bar.update(1)
        bar.close()
        part.update(
            pattern_part(
                kind,
                positions=emb.xy,
                clusters=emb.labels,
                representatives=emb.representative,
                centres=emb.decoded_centre,
            )
        )
    return part


def analyze(
    config: ViTConfig,
    params: Any,
    images: np.ndarray | ImageSet,
    out: str | Path,
    *,
    labels: np.ndarray | None = None,
    image_ids: list[str] | None = None,
    class_names: list[str] | None = None,
    label_matching: dict[str, Any] | None = None,
    model_identity: dict[str, Any] | None = None,
    settings: AnalysisSettings | None = None,
    progress: bool = True,
) -> ResultsBundle:
    """Run every analysis on ``images`` and write the results bundle into ``out``.

    Args:
      config, params: the model.
      images: ``[image, height, width, channels]`` preprocessed; a float32
        :class:`numpy.memmap` (as :func:`~jaxvit_interp.data.images.load_image_folder` writes
        with ``out``) is read a chunk at a time and never copied whole. Or the
        :class:`~jaxvit_interp.data.images.ImageSet` that ``load_image_folder`` returns: its
        images, labels, ids (the files' paths), class names and label matching, which are then
        not given again.
      out: the run folder (created; an interrupted run there is resumed).
      labels: ``[image]`` class ids, or None to measure against the model's predictions.
      image_ids: a name per image (default ``"0"``, ``"1"``, ...).
      class_names: a name per class (default ``config.class_names``, else the class indices).
      label_matching: how the labels were tied to the model's classes (see
        :meth:`~jaxvit_interp.data.labels.LabelMatching.to_dict`), stored in the bundle's meta.
      model_identity: the checkpoint's ``path`` and ``sha256``, stored as the bundle's
        ``checkpoint`` and shown by the site; default
        :func:`~jaxvit_interp.model.identity.model_identity`: the config in words and the
        parameters' sha256.
      settings: :class:`AnalysisSettings`.
      progress: report each stage (:func:`~jaxvit_interp.progress.start_progress`): on a
        terminal a bar, elsewhere (a log file, a pipe) a line on stderr when it starts and ends
        and every few percent with the time taken and an estimate of what is left.

    Returns:
      The :class:`~jaxvit_interp.bundle.ResultsBundle`, also saved in ``out``; arrays are
      ``[image, layer, head, ...]``.

    Raises:
      InputError: before anything is written, for a model with heads removed (per-head
        analyses need the full model), labels given to a backbone without a
        classifier (it is analysed with the metrics it has: ``layer``, ``repr``), bad
        images, labels, names or settings, or a memory budget too small for one image; :class:`RunFolderError` when ``out`` holds
        another run.
    """
    from jaxvit_interp.importance.validate import check_images, check_labels, check_unpruned

    check_unpruned(config, "analyze")
    settings = settings or AnalysisSettings()
    if isinstance(images, ImageSet):
        images, labels, image_ids, class_names, label_matching = _from_image_set(
            images,
            labels=labels,
            image_ids=image_ids,
            class_names=class_names,
            label_matching=label_matching,
        )
    if not config.num_classes and labels is not None:
        raise InputError(
            "labels were given for a backbone without a classifier (num_classes=0): its metrics "
            "('layer', 'repr') need no labels and it has no classes to match them to; attach a "
            "linear probe on its pooled output for the label metrics (jaxvit_interp.with_probe, "
            "or --probe on the command line)"
        )
    # Read back a slice at a time: a memory-mapped set is never held whole (see _Images).
    release = page_releaser(images)
    images = _Images(np.asarray(check_images(config, images), np.float32), release)
    labels = check_labels(config, labels, len(images))
    num_images = len(images)
    image_ids = [str(i) for i in range(num_images)] if image_ids is None else list(image_ids)
    if len(image_ids) != num_images:
        raise InputError(f"{len(image_ids)} image ids for {num_images} images")
    class_names = list(class_names or display_class_names(config.class_names, config.num_classes))
    if len(class_names) != config.num_classes:
        raise InputError(
            f"{len(class_names)} class names for a model with {config.num_classes} classes"
        )
    _preflight(config, params, settings, num_images)
    model_identity = model_identity or identify_model(config, params)
    out = Path(out)
    digest, pixel_digest = image_digests(images, image_ids)
    fingerprint = run_fingerprint(
        model_identity={**model_identity, "config": config.to_dict()},
        image_digest=digest,
        settings=settings,
    )
    starts = list(range(0, num_images, settings.chunk_images))
    chunk_dir = out / CHUNK_DIR
    chunk_path = lambda number: chunk_dir / f"chunk-{number:05d}.npz"  # noqa: E731

    def prepare() -> dict[str, Any]:
        """The run folder made ready, and what of the run it already holds."""
        _prepare_run_folder(
            out,
            fingerprint,
            run_record(config, model_identity, image_ids, pixel_digest, settings),
        )
        if run_is_complete(out):
            return {"complete": True, "done": []}
        chunk_dir.mkdir(exist_ok=True)
        done = []
        for number in range(len(starts)):
            # Read whole to know it is readable, then let go: all the chunks of a large run
            # (their patterns and attention) would not fit in memory; the run reads them again
            # one at a time.
            if chunk_path(number).exists() and _load_chunk(chunk_path(number)) is not None:
                done.append(number)
        return {"complete": False, "done": done}

    # Process 0 prepares the folder and tells the others which chunks are done, so that every
    # process computes the same chunks (each computation is a collective over all of them).
    state = share_from_writer(prepare, f"prepare the run folder {out}")
    if state["complete"]:
        from jaxvit_interp.bundle import load_bundle

        return load_bundle(out)  # this very run finished before: nothing to redo

    # Two independent seeded subsets: which images get partial pruning, which keep attention.
    # Partial pruning measures p'_y: a backbone without a classifier has none.
    partial_index = _subset(
        num_images, settings.partial_images if config.num_classes else 0, settings.seed
    )
    attention_index = _subset(
        num_images, settings.attention_count(num_images), settings.seed, stream=1
    )
    mesh = all_devices_mesh()
    chunks, paths = [], []
    pattern_keys = {f"{kind}_pattern": kind for kind in _kinds(config, settings)}
    layouts: dict[str, tuple] = {}  # each pattern kind's shape and dtype over all images
    bar = start_progress(progress, total=num_images, desc="analysing images", unit="img")
    for number, start in enumerate(starts):
        stop = min(start + settings.chunk_images, num_images)
        partial_local = _local_indices(partial_index, start, stop)
        attention_local = _local_indices(attention_index, start, stop)
        if number in state["done"]:
            arrays = load_npz(chunk_path(number))  # what process 0 found readable
            for key, compute in ADDED_LATER.items():
                if key not in arrays:
                    execution = _execution(settings, mesh)
                    arrays = {**arrays, **compute(config, params, images[start:stop], execution)}
            bar.update(stop - start)
        else:
            work = _chunk_work(config, stop - start, len(partial_local), len(attention_local))
            scale = (stop - start) / sum(work.values())
            arrays = _compute_chunk(
                config,
                params,
                images[start:stop],
                None if labels is None else labels[start:stop],
                partial_local,
                attention_local,
                settings,
                mesh,
                {step: bar.share(cost * scale) for step, cost in work.items()},
            )
            if is_writer():
                save_npz(chunk_path(number), arrays)
        # The streamed arrays and the patterns are read back from the chunk files.
        for key, kind in pattern_keys.items():
            layouts[kind] = ((num_images, *arrays[key].shape[1:]), arrays[key].dtype)
        chunks.append(
            {k: v for k, v in arrays.items() if k not in STREAMED and k not in pattern_keys}
        )
        del arrays
        paths.append(chunk_path(number))
    bar.close()

    merged = {
        name: np.concatenate([c[name] for c in chunks if name in c])
        for name in set().union(*chunks)
    }
    del chunks
    # Process 0 gathers the patterns into files of the run folder; every process reads its
    # training sample from them.
    run_on_writer(
        lambda: _gather_patterns(paths, out, layouts), f"gather the patterns in {out / CHUNK_DIR}"
    )
    patterns = {kind: load_npy(_pattern_path(out, kind)) for kind in layouts}
    # Training is data-parallel over every process; the rest of the run (the layouts, the
    # clustering, the bundle) is computed once, by process 0, and the others read its bundle.
    models = _train_pattern_models(config, patterns, settings, out, mesh, progress)

    def finish() -> ResultsBundle:
        head_sets = _head_sets_stage(
            config, params, images, labels, merged, settings, out, progress
        )
        bundle = _bundle(
            config,
            merged,
            patterns,
            models,
            images,
            labels_given=labels is not None,
            partial_index=partial_index,
            attention_index=attention_index,
            settings=settings,
            progress=progress,
            out=out,
            chunk_paths=paths,
            meta={
                "config": config.to_dict(),
                "checkpoint": model_identity,
                "image_ids": image_ids,
                "class_names": list(class_names),
                "labels_are_predictions": labels is None and bool(config.num_classes),
                "metrics": list(model_metrics(config.num_classes)),
                "special_tokens": list(special_token_names(config)),
                "label_matching": label_matching
                or {"source": "none" if labels is None else "array"},
                "pruning_modes": [
                    m for m in PRUNING_MODES if config.has_cls_token or m not in CLS_MODES
                ],
                "fingerprint": fingerprint,
                "settings": settings.to_dict(),
                # Where it ran: results agree across device counts to float32 rounding.
                "devices": {
                    "platform": jax.default_backend(),
                    "kind": jax.devices()[0].device_kind,
                    "count": jax.device_count(),
                },
            },
        )
        if head_sets is not None:
            bundle.parts["head_sets"], bundle.meta["head_sets"] = head_sets
        save_bundle(bundle, out)
        # The run is complete: nothing reads the gathered patterns again (the chunks keep them).
        for kind in patterns:
            _pattern_path(out, kind).unlink(missing_ok=True)
        return bundle

    bundle = run_on_writer(finish, f"write the results bundle in {out}")
    if bundle is None:
        from jaxvit_interp.bundle import load_bundle

        bundle = load_bundle(out)
    return bundle


def _head_sets_stage(config, params, images, labels, merged, settings, out: Path, progress):
    """The ``head_sets`` part and its meta (:mod:`jaxvit_interp.pipeline.head_sets`) on a
    seeded subset of the images, or None when ``set_images`` is 0. Computed once, on the
    writing process, and kept in the run folder, so a resumed run reads it back."""
    from jaxvit_interp.importance import HeadImportance
    from jaxvit_interp.pipeline import head_sets

    # Interactions and pruning curves are measured in p(label), KL and accuracy: a backbone
    # without a classifier has none of them.
    if settings.set_images == 0 or not config.num_classes:
        return None
    index = _subset(len(images), settings.set_images, settings.seed, head_sets.SUBSET_STREAM)
    importance = HeadImportance(
        **{m: merged[m] for m in METRIC_NAMES},
        probs=merged["probs"],
        predictions=merged["predictions"],
        labels=merged["targets"],
        labels_are_predictions=labels is None,
        metrics=METRIC_NAMES,
    )
    options = dict(
        interaction_heads=settings.interaction_heads,
        random_orders=settings.random_orders,
        greedy_max_heads=settings.greedy_max_heads,
    )
    part = head_sets.load_or_compute(
        out / head_sets.HEAD_SETS_FILE,
        lambda: head_sets.compute_head_sets(
            config,
            params,
            images,
            labels,
            importance,
            index,
            seed=settings.seed,
            execution=_execution(settings, None, progress),
            **options,
        ),
    )
    return part, head_sets.head_sets_meta(config, images=len(index), **options)


def _bundle(
    config,
    merged,
    patterns,
    models,
    images,
    *,
    labels_given: bool,
    partial_index,
    attention_index,
    settings: AnalysisSettings,
    progress: bool,
    meta: dict[str, Any],
    out: Path,
    chunk_paths: list[Path],
) -> ResultsBundle:
    """The results bundle from the merged per-image results, the gathered (memory-mapped)
    patterns and the trained pattern models; the large arrays (pixels, attention codes) are
    streamed into ``out`` from ``images`` and ``chunk_paths`` a slice at a time."""
    classifier = bool(config.num_classes)
    # The overview places images by how their heads matter.
    overview_metric = layout_metric(config.num_classes)
    parts = {
        "images": {
            **(
                {
                    "labels": merged["targets"],
                    "predictions": merged["predictions"],
                    "probs": merged["probs"],
                }
                if classifier
                else {}
            ),
            "thumbnails": _thumbnails(images, config, settings.thumbnail_size),
            "pixels": _stream_pixels(images, config, out, IMAGE_STEP),
            "overview": image_layout(merged[overview_metric], settings.seed),
        },
        "importance": importance_part(
            merged,
            probs=merged["probs"],
            predictions=merged["predictions"],
            targets=merged["targets"],
            labels_are_predictions=not labels_given,
            num_classes=config.num_classes,
        ),
        "strength": {
            **strength_part(merged, has_cls_token=config.has_cls_token),
            **(special_part(merged) if config.num_prefix_tokens else {}),
        },
        "patterns": _pattern_part(config, patterns, models, settings, progress),
    }
    if len(partial_index):
        parts["partial"] = partial_part(
            partial_index,
            merged["partial_prob"],
            merged["partial_top5_classes"],
            merged["partial_top5_probs"],
        )
    # Every chunk holds the rollout (the run computes it for chunks written before it existed);
    # a part for some images only would be wrong, so the check stays.
    if len(merged.get("rollout_map", ())) == len(merged["targets"]):
        parts["rollout"] = rollout_part(merged["rollout_map"], merged["rollout_contribution"])
    if len(attention_index):
        parts["attention"] = {
            "image_index": attention_index.astype(np.int32),
            **_stream_attention(chunk_paths, out, config, len(attention_index)),
            "error": merged["attention_error"],
            "error_max": merged["attention_error"].max(axis=0),
        }
    return ResultsBundle(meta=meta, parts=parts)


def _thumbnails(images, config: ViTConfig, side: int, step: int | None = None) -> np.ndarray:
    """:func:`~jaxvit_interp.data.preprocess.thumbnails` of every image, made a slice at a time
    (each slice's float intermediate is the size of the slice's images)."""
    step = step or IMAGE_STEP
    return np.concatenate(
        [thumbnails(images[at : at + step], config, side) for at in range(0, len(images), step)]
    )


def _stream_pixels(images, config: ViTConfig, out: Path, step: int) -> np.ndarray:
    """Each image at the model's input resolution, written to the bundle a slice at a time."""
    side = max(config.image_size)
    if not is_writer():  # the writing process's bundle holds them
        return _thumbnails(images, config, side, step)
    path = mapped_path(out, "images", "pixels")
    shape = thumbnails(images[:1], config, side).shape[1:]
    with atomic_npy(path, (len(images), *shape), np.uint8) as pixels:
        release = page_releaser(pixels)
        for start in range(0, len(images), step):
            pixels[start : start + step] = thumbnails(images[start : start + step], config, side)
            release()
    return load_npy(path)


def _stream_attention(
    paths: list[Path], out: Path, config: ViTConfig, count: int
) -> dict[str, np.ndarray]:
    """The bundle's attention codes and steps, copied from the chunk files one chunk at a time
    (a large set's would not fit in memory), memory-mapped from the bundle's files."""
    L, H, N = config.num_layers, config.num_heads, config.num_tokens
    shapes = {"attention_codes": (count, L, H, N, N), "attention_steps": (count, L, H, N)}
    dtypes = {"attention_codes": np.uint8, "attention_steps": np.float32}
    arrays = {}
    if not is_writer():  # the writing process's bundle holds them
        return arrays
    for key, (part, name) in STREAMED.items():
        target = mapped_path(out, part, name)
        with atomic_npy(target, shapes[key], dtypes[key]) as stored:
            release = page_releaser(stored)
            at = 0
            for path in paths:
                with np.load(path, allow_pickle=False) as archive:
                    if key not in archive.files:
                        continue
                    piece = archive[key]
                stored[at : at + len(piece)] = piece
                at += len(piece)
                release()
            if at != count:
                raise RuntimeError(f"the chunks hold {at} images' {key}, expected {count}")
        arrays[name] = load_npy(target)
    return arrays


def _preflight(config: ViTConfig, params, settings: AnalysisSettings, num_images: int) -> None:
    """Refuse, before anything is written, what would fail only later in the run."""
    from jaxvit_interp.importance.engine import head_importance_plan
    from jaxvit_interp.patterns.train import MIN_PATTERNS

    if settings.pattern_kinds == ("cls",) and not config.has_cls_token:
        raise InputError("pattern_kinds=('cls',) needs a model with a CLS token")
    patterns = num_images * config.num_layers * config.num_heads
    needed = max(MIN_PATTERNS, settings.clusters or 0)
    if patterns < needed:
        why = f"{settings.clusters} clusters" if settings.clusters else "the pattern autoencoders"
        raise InputError(
            f"{num_images} image(s) give {patterns} heads x images per pattern kind; {why} "
            f"need at least {needed}: analyse more images"
            + (" or ask for fewer --clusters" if settings.clusters else "")
        )
    # The ablation engine's largest working set (one image, one ablation at a time, Taylor
    # scores on) must fit the budget; its planner raises the same error the run would.
    execution = _execution(settings, all_devices_mesh())
    head_importance_plan(config, params, execution, num_images=num_images, with_taylor=True)


def run_is_complete(out: str | Path) -> bool:
    return (Path(out) / INDEX_FILE).exists()
