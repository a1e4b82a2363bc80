"""``analyze``: images -> every analysis -> a results bundle on disk, chunked and resumable.

A run folder holds ``run.json`` (what the run is: its fingerprint and settings), ``chunks/``
(per-image results, one ``.npz`` per chunk of images, written atomically as soon as each chunk
is done), the pattern autoencoders' checkpoints, and finally the results bundle files
(:mod:`jaxvit_interp.bundle`). Run the same command again after an interruption and only the
missing chunks are computed; every random choice is seeded, so the result equals an
uninterrupted run's.
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
from jaxvit_interp.data.labels import display_class_names
from jaxvit_interp.data.preprocess import thumbnails
from jaxvit_interp.errors import InputError
from jaxvit_interp.importance.layout import image_layout
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import CLS_MODES, PRUNING_MODES
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
from jaxvit_interp.pipeline.passes import pass_images
from jaxvit_interp.pipeline.progress import progress_bar, progress_enabled
from jaxvit_interp.pipeline.settings import AnalysisSettings, run_fingerprint
from jaxvit_interp.quantities import METRIC_NAMES, STRENGTH_FIELDS, model_metrics
from jaxvit_interp.storage import (
    UnreadableFileError,
    atomic_npy,
    load_npy,
    load_npz,
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


class RunFolderError(InputError):
    """The output folder holds something other than this run."""


def image_digest(images: np.ndarray, image_ids: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(image_ids)).encode())
    h.update(np.ascontiguousarray(images, np.float32).tobytes())
    return h.hexdigest()[:16]


def _prepare_run_folder(out: Path, fingerprint: str, record: dict[str, Any]) -> None:
    run_file = out / RUN_FILE
    if run_file.exists():
        try:
            held = json.loads(run_file.read_text()).get("fingerprint")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise RunFolderError(
                f"{run_file} is not readable; {out} may hold a damaged run: choose another "
                "output folder or delete it"
            ) from None
        if held != fingerprint:
            raise RunFolderError(
                f"{out} holds another run (fingerprint {held}, this one is {fingerprint}: a "
                "different model, image set or settings); choose another output folder or delete it"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(
            f"{out} is not empty and holds no {RUN_FILE}; choose an empty or new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text(run_file, json.dumps({"fingerprint": fingerprint, **record}, indent=1))


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


def _compute_chunk(config, params, images, labels, partial_local, attention_local, settings, mesh):
    """Every per-image result of one chunk of images, from the library's public functions."""
    from jaxvit_interp.importance import head_importance, partial_pruning
    from jaxvit_interp.model.run import attention_over_images
    from jaxvit_interp.patterns import collect_patterns
    from jaxvit_interp.strength import model_strength_over_images

    batch = _pass_batch(config, params, len(images), settings, mesh)
    metrics = model_metrics(config.num_classes)
    importance = head_importance(
        config,
        params,
        images,
        labels,
        metrics=metrics,
        batch_size=settings.batch_size,
        memory_budget_bytes=settings.memory_budget_bytes,
        mesh=mesh,
        progress=False,
    )
    arrays = {m: np.asarray(importance[m], np.float32) for m in metrics}
    # A backbone's are [image, 0] and -1 (no classes); its bundle leaves them out.
    arrays["probs"] = importance.probs.astype(np.float32)
    arrays["predictions"] = importance.predictions.astype(np.int32)
    arrays["targets"] = importance.labels.astype(np.int32)
    strength = model_strength_over_images(
        config, params, images, batch_size=batch, mesh=mesh, progress=False
    )
    arrays.update({f: np.asarray(getattr(strength.local, f), np.float32) for f in STRENGTH_FIELDS})
    arrays.update(_special_arrays(config, params, images, batch, mesh))
    patterns = collect_patterns(
        config,
        params,
        images,
        kinds=_kinds(config, settings),
        batch_size=batch,
        mesh=mesh,
        progress=False,
    )
    arrays.update({f"{kind}_pattern": value for kind, value in patterns.items()})
    arrays.update(_rollout_arrays(config, params, images, batch, mesh))
    if len(partial_local):
        partial = partial_pruning(
            config,
            params,
            images[partial_local],
            importance.labels[partial_local],
            top_k=min(5, config.num_classes),
            batch_size=settings.batch_size,
            memory_budget_bytes=settings.memory_budget_bytes,
            mesh=mesh,
            progress=False,
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
        for at in range(0, len(attention_local), ATTENTION_SLICE_IMAGES):
            pick = attention_local[at : at + ATTENTION_SLICE_IMAGES]
            attention = attention_over_images(
                config, params, images[pick], batch_size=min(batch, len(pick)), mesh=mesh
            )
            encoded.append(encode_attention(attention))
        for k, name in enumerate(("attention_codes", "attention_steps", "attention_error")):
            arrays[name] = np.concatenate([e[k] for e in encoded])
    return arrays


def _pass_batch(config, params, num_images: int, settings: AnalysisSettings, mesh) -> int:
    """Images per forward pass of the strength, pattern, rollout and attention passes: as many
    as the engine's memory budget holds (:func:`~jaxvit_interp.pipeline.passes.pass_images`)."""
    from jaxvit_interp.importance.engine import default_memory_budget, params_bytes

    return settings.batch_size or pass_images(
        config,
        num_images=num_images,
        memory_budget_bytes=settings.memory_budget_bytes or default_memory_budget(),
        fixed_bytes=params_bytes(params),
        num_devices=1 if mesh is None else mesh.size,
    )


def _rollout_arrays(config, params, images, batch: int, mesh) -> dict[str, np.ndarray]:
    """Attention rollout of one chunk: each image's final map and per-layer contributions."""
    from jaxvit_interp.rollout import final_rollout_over_images

    rollout = final_rollout_over_images(config, params, images, batch_size=batch, mesh=mesh)
    return {"rollout_map": rollout.map, "rollout_contribution": rollout.contribution}


def _special_arrays(config, params, images, batch: int, mesh) -> dict[str, np.ndarray]:
    """Attention to and from each special token of one chunk (none without special tokens)."""
    from jaxvit_interp.strength import model_special_mass_over_images

    if not config.num_prefix_tokens:
        return {}
    special = model_special_mass_over_images(
        config, params, images, batch_size=batch, mesh=mesh, progress=False
    )
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


def _train_pattern_models(config, merged, settings, out: Path, mesh, progress: bool) -> dict:
    """The pattern autoencoder of each kind, trained data-parallel over every device of every
    process (each process calls this with the same patterns)."""
    from jaxvit_interp.patterns.extract import normalize_patterns
    from jaxvit_interp.patterns.train import train_autoencoder

    models = {}
    for kind in _kinds(config, settings):
        flat = merged[f"{kind}_pattern"].reshape(-1, *merged[f"{kind}_pattern"].shape[-2:])
        pick = _subset(len(flat), settings.pattern_samples, settings.seed)
        models[kind] = train_autoencoder(
            np.asarray(normalize_patterns(flat[pick], config.num_patches)),
            settings.autoencoder,
            workdir=out / f"autoencoder-{kind}",
            mesh=mesh,
            progress=progress,
        )
    return models


def _pattern_part(config, merged, models, settings, progress: bool) -> dict[str, np.ndarray]:
    """Encoding, projection and clustering of every pattern of each kind (one process's work)."""
    from jaxvit_interp.patterns.embed import embed_latents
    from jaxvit_interp.patterns.extract import normalize_patterns

    part = {}
    for kind, model in models.items():
        raw = merged[f"{kind}_pattern"]  # [image, layer, head, h, w]
        flat = raw.reshape(-1, *raw.shape[-2:])
        bar = progress_bar(
            total=1, desc=f"projecting {kind} patterns", unit="stage", enabled=progress
        )
        latents = model.encode(np.asarray(normalize_patterns(flat, config.num_patches)))
        emb = embed_latents(
            model,
            latents.reshape(*raw.shape[:-2], -1),
            lambda index, flat=flat: np.asarray(
                normalize_patterns(flat[index], config.num_patches)
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
    images: np.ndarray,
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
      images: ``[image, height, width, channels]`` preprocessed.
      out: the run folder (created; an interrupted run there is resumed).
      labels: ``[image]`` class ids, or None to measure against the model's predictions.
      image_ids: a name per image (default ``"0"``, ``"1"``, ...).
      class_names: a name per class (default ``config.class_names``, else the class indices).
      label_matching: how the labels were tied to the model's classes (see
        :meth:`~jaxvit_interp.data.labels.LabelMatching.to_dict`), stored in the bundle's meta.
      model_identity: the checkpoint's ``path`` and ``sha256``, stored as the bundle's
        ``checkpoint``.
      settings: :class:`AnalysisSettings`.
      progress: progress bars (also off when the output is not a terminal).

    Returns:
      The :class:`~jaxvit_interp.bundle.ResultsBundle`, also saved in ``out``; arrays are
      ``[image, layer, head, ...]``.

    Raises:
      InputError: before anything is written, for labels given to a backbone without a
        classifier (it is analysed with the metrics it has: ``layer``, ``repr``), bad
        images, labels, names or settings, or a memory budget too small for one image; :class:`RunFolderError` when ``out`` holds
        another run.
    """
    from jaxvit_interp.importance.validate import check_images, check_labels

    settings = settings or AnalysisSettings()
    progress = progress_enabled(progress)
    if not config.num_classes and labels is not None:
        raise InputError(
            "labels were given for a backbone without a classifier (num_classes=0): its metrics "
            "('layer', 'repr') need no labels and it has no classes to match them to; attach a "
            "linear probe on its pooled output for the label metrics (jaxvit_interp.with_probe, "
            "or --probe on the command line)"
        )
    images = np.asarray(check_images(config, images), np.float32)
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
    model_identity = model_identity or {}
    out = Path(out)
    fingerprint = run_fingerprint(
        model_identity={**model_identity, "config": config.to_dict()},
        image_digest=image_digest(images, image_ids),
        settings=settings,
    )
    starts = list(range(0, num_images, settings.chunk_images))
    chunk_dir = out / CHUNK_DIR
    chunk_path = lambda number: chunk_dir / f"chunk-{number:05d}.npz"  # noqa: E731
    held: dict[int, dict[str, np.ndarray]] = {}

    def prepare() -> dict[str, Any]:
        """The run folder made ready, and what of the run it already holds."""
        _prepare_run_folder(
            out,
            fingerprint,
            {"settings": settings.to_dict(), "model": model_identity, "images": num_images},
        )
        if run_is_complete(out):
            return {"complete": True, "done": []}
        chunk_dir.mkdir(exist_ok=True)
        for number in range(len(starts)):
            arrays = _load_chunk(chunk_path(number)) if chunk_path(number).exists() else None
            if arrays is not None:
                held[number] = arrays
        return {"complete": False, "done": sorted(held)}

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
    bar = progress_bar(total=num_images, desc="analysing images", unit="img", enabled=progress)
    for number, start in enumerate(starts):
        stop = min(start + settings.chunk_images, num_images)
        if number in state["done"]:
            arrays = held.pop(number, None)
            if arrays is None:  # another process: it reads what process 0 found readable
                arrays = load_npz(chunk_path(number))
            for key, compute in ADDED_LATER.items():
                if key not in arrays:
                    batch = _pass_batch(config, params, stop - start, settings, mesh)
                    arrays = {**arrays, **compute(config, params, images[start:stop], batch, mesh)}
        else:
            arrays = _compute_chunk(
                config,
                params,
                images[start:stop],
                None if labels is None else labels[start:stop],
                _local_indices(partial_index, start, stop),
                _local_indices(attention_index, start, stop),
                settings,
                mesh,
            )
            if is_writer():
                save_npz(chunk_path(number), arrays)
        # The streamed arrays are read back from the chunk files when the bundle is written.
        chunks.append({k: v for k, v in arrays.items() if k not in STREAMED})
        paths.append(chunk_path(number))
        bar.update(stop - start)
    bar.close()

    merged = {
        name: np.concatenate([c[name] for c in chunks if name in c])
        for name in set().union(*chunks)
    }
    # Training is data-parallel over every process; the rest of the run (the layouts, the
    # clustering, the bundle) is computed once, by process 0, and the others read its bundle.
    models = _train_pattern_models(config, merged, settings, out, mesh, progress)

    def finish() -> ResultsBundle:
        head_sets = _head_sets_stage(
            config, params, images, labels, merged, settings, out, progress
        )
        bundle = _bundle(
            config,
            merged,
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
    bar = progress_bar(total=1, desc="ablating head sets", unit="stage", enabled=progress)
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
            batch_size=settings.batch_size,
            memory_budget_bytes=settings.memory_budget_bytes,
            **options,
        ),
    )
    bar.update(1)
    bar.close()
    return part, head_sets.head_sets_meta(config, images=len(index), **options)


def _bundle(
    config,
    merged,
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
    """The results bundle from the merged per-image results and the trained pattern models;
    the large arrays (pixels, attention codes) are streamed into ``out`` from ``chunk_paths``."""
    classifier = bool(config.num_classes)
    # The overview places images by how their heads matter: by the probability drop, or for a
    # backbone without a classifier by the representation change.
    layout_metric = "prob_drop" if classifier else "repr"
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
            "thumbnails": thumbnails(images, config, settings.thumbnail_size),
            "pixels": _stream_pixels(images, config, out, settings.chunk_images),
            "overview": image_layout(merged[layout_metric], settings.seed),
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
        "patterns": _pattern_part(config, merged, models, settings, progress),
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


def _stream_pixels(images: np.ndarray, config: ViTConfig, out: Path, step: int) -> np.ndarray:
    """Each image at the model's input resolution, written to the bundle a slice at a time."""
    side = max(config.image_size)
    if not is_writer():  # the writing process's bundle holds them
        return thumbnails(images, config, side)
    path = mapped_path(out, "images", "pixels")
    shape = thumbnails(images[:1], config, side).shape[1:]
    with atomic_npy(path, (len(images), *shape), np.uint8) as pixels:
        for start in range(0, len(images), step):
            pixels[start : start + step] = thumbnails(images[start : start + step], config, side)
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
            at = 0
            for path in paths:
                with np.load(path, allow_pickle=False) as archive:
                    if key not in archive.files:
                        continue
                    piece = archive[key]
                stored[at : at + len(piece)] = piece
                at += len(piece)
            if at != count:
                raise RuntimeError(f"the chunks hold {at} images' {key}, expected {count}")
        arrays[name] = load_npy(target)
    return arrays


def _preflight(config: ViTConfig, params, settings: AnalysisSettings, num_images: int) -> None:
    """Refuse, before anything is written, what would fail only later in the run."""
    from jaxvit_interp.importance.engine import (
        default_step_tokens,
        params_bytes,
        plan_batches,
    )
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
    # scores on) must fit the budget; plan_batches raises the same error the run would.
    mesh = all_devices_mesh()
    plan_batches(
        config,
        num_images=num_images,
        num_slots=config.num_heads,
        spawn_layers=tuple(range(config.num_layers)),
        with_taylor=True,
        need_streams=True,
        memory_budget_bytes=settings.memory_budget_bytes,
        batch_size=settings.batch_size,
        num_devices=1 if mesh is None else mesh.size,
        fixed_bytes=params_bytes(params),
        step_tokens=default_step_tokens(),
    )


def run_is_complete(out: str | Path) -> bool:
    return (Path(out) / INDEX_FILE).exists()
