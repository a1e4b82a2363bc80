"""The last stage of ``analyze``: the results bundle from the merged per-image results, the
gathered patterns and the trained pattern models.

Each part is made by the analysis that owns it (:mod:`jaxvit_interp.pipeline.parts`, the part
functions of :data:`~jaxvit_interp.pipeline.analyses.PASS_ANALYSES`); the large arrays (the
images at the model's input resolution, the kept attention) go into the bundle's own files a
slice or a chunk at a time, so memory does not grow with the number of images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxvit_interp.bundle import ResultsBundle, mapped_path
from jaxvit_interp.data.preprocess import thumbnails
from jaxvit_interp.importance.layout import image_layout, layout_metric
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.multihost import is_writer
from jaxvit_interp.pipeline.analyses import PASS_ANALYSES
from jaxvit_interp.pipeline.parts import further_importance, importance_part, partial_part
from jaxvit_interp.pipeline.pattern_stage import pattern_stage_part
from jaxvit_interp.pipeline.run_folder import IMAGE_STEP, RunFolder
from jaxvit_interp.quantities import CHUNK_KEYS, MAPPED_ARRAYS
from jaxvit_interp.storage import atomic_npy, load_npy, page_releaser

__all__ = ["build_bundle", "stream_pixels", "thumbnails_of"]


def build_bundle(
    config: ViTConfig,
    merged: dict[str, np.ndarray],
    patterns: dict[str, np.ndarray],
    models: dict[str, Any],
    images,
    *,
    labels_given: bool,
    partial_index: np.ndarray,
    attention_index: np.ndarray,
    settings,
    progress,
    meta: dict[str, Any],
    run: RunFolder,
    chunks: list[int],
) -> ResultsBundle:
    """The results bundle: ``merged`` holds the chunks' arrays over every image (those kept in
    the bundle's own files aside), ``patterns`` each kind's gathered patterns; the pixels and the
    kept attention are streamed into the bundle's files in ``run`` from ``images`` and the
    chunk files ``chunks``."""
    classifier = bool(config.num_classes)
    keys = CHUNK_KEYS["importance"]
    unpruned = {
        "probs": merged[keys["probs"]],
        "predictions": merged[keys["predictions"]],
        "targets": merged[keys["targets"]],
    }
    parts: dict[str, dict[str, np.ndarray]] = {
        "images": {
            **(
                {
                    "labels": unpruned["targets"],
                    "predictions": unpruned["predictions"],
                    "probs": unpruned["probs"],
                }
                if classifier
                else {}
            ),
            "thumbnails": thumbnails_of(images, config, settings.thumbnail_size),
            "pixels": stream_pixels(images, config, run, IMAGE_STEP),
            # The overview places images by how their heads matter.
            "overview": image_layout(merged[layout_metric(config.num_classes)], settings.seed),
        },
        "importance": importance_part(
            merged,
            **unpruned,
            labels_are_predictions=not labels_given,
            num_classes=config.num_classes,
        ),
        "patterns": pattern_stage_part(config, patterns, models, settings, progress),
    }
    parts["importance"].update(
        further_importance(
            merged,
            kinds=settings.ablations[1:],
            num_classes=config.num_classes,
            **unpruned,
            labels_are_predictions=not labels_given,
        )
    )
    for analysis in PASS_ANALYSES:
        if analysis.bundle is not None:
            parts.setdefault(analysis.part, {}).update(analysis.bundle(config, merged))
    if len(partial_index):
        keys = CHUNK_KEYS["partial"]
        parts["partial"] = partial_part(
            partial_index,
            merged[keys["prob"]],
            merged[keys["top5_classes"]],
            merged[keys["top5_probs"]],
        )
    if len(attention_index):
        parts["attention"] = {
            "image_index": attention_index.astype(np.int32),
            **stream_attention(run, chunks, config, len(attention_index)),
            **attention_errors(merged),
        }
    return ResultsBundle(meta=meta, parts=parts)


def attention_errors(merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each kept matrix's absolute and relative error (from the chunks), and each head's worst
    over the images."""
    keys = CHUNK_KEYS["attention"]
    errors = {name: merged[keys[name]] for name in ("error", "relative_error")}
    return {**errors, **{f"{name}_max": value.max(axis=0) for name, value in errors.items()}}


def thumbnails_of(images, config: ViTConfig, side: int, step: int | None = None) -> np.ndarray:
    """:func:`~jaxvit_interp.data.preprocess.thumbnails` of every image, made a slice at a time
    (each slice's float intermediate is the size of the slice's images)."""
    step = step or IMAGE_STEP
    return np.concatenate(
        [thumbnails(images[at : at + step], config, side) for at in range(0, len(images), step)]
    )


def stream_pixels(images, config: ViTConfig, run: RunFolder, step: int) -> np.ndarray:
    """Each image at the model's input resolution, written to the bundle a slice at a time."""
    side = max(config.image_size)
    if not is_writer():  # the writing process's bundle holds them
        return thumbnails_of(images, config, side, step)
    path = mapped_path(run.path, "images", "pixels")
    shape = thumbnails(images[:1], config, side).shape[1:]
    with atomic_npy(path, (len(images), *shape), np.uint8) as pixels:
        release = page_releaser(pixels)
        for start in range(0, len(images), step):
            pixels[start : start + step] = thumbnails(images[start : start + step], config, side)
            release()
    return load_npy(path)


def stream_attention(
    run: RunFolder, chunks: list[int], config: ViTConfig, count: int
) -> dict[str, np.ndarray]:
    """The bundle's attention codes, steps, exponents and special columns, copied from the
    chunk files one chunk at a time (a large set's would not fit in memory), memory-mapped from
    the bundle's files."""
    L, H, N, X = config.num_layers, config.num_heads, config.num_tokens, config.num_prefix_tokens
    layouts = {
        "codes": ((count, L, H, N, N), np.uint8),
        "steps": ((count, L, H, N), np.float32),
        "exponents": ((count, L, H, N), np.uint8),
        "special": ((count, L, H, N, X), np.float16),
    }
    if not is_writer():  # the writing process's bundle holds them
        return {}
    keys = CHUNK_KEYS["attention"]
    return {
        name: run.gather(keys[name], mapped_path(run.path, "attention", name), shape, dtype, chunks)
        for name, (shape, dtype) in layouts.items()
        if name in MAPPED_ARRAYS["attention"]
    }
