"""The analysis's explanations stage: what each image's label rests on, and how faithful each
picture of it is.

On a seeded subset of ``explain_images`` of the analysed images (:mod:`.subsets`),
:func:`~jaxvit_interp.explain.explain` maps every image with the default methods
(:data:`~jaxvit_interp.explain.DEFAULT_METHODS`), and with ``attention_flow`` too where the model
has at most :data:`ATTENTION_FLOW_MAX_TOKENS` tokens: flow runs max-flows on the host, a
fraction of a second an image at 65 tokens but tens of seconds at ViT-B/16's 197. Every
method's maps then get their deletion and insertion curves (:mod:`jaxvit_interp.explain.faithfulness`),
beside those of a seeded random patch order, and every head's attention map gets its own
(:func:`~jaxvit_interp.explain.head_faithfulness`). Each curve follows the run's label of the
image, or the model's prediction in a run without labels; ``explain_baseline`` replaces the
patches of the curves and of occlusion, and starts integrated gradients' path.

The result is the bundle's ``explanations`` part (:data:`jaxvit_interp.quantities.SCHEMA`), kept
in the run folder as :data:`EXPLAIN_FILE` with the settings it was computed with
(:mod:`.kept_stage`): a resumed run reads it back, and a run asked for other explanation
settings (:data:`~.settings.EXPLAIN_SETTINGS`) computes this stage again and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.execution import Execution
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.pipeline import kept_stage
from jaxvit_interp.pipeline.settings import EXPLAIN_SETTINGS, AnalysisSettings
from jaxvit_interp.pipeline.subsets import EXPLAIN_STREAM, subset
from jaxvit_interp.progress import start_progress

EXPLAIN_FILE = "explain-stage.npz"
# The most tokens a model may have for the stage to add attention flow to its methods.
ATTENTION_FLOW_MAX_TOKENS = 65


def stage_settings(settings: AnalysisSettings) -> dict[str, Any]:
    """The settings the stage's result depends on and the fingerprint leaves out: its key."""
    return {name: getattr(settings, name) for name in EXPLAIN_SETTINGS}


def stage_methods(config: ViTConfig) -> tuple[str, ...]:
    """The methods the stage maps with, in :data:`~jaxvit_interp.explain.METHODS` order: the
    defaults, and attention flow for a model of at most :data:`ATTENTION_FLOW_MAX_TOKENS`
    tokens."""
    from jaxvit_interp.explain import DEFAULT_METHODS, METHODS

    with_flow = config.num_tokens <= ATTENTION_FLOW_MAX_TOKENS
    return tuple(
        name
        for name in METHODS
        if name in DEFAULT_METHODS or (name == "attention_flow" and with_flow)
    )


