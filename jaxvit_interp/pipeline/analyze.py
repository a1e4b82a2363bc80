"""``analyze``: images -> every analysis -> a results bundle on disk, chunked and resumable.

The run is a list of stages over a run folder (:class:`~.run_folder.RunFolder`: its lock,
fingerprint, chunks and resume):

1. the inputs checked and the run's fingerprint taken, before anything is written;
2. the chunk stage (:mod:`.chunk`): each chunk of images through the ablation engine, one
   attention pass for every analysis that reads attention (:mod:`.analyses`) and partial pruning,
   written to the run folder as soon as it is done (a resumed run reads the chunks it has);
3. the pattern stage (:mod:`.pattern_stage`): the patterns gathered from the chunks, an
   autoencoder per kind trained data-parallel over every process;
4. the head-set stage (:mod:`.head_sets`) on a seeded subset of the images;
5. the Shapley stage (:mod:`.shapley_stage`) on another, when ``shapley_images`` asks for it,
   the explanations stage (:mod:`.explain_stage`) on another, when ``explain_images`` asks for
   it, and the patching stage (:mod:`.patching_stage`) on the pairs ``patching_pairs`` names;
6. the bundle (:mod:`.bundle_stage`), written by process 0, which the others then read.

Run the same command again after an interruption and only the missing chunks are computed;
every random choice is seeded, so the result equals an uninterrupted run's. The head-set,
Shapley, explanations and patching stages keep their results in files of their own, so a resumed
run does not redo them; the Shapley and explanations stages' settings and the patching pairs are
not part of the run's fingerprint (:mod:`.kept_stage`), and a run asked for other ones (a
complete run too) computes that stage again and nothing else. Memory does not grow
with the number of images beyond a few kB of results per image: the images may be a
memory-mapped array (the command line maps the images it loads from a folder), read a chunk at a
time; patterns, pixels and attention go from the chunk files to files of their own a chunk at a
time, and the pattern stage reads them a block at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxvit_interp.attention_codes import POWER
from jaxvit_interp.bundle import ResultsBundle, load_bundle, save_bundle
from jaxvit_interp.data.images import ImageSet
from jaxvit_interp.data.labels import display_class_names
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import CLS_MODES, PRUNING_MODES
from jaxvit_interp.model.identity import model_identity as identify_model
from jaxvit_interp.multihost import run_on_writer, share_from_writer
from jaxvit_interp.parallel import all_devices_mesh
from jaxvit_interp.pipeline import kept_stage
from jaxvit_interp.pipeline.analyses import pattern_kinds
from jaxvit_interp.pipeline.bundle_stage import build_bundle
from jaxvit_interp.pipeline.chunk import chunk_work, complete_chunk, compute_chunk, run_execution
from jaxvit_interp.pipeline.patching_stage import check_pairs
from jaxvit_interp.pipeline.pattern_stage import train_pattern_models
from jaxvit_interp.pipeline.run_folder import (
    CHUNK_DIR,
    INPUT_DIR,
    RunFolder,
    RunFolderError,
    RunState,
    check_run_folder,
    image_digest,
    image_digests,
    run_is_complete,
    run_record,
)
from jaxvit_interp.pipeline.settings import AnalysisSettings, run_fingerprint
from jaxvit_interp.pipeline.subsets import (
    ATTENTION_STREAM,
    HEAD_SETS_STREAM,
    PARTIAL_STREAM,
    REFERENCE_STREAM,
    derangement,
    local_indices,
    subset,
)
from jaxvit_interp.progress import start_progress
from jaxvit_interp.quantities import CHUNK_KEYS, MAPPED_ARRAYS, METRIC_NAMES, model_metrics
from jaxvit_interp.storage import load_npy, load_npz, page_releaser
from jaxvit_interp.strength.special import special_token_names

__all__ = [
    "CHUNK_DIR",
    "INPUT_DIR",
    "RunFolderError",
    "analyze",
    "check_run_folder",
    "image_digest",
    "run_is_complete",
]


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


@dataclasses.dataclass(frozen=True)
class _Run:
    """One run's inputs, checked, and what follows from them."""

    config: ViTConfig
    params: Any
    images: _Images
    labels: np.ndarray | None
    image_ids: list[str]
    class_names: list[str]
    label_matching: dict[str, Any] | None
    model_identity: dict[str, Any]
    settings: AnalysisSettings
    fingerprint: str
    record: dict[str, Any]
    patching_pairs: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def starts(self) -> list[int]:
        """The first image of each chunk."""
        return list(range(0, self.num_images, self.settings.chunk_images))

    @property
    def partial_index(self) -> np.ndarray:
        """The images that get partial pruning: p'_y needs classes, a backbone has none."""
        size = self.settings.partial_images if self.config.num_classes else 0
        return subset(self.num_images, size, self.settings.seed, PARTIAL_STREAM)

    @property
    def attention_index(self) -> np.ndarray:
        """The images whose attention the bundle keeps."""
        size = self.settings.attention_count(self.num_images)
        return subset(self.num_images, size, self.settings.seed, ATTENTION_STREAM)

    def reference(self, kind: str, index) -> Any:
        """The reference images of ablation ``kind`` for the images ``index`` (a slice or
        indices of the analysed images), as :func:`~jaxvit_interp.importance.head_importance`
        takes them: None for zero; for mean the run's seeded sample of ``reference_images``
        (the same for every chunk, so every chunk's replacement is the same table); for
        resample each image's partner in the run's seeded derangement
        (:func:`~.subsets.derangement`)."""
        settings = self.settings
        if kind == "mean":
            size = settings.reference_images
            return self.images[subset(self.num_images, size, settings.seed, REFERENCE_STREAM)]
        if kind == "resample":
            return self.images[derangement(self.num_images, settings.seed)[index]]
        return None

    def references(self, index) -> dict[str, Any]:
        """Each ablation kind of the run -> :meth:`reference` of the images ``index``."""
        return {kind: self.reference(kind, index) for kind in self.settings.ablations}


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
    patching_pairs=None,
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
      patching_pairs: ``[pair, 2]`` the positions among ``images`` of a clean and a corrupted
        image per pair, whose heads the patching stage patches (:mod:`.patching_stage`); None:
        no patching.
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
    run = RunFolder(out)
    inputs = _check_inputs(
        config,
        params,
        images,
        labels=labels,
        image_ids=image_ids,
        class_names=class_names,
        label_matching=label_matching,
        model_identity=model_identity,
        settings=settings or AnalysisSettings(),
        patching_pairs=patching_pairs,
    )
    with run.lock():
        # Process 0 prepares the folder and tells the others which chunks are done, so that
        # every process computes the same chunks (each computation is a collective over all).
        state = share_from_writer(
            lambda: run.open(inputs.fingerprint, inputs.record, len(inputs.starts)).to_dict(),
            f"prepare the run folder {run.path}",
        )
        state = RunState.from_dict(state)
        if state.complete:  # this very run finished before: at most a kept stage to redo
            bundle = run_on_writer(
                lambda: _refresh_kept_stages(inputs, run.path, progress),
                f"update the kept stages (Shapley, explanations, patching) in {run.path}",
            )
            return load_bundle(run.path) if bundle is None else bundle
        mesh = all_devices_mesh()
        merged, patterns = _chunk_stage(run, inputs, state.done, mesh, progress)
        # Training is data-parallel over every process; the rest of the run (the layouts, the
        # clustering, the bundle) is computed once, by process 0, and the others read its bundle.
        models = train_pattern_models(config, patterns, inputs.settings, run.path, mesh, progress)

        def finish() -> ResultsBundle:
            head_sets = _head_sets_stage(inputs, merged, run.path, progress)
            bundle = build_bundle(
                config,
                merged,
                patterns,
                models,
                inputs.images,
                labels_given=inputs.labels is not None,
                partial_index=inputs.partial_index,
                attention_index=inputs.attention_index,
                settings=inputs.settings,
                progress=progress,
                meta=_meta(inputs),
                run=run,
                chunks=list(range(len(inputs.starts))),
            )
            if head_sets is not None:
                bundle.parts["head_sets"], bundle.meta["head_sets"] = head_sets
            for name, stage in _kept_stages(inputs, merged, run.path, progress).items():
                if stage is not None:
                    bundle.parts[name], bundle.meta[name] = stage
            save_bundle(bundle, run.path)
            # The run is complete: nothing reads the gathered patterns again (the chunks keep
            # them).
            for kind in patterns:
                run.pattern_path(kind).unlink(missing_ok=True)
            return bundle

        bundle = run_on_writer(finish, f"write the results bundle in {run.path}")
    return load_bundle(run.path) if bundle is None else bundle


