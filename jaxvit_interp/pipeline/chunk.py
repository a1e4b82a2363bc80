"""The chunk stage of ``analyze``: one chunk of images through every per-image analysis.

A chunk's images go through the ablation engine (head importance under each ablation kind of the
settings' ``ablations``, the first's unpruned pass included), through one attention pass
carrying every reducer of :data:`~jaxvit_interp.pipeline.analyses.PASS_ANALYSES` (hop strength,
special-token mass, patterns, rollout, the kept attention), through the direct logit attribution
of each head (a classifier with a linear readout), and the subset chosen for it through partial
pruning. What comes out is one dict of chunk arrays (keys of
:data:`~jaxvit_interp.quantities.CHUNK_KEYS`), which the run folder writes as the chunk's file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxvit_interp.attention_pass import run_pass
from jaxvit_interp.execution import Execution
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.pipeline.analyses import PASS_ANALYSES, PassAnalysis
from jaxvit_interp.progress import ProgressArg, start_progress
from jaxvit_interp.quantities import (
    CHUNK_KEYS,
    DIRECT,
    KIND_METRICS,
    ablation_array,
    model_metrics,
)

__all__ = ["chunk_work", "complete_chunk", "compute_chunk", "run_execution"]


def chunk_work(
    config: ViTConfig, images: int, partial: int, further_kinds: int = 0
) -> dict[str, float]:
    """What each step of a chunk of ``images`` costs (``partial`` of them get partial pruning,
    each of ``further_kinds`` ablation kinds besides the first is swept too), roughly, in
    forward passes of one image: the progress report spreads the chunk's images over its steps
    by these, so that it moves through a chunk at about the pace of the work (the ablations are
    most of it)."""
    from jaxvit_interp.importance.validate import check_modes

    # Every head of a layer ablated, each rerunning the layers from its own up: (L + 1) / 2
    # forward passes a head on average.
    ablations = config.num_heads * (config.num_layers + 1) / 2
    pruned_modes = len(check_modes(config, None)) - 1  # "none" costs nothing
    return {
        "importance": images * (3 + ablations),  # the unpruned pass, Taylor's backward pass
        # Each kind's unpruned pass and its reference's clean pass, then the sweep.
        "kinds": further_kinds * images * (2 + ablations),
        "pass": images * 2,  # one forward pass, the reductions and the encoding of attention
        "direct": images * 2,  # one forward pass and the terms
        "partial": partial * (1 + pruned_modes * ablations),
    }


def run_execution(settings, mesh, progress: ProgressArg = False) -> Execution:
    """How a run's analyses run: the settings' batch size and memory budget over ``mesh``'s
    devices."""
    return Execution(settings.batch_size, settings.memory_budget_bytes, mesh, progress)


def _pass_arrays(
    config: ViTConfig,
    params: Any,
    images,
    analyses: list[tuple[PassAnalysis, Any]],
    execution: Execution,
) -> dict[str, np.ndarray]:
    """The chunk arrays of ``analyses`` (each with its reducer) from one attention pass."""
    if not analyses:
        report = start_progress(execution.progress, total=1, desc="attention pass")
        report.update(1)
        report.close()
        return {}
    batcher = execution.pass_batcher(config, params, len(images))
    outputs = run_pass(
        config,
        batcher.replicate(params),
        images,
        [reducer for _, reducer in analyses],
        batcher=batcher,
        progress=execution.progress,
    )
    arrays = {}
    for analysis, reducer in analyses:
        arrays.update(analysis.chunk_arrays(outputs[reducer.name]))
    return arrays


def _reducers(config: ViTConfig, settings, keep: np.ndarray, wanted) -> list:
    """``(analysis, reducer)`` of the analyses in ``wanted`` that apply to this model and chunk."""
    chosen = []
    for analysis in PASS_ANALYSES:
        if analysis in wanted:
            reducer = analysis.reducer(config, settings, keep)
            if reducer is not None:
                chosen.append((analysis, reducer))
    return chosen


def _direct_arrays(
    config: ViTConfig, params: Any, images, targets: np.ndarray, execution: Execution
) -> dict[str, np.ndarray]:
    """The chunk's direct logit attribution ``[image, layer, head]`` for the class each metric
    refers to (``targets``), without its ablation sweep; none for a model it does not take (a
    backbone, a readout that is not linear after the final norm)."""
    from jaxvit_interp.importance.direct import direct_logit_attribution, has_linear_readout

    if not has_linear_readout(config):
        report = start_progress(execution.progress, total=1, desc="direct logit attribution")
        report.update(1)
        report.close()
        return {}
    direct = direct_logit_attribution(
        config, params, images, targets, ablation=None, execution=execution
    )
    return {CHUNK_KEYS["importance"][DIRECT]: direct.direct.astype(np.float32)}


def compute_chunk(
    config: ViTConfig,
    params: Any,
    images,
    labels,
    partial_local: np.ndarray,
    attention_local: np.ndarray,
    settings,
    mesh,
    shares: dict[str, ProgressArg],
    references: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Every per-image result of one chunk of ``images``: chunk arrays by
    :data:`~jaxvit_interp.quantities.CHUNK_KEYS`.

    Args:
      labels: the chunk's labels, or None to measure against the predictions.
      partial_local, attention_local: the chunk's images (indices in the chunk) that get partial
        pruning, and whose attention is kept.
      shares: each step's share of the run's progress, by :func:`chunk_work`'s names.
      references: each ablation kind of ``settings.ablations`` -> the reference images of its
        replacement for this chunk (as :func:`~jaxvit_interp.importance.head_importance` takes
        them: None for zero); None: zero only.
    """
    from jaxvit_interp.importance import head_importance, partial_pruning

    references = references or {"zero": None}
    execution = run_execution(settings, mesh)
    metrics = model_metrics(config.num_classes)
    first, *further = settings.ablations
    importance = head_importance(
        config,
        params,
        images,
        labels,
        metrics=metrics,
        ablation=first,
        reference=references[first],
        execution=execution.with_progress(shares["importance"]),
    )
    keys = CHUNK_KEYS["importance"]
    arrays = {keys[m]: np.asarray(importance[m], np.float32) for m in metrics}
    # A backbone's are [image, 0] and -1 (no classes); its bundle leaves them out.
    arrays[keys["probs"]] = importance.probs.astype(np.float32)
    arrays[keys["predictions"]] = importance.predictions.astype(np.int32)
    arrays[keys["targets"]] = importance.labels.astype(np.int32)
    kind_metrics = tuple(m for m in metrics if m in KIND_METRICS)
    kinds = start_progress(shares.get("kinds", False), total=max(1, len(further)), desc="kinds")
    for kind in further:
        other = head_importance(
            config,
            params,
            images,
            labels,
            metrics=kind_metrics,
            ablation=kind,
            reference=references[kind],
            execution=execution.with_progress(kinds.share(1)),
        )
        for m in kind_metrics:
            arrays[keys[ablation_array(m, kind)]] = np.asarray(other[m], np.float32)
    kinds.close()
    analyses = _reducers(config, settings, attention_local, PASS_ANALYSES)
    pass_execution = execution.with_progress(shares["pass"])
    arrays.update(_pass_arrays(config, params, images, analyses, pass_execution))
    direct_execution = execution.with_progress(shares.get("direct", False))
    arrays.update(_direct_arrays(config, params, images, importance.labels, direct_execution))
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
        keys = CHUNK_KEYS["partial"]
        arrays[keys["prob"]] = grid(partial.prob).astype(np.float32)
        arrays[keys["top5_classes"]] = grid(partial.top_classes).astype(np.int32)
        arrays[keys["top5_probs"]] = grid(partial.top_probs).astype(np.float32)
    return arrays


