"""Ship a pruned model: choose heads to remove on a set of images, remove them physically, save
the smaller model and report what it costs and gains.

The heads go in pruning-curve order (:func:`~jaxvit_interp.importance.pruning_curves`): least
important first by mean ``prob_drop``, or greedily.  Either a fixed number of heads goes, or as
many as keep accuracy within ``max_accuracy_drop`` points of the full model's on these images.

A removed head contributes nothing, which is the zero ablation, so that is the only kind the
curves are measured with (:data:`PRUNE_ABLATIONS`).  A mean ablation would have to leave each
removed head's mean output behind, a ``[token, hidden]`` constant per layer that no checkpoint
format the model is saved in has a parameter for (and that would not fit another image size);
a resample ablation has no one output to leave.  Both are refused before any work.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import pruning_curves
from jaxvit_interp.importance.ablation_kinds import Ablation, as_ablation
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.prune import parameter_count, remove_heads
from jaxvit_interp.model.vit import forward

PRUNE_ORDERS = ("importance", "greedy")
# The ablation kinds a pruned model can carry: a removed head is a zeroed one.
PRUNE_ABLATIONS = ("zero",)


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What removing the heads did, measured on the given images.

    Attributes:
      removed: ``[(layer, head), ...]`` in the order removed.
      heads_per_layer: heads left in each block.
      accuracy_before, accuracy_after: top-1 accuracy on the images (against the labels, or
        agreement with the full model's predictions without labels).
      parameters_before, parameters_after: parameter counts.
      seconds_before, seconds_after: best wall time of one jitted forward pass over the images.
      max_abs_difference: largest difference between the pruned model's logits and the full
        model's with the removed heads masked (float32 rounding: the same model).
    """

    removed: list[tuple[int, int]]
    heads_per_layer: tuple[int, ...]
    accuracy_before: float
    accuracy_after: float
    parameters_before: int
    parameters_after: int
    seconds_before: float
    seconds_after: float
    max_abs_difference: float

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["removed"] = [list(h) for h in self.removed]
        d["heads_per_layer"] = list(self.heads_per_layer)
        return d


def choose_heads(
    config: ViTConfig,
    params: Any,
    images,
    labels,
    *,
    remove: int | None = None,
    max_accuracy_drop: float | None = None,
    order: str = "importance",
    ablation: str | Ablation = "zero",
    execution: Execution | None = None,
) -> list[tuple[int, int]]:
    """The heads to remove: the first ``remove`` of ``order``'s pruning curve, or as many as
    keep accuracy within ``max_accuracy_drop`` points (exactly one of the two); ``ablation``
    and ``execution`` (the memory budget the ablations plan their batches for, the devices,
    progress) as in :func:`~jaxvit_interp.importance.pruning_curves`; the ablation must be one
    of :data:`PRUNE_ABLATIONS` (see the module docstring)."""
    kind = as_ablation(ablation).kind
    if kind not in PRUNE_ABLATIONS:
        raise InputError(
            f"prune removes heads, which is ablation='zero'; ablation={kind!r} cannot be baked "
            "into the pruned model (a mean ablation would leave each removed head's mean output, "
            "a [token, hidden] constant per layer that its checkpoint has no parameter for, and a "
            "resample ablation leaves a different output on every image): prune can bake in "
            f"{', '.join(PRUNE_ABLATIONS)} only"
        )
    if (remove is None) == (max_accuracy_drop is None):
        raise InputError("give exactly one of remove (a head count) and max_accuracy_drop")
    if order not in PRUNE_ORDERS:
        raise InputError(f"order must be one of {', '.join(PRUNE_ORDERS)}, got {order!r}")
    total = config.num_layers * config.num_heads
    if remove is not None and not 0 < remove <= total:
        raise InputError(f"remove must be between 1 and the model's {total} heads, got {remove}")
    if max_accuracy_drop is not None and not max_accuracy_drop >= 0:
        raise InputError(f"max_accuracy_drop must be >= 0 points, got {max_accuracy_drop}")
    curve = pruning_curves(
        config,
        params,
        images,
        labels,
        orders=(order,),
        max_heads=remove,
        ablation=ablation,
        execution=execution,
    )[order]
    count = remove if remove is not None else curve.removable(max_accuracy_drop)
    return [tuple(int(v) for v in h) for h in curve.heads[0, :count]]


def _best_forward_seconds(config, params, images, repeats: int = 3) -> tuple[float, np.ndarray]:
    run = jax.jit(lambda p, x: forward(config, p, x).logits)
    x = jax.numpy.asarray(images)
    logits = np.asarray(run(params, x))  # compiles
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run(params, x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return float(best), logits


def prune_model(
    config: ViTConfig, params: Any, images, labels, heads
) -> tuple[ViTConfig, dict[str, Any], PruneReport]:
    """Remove ``heads`` and measure accuracy, parameters and forward time before and after."""
    images = np.asarray(images, np.float32)
    new_config, new_params = remove_heads(config, params, heads)
    seconds_before, logits = _best_forward_seconds(config, params, images)
    seconds_after, logits_after = _best_forward_seconds(new_config, new_params, images)
    mask = np.ones((config.num_layers, config.num_heads), np.float32)
    for layer, head in heads:
        mask[layer, head] = 0.0
    masked = np.asarray(
        jax.jit(lambda p, x: forward(config, p, x, head_mask=mask).logits)(params, images)
    )
    target = logits.argmax(-1) if labels is None else np.asarray(labels)
    report = PruneReport(
        removed=list(heads),
        heads_per_layer=new_config.heads_per_layer,
        accuracy_before=float((logits.argmax(-1) == target).mean()),
        accuracy_after=float((logits_after.argmax(-1) == target).mean()),
        parameters_before=parameter_count(params),
        parameters_after=parameter_count(new_params),
        seconds_before=seconds_before,
        seconds_after=seconds_after,
        max_abs_difference=float(np.abs(logits_after - masked).max()),
    )
    return new_config, new_params, report