def _check_inputs(
    config: ViTConfig,
    params: Any,
    images,
    *,
    labels,
    image_ids,
    class_names,
    label_matching,
    model_identity,
    settings: AnalysisSettings,
    patching_pairs=None,
) -> _Run:
    """The run's inputs checked, before anything is written, and its fingerprint."""
    from jaxvit_interp.importance.validate import check_images, check_labels, check_unpruned

    check_unpruned(config, "analyze")
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
    patching_pairs = check_pairs(config, patching_pairs, num_images)
    model_identity = model_identity or identify_model(config, params)
    digest, pixel_digest = image_digests(images, image_ids)
    fingerprint = run_fingerprint(
        model_identity={**model_identity, "config": config.to_dict()},
        image_digest=digest,
        settings=settings,
    )
    return _Run(
        config=config,
        params=params,
        images=images,
        labels=labels,
        image_ids=image_ids,
        class_names=class_names,
        label_matching=label_matching,
        model_identity=model_identity,
        settings=settings,
        fingerprint=fingerprint,
        record=run_record(config, model_identity, image_ids, pixel_digest, settings),
        patching_pairs=patching_pairs,
    )


def _chunk_stage(
    run: RunFolder, inputs: _Run, done: tuple[int, ...], mesh, progress
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every chunk computed (or read back, completed where an older run left it without a later
    analysis), written, and merged: ``(the per-image arrays over every image, each pattern kind
    gathered into its memory-mapped file)``; the kept attention stays in the chunk files for
    the bundle stage to copy."""
    config, params, settings = inputs.config, inputs.params, inputs.settings
    num_images, images, labels = inputs.num_images, inputs.images, inputs.labels
    partial_index, attention_index = inputs.partial_index, inputs.attention_index
    # Arrays that are not merged in memory: the patterns (gathered into files of their own for
    # the pattern stage) and the attention the bundle keeps in files of its own.
    pattern_keys = {CHUNK_KEYS["patterns"][kind]: kind for kind in pattern_kinds(config, settings)}
    streamed = {CHUNK_KEYS["attention"][name] for name in MAPPED_ARRAYS["attention"]}
    layouts: dict[str, tuple] = {}  # each pattern kind's shape and dtype over all images
    chunks = []
    bar = start_progress(progress, total=num_images, desc="analysing images", unit="img")
    for number, start in enumerate(inputs.starts):
        stop = min(start + settings.chunk_images, num_images)
        partial_local = local_indices(partial_index, start, stop)
        attention_local = local_indices(attention_index, start, stop)
        if number in done:
            arrays = load_npz(run.chunk_path(number))  # what process 0 found readable
            completed = complete_chunk(
                config, params, images[start:stop], arrays, attention_local, settings, mesh
            )
            if completed is not None:  # the chunk rewritten, as it would be written today
                arrays = completed
                run.write_chunk(number, arrays)
            bar.update(stop - start)
        else:
            work = chunk_work(config, stop - start, len(partial_local), len(settings.ablations) - 1)
            scale = (stop - start) / sum(work.values())
            arrays = compute_chunk(
                config,
                params,
                images[start:stop],
                None if labels is None else labels[start:stop],
                partial_local,
                attention_local,
                settings,
                mesh,
                {step: bar.share(cost * scale) for step, cost in work.items()},
                inputs.references(slice(start, stop)),
            )
            run.write_chunk(number, arrays)
        for key, kind in pattern_keys.items():
            layouts[kind] = ((num_images, *arrays[key].shape[1:]), arrays[key].dtype)
        chunks.append({k: v for k, v in arrays.items() if k not in streamed | set(pattern_keys)})
        del arrays
    bar.close()
    merged = {
        name: np.concatenate([c[name] for c in chunks if name in c])
        for name in set().union(*chunks)
    }
    del chunks
    # Process 0 gathers the patterns into files of the run folder; every process reads its
    # training sample from them.
    numbers = list(range(len(inputs.starts)))

    def gather() -> None:
        for key, kind in pattern_keys.items():
            shape, dtype = layouts[kind]
            run.gather(key, run.pattern_path(kind), shape, dtype, numbers, keep_existing=True)

    run_on_writer(gather, f"gather the patterns in {run.chunk_dir}")
    patterns = {kind: load_npy(run.pattern_path(kind)) for kind in layouts}
    return merged, patterns


def _meta(inputs: _Run) -> dict[str, Any]:
    """The bundle's meta: the model, the images, the labels and the settings of the run."""
    config, labels = inputs.config, inputs.labels
    return {
        "config": config.to_dict(),
        "checkpoint": inputs.model_identity,
        "image_ids": inputs.image_ids,
        "class_names": list(inputs.class_names),
        "labels_are_predictions": labels is None and bool(config.num_classes),
        "metrics": list(model_metrics(config.num_classes)),
        "special_tokens": list(special_token_names(config)),
        "attention_code": POWER,
        "label_matching": inputs.label_matching
        or {"source": "none" if labels is None else "array"},
        "pruning_modes": [m for m in PRUNING_MODES if config.has_cls_token or m not in CLS_MODES],
        "fingerprint": inputs.fingerprint,
        "settings": inputs.settings.to_dict(),
        # Where it ran: results agree across device counts to float32 rounding.
        "devices": {
            "platform": jax.default_backend(),
            "kind": jax.devices()[0].device_kind,
            "count": jax.device_count(),
        },
    }


def _head_sets_stage(inputs: _Run, merged, out: Path, progress):
    """The ``head_sets`` part and its meta (:mod:`jaxvit_interp.pipeline.head_sets`) on a
    seeded subset of the images, with the run's first ablation kind, or None when
    ``set_images`` is 0. Computed once, on the writing process, and kept in the run folder, so
    a resumed run reads it back."""
    from jaxvit_interp.importance import HeadImportance
    from jaxvit_interp.pipeline import head_sets

    config, params, images = inputs.config, inputs.params, inputs.images
    labels, settings = inputs.labels, inputs.settings

    # Interactions and pruning curves are measured in p(label), KL and accuracy: a backbone
    # without a classifier has none of them.
    if settings.set_images == 0 or not config.num_classes:
        return None
    index = subset(len(images), settings.set_images, settings.seed, HEAD_SETS_STREAM)
    importance = HeadImportance.from_part(
        merged,
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
    kind = settings.ablations[0]
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
            execution=run_execution(settings, None, progress),
            ablation=kind,
            reference=inputs.reference(kind, index),
            **options,
        ),
    )
    return part, head_sets.head_sets_meta(config, images=len(index), **options)