def complete_chunk(
    config: ViTConfig,
    params: Any,
    images,
    arrays: dict[str, np.ndarray],
    attention_local: np.ndarray,
    settings,
    mesh,
) -> dict[str, np.ndarray] | None:
    """A chunk written by an older run, completed: the analyses it lacks (its marker key
    missing: added since, or the kept attention in linear codes) computed in one attention
    pass, and the direct logit attribution it lacks (added since) for the class its metrics
    refer to. None when it lacks nothing."""
    from jaxvit_interp.importance.direct import has_linear_readout

    missing = [a for a in PASS_ANALYSES if a.marker is not None and a.marker not in arrays]
    analyses = _reducers(config, settings, attention_local, missing)
    direct_key = CHUNK_KEYS["importance"][DIRECT]
    lacks_direct = direct_key not in arrays and has_linear_readout(config)
    if not analyses and not lacks_direct:
        return None
    replaced = {key for analysis, _ in analyses for key in CHUNK_KEYS[analysis.name].values()}
    kept = {k: v for k, v in arrays.items() if k not in replaced}
    execution = run_execution(settings, mesh)
    completed = {**kept, **_pass_arrays(config, params, images, analyses, execution)}
    if lacks_direct:
        targets = arrays[CHUNK_KEYS["importance"]["targets"]]
        completed.update(_direct_arrays(config, params, images, targets, execution))
    return completed