def compute_explanations(
    config: ViTConfig,
    params: Any,
    images,
    labels: np.ndarray | None,
    image_index: np.ndarray,
    *,
    steps: int,
    baseline: str,
    seed: int,
    execution: Execution,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ``explanations`` part and what the bundle's meta says of it, for the images
    ``image_index`` of ``images``.

    Args:
      config, params: a classifier.
      images: every analysed image; ``labels``: theirs, or None to follow the predictions.
      steps: the points of each curve after its start.
      baseline: a :data:`~jaxvit_interp.explain.BASELINE_KINDS` name: what the curves and
        occlusion put in a patch's place and where integrated gradients' path starts.
      seed: the seed of the random patch orders the curves are read against.
      execution: how the passes run; its progress gets one stage, "explaining images".
    """
    from jaxvit_interp.explain import explain, head_faithfulness
    from jaxvit_interp.explain.faithfulness import (
        MODES,
        check_curve_options,
        curve_area,
        curves_over_images,
    )

    index = np.asarray(image_index)
    chosen = np.asarray(images[index], np.float32)
    methods = stage_methods(config)
    # A backbone, a bad baseline or step count refused before any pass (the settings check
    # them too; a caller of this function may not have).
    steps = check_curve_options(config, MODES[0], steps, baseline, "the explanations stage")
    heads = config.num_layers * config.num_heads
    # The bar's steps: a map's curves per mode, and one for each method's maps (whose costs
    # differ by method: the bar is a guide, not a clock).
    shares = {
        "maps": len(methods),
        **{mode: len(methods) + 1 for mode in MODES},
        **{f"head {mode}": heads + 1 for mode in MODES},
    }
    bar = start_progress(
        execution.progress, total=sum(shares.values()), desc="explaining images", unit="map"
    )
    explained = explain(
        config,
        params,
        chosen,
        None if labels is None else np.asarray(labels)[index],
        methods=methods,
        execution=execution.with_progress(bar.share(shares["maps"])),
        ig_baseline=baseline,
        occlusion_baseline=baseline,
    )
    followed = explained.labels
    # Curves from the float32 maps: the part's float16 copies could tie patches these rank.
    maps = np.stack([explained.maps[name] for name in methods], axis=1)  # [E, method, Gh, Gw]
    curves, random_curves, head_area = [], [], []
    for mode in MODES:
        method_curves, random, _ = curves_over_images(
            config,
            params,
            chosen,
            followed,
            maps.reshape(*maps.shape[:2], -1),
            mode=mode,
            steps=steps,
            baseline=baseline,
            execution=execution.with_progress(bar.share(shares[mode])),
            random_seed=seed,
            desc=f"{mode} curves",
        )
        curves.append(method_curves)
        random_curves.append(random)
        head_area.append(
            head_faithfulness(
                config,
                params,
                chosen,
                followed,
                mode=mode,
                steps=steps,
                baseline=baseline,
                execution=execution.with_progress(bar.share(shares[f"head {mode}"])),
                random_seed=seed,
            ).area
        )
    bar.close()
    curves = np.stack(curves, axis=2)  # [E, method, mode, steps + 1]
    random_curves = np.stack(random_curves, axis=1)  # [E, mode, steps + 1]
    head_area = np.stack(head_area, axis=-1)  # [E, layer, head, mode]
    part = {
        "image_index": index.astype(np.int32),
        "labels": np.asarray(followed, np.int32),
        "maps": maps.astype(np.float16),
        "curves": curves.astype(np.float32),
        "area": curve_area(curves),
        "random_curves": random_curves.astype(np.float32),
        "random_area": curve_area(random_curves),
        "head_area": head_area.astype(np.float32),
        "head_area_mean": head_area.mean(axis=0, dtype=np.float64).astype(np.float32),
    }
    meta = {
        "images": len(index),
        "methods": list(methods),
        "modes": list(MODES),
        "baseline": baseline,
        "steps": steps,
        "random_seed": seed,
        "labels_are_predictions": labels is None,
    }
    return part, meta


def wanted(inputs) -> bool:
    """Whether the run has an explanations stage: asked for, and a classifier (the maps and
    curves follow a label). ``inputs``: the run's checked inputs (``analyze``'s)."""
    return inputs.settings.explain_images > 0 and bool(inputs.config.num_classes)


def stage_key(inputs) -> dict[str, Any] | None:
    """The stage's key as the run asks for it (its settings), None where it has none."""
    return stage_settings(inputs.settings) if wanted(inputs) else None


def run_stage(inputs, out: Path, progress) -> tuple[dict, dict] | None:
    """The ``explanations`` part and its meta on the run's seeded subset of the images, or None
    where the run has no explanations stage (:func:`wanted`). Computed once, on the writing
    process, and kept in the run folder with its settings, so a resumed run reads it back and a
    run with other explanation settings computes it again.

    Args:
      inputs: the run's checked inputs (``analyze``'s): model, images, labels and settings.
      out: the run folder.
      progress: as ``analyze`` takes it.
    """
    from jaxvit_interp.pipeline.chunk import run_execution

    if not wanted(inputs):
        return None
    settings, images = inputs.settings, inputs.images
    index = subset(len(images), settings.explain_images, settings.seed, EXPLAIN_STREAM)
    return kept_stage.load_or_compute(
        out / EXPLAIN_FILE,
        stage_settings(settings),
        lambda: compute_explanations(
            inputs.config,
            inputs.params,
            images,
            inputs.labels,
            index,
            steps=settings.explain_steps,
            baseline=settings.explain_baseline,
            seed=settings.seed,
            execution=run_execution(settings, None, progress),
        ),
    )