def _kept_stages(inputs: _Run, importance, out: Path, progress) -> dict[str, Any]:
    """Each kept stage's bundle part name -> its ``(part, meta)``, or None where the run has
    none. ``importance``: the first kind's per-image metrics (the merged chunks', or a
    bundle's importance part)."""
    from jaxvit_interp.pipeline import explain_stage, patching_stage, shapley_stage

    return {
        "shapley": shapley_stage.run_stage(inputs, importance, out, progress),
        "explanations": explain_stage.run_stage(inputs, out, progress),
        "patching": patching_stage.run_stage(inputs, out, progress),
    }


def _kept_keys(inputs: _Run) -> dict[str, Any]:
    """Each kept stage's key as the run asks for it, None where the run has none."""
    from jaxvit_interp.pipeline import explain_stage, patching_stage, shapley_stage

    return {
        "shapley": shapley_stage.stage_key(inputs),
        "explanations": explain_stage.stage_key(inputs),
        "patching": patching_stage.stage_key(inputs),
    }


def _refresh_kept_stages(inputs: _Run, out: Path, progress) -> ResultsBundle:
    """A complete run's bundle with the kept stages (Shapley, explanations, patching) as the
    run asks for them: as it is when it holds them already, else with them computed again (the
    Shapley stage from the bundle's single-ablation drops) or taken out, and the bundle
    rewritten."""
    bundle = load_bundle(out)
    keys = _kept_keys(inputs)
    if all(
        kept_stage.is_current(bundle.meta, name, name in bundle.parts, key)
        for name, key in keys.items()
    ):
        return bundle
    for name, stage in _kept_stages(inputs, bundle["importance"], out, progress).items():
        bundle.parts.pop(name, None)
        bundle.meta.pop(name, None)
        if stage is not None:
            bundle.parts[name], bundle.meta[name] = stage
        else:
            (out / f"{name}.npz").unlink(missing_ok=True)
    bundle.meta["settings"] = inputs.settings.to_dict()
    save_bundle(bundle, out)
    return bundle


def _preflight(config: ViTConfig, params, settings: AnalysisSettings, num_images: int) -> None:
    """Refuse, before anything is written, what would fail only later in the run."""
    from jaxvit_interp.importance.ablation_kinds import Ablation
    from jaxvit_interp.importance.engine import head_importance_plan
    from jaxvit_interp.patterns.train import MIN_PATTERNS

    if settings.pattern_kinds == ("cls",) and not config.has_cls_token:
        raise InputError("pattern_kinds=('cls',) needs a model with a CLS token")
    if "resample" in settings.ablations and num_images < 2:
        raise InputError(
            f"ablations={list(settings.ablations)}: a resample ablation puts each image's head "
            f"output from another analysed image in its place, and this run has {num_images} "
            "image; analyse two or more, or leave resample out"
        )
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
    execution = run_execution(settings, all_devices_mesh())
    for kind in settings.ablations:
        head_importance_plan(
            config,
            params,
            execution,
            num_images=num_images,
            with_taylor=kind == settings.ablations[0],
            ablation=Ablation(kind),
        )
