"""Explanation maps of many images: one map over the patch grid per image and method.

:func:`explain` checks everything first, then runs each method over the images batch by batch
(:class:`~jaxvit_interp.execution.Execution` plans the batches from an estimate of each method's
bytes per image; :class:`~jaxvit_interp.parallel.Batcher` cuts, pads, shards and gathers them).
The methods are the registry :data:`METHODS`; the kernels are in :mod:`.gradients` and
:mod:`.occlusion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.attention_pass import reduce_over_images
from jaxvit_interp.budget import default_step_tokens, full_pass_bytes
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution, check_positive
from jaxvit_interp.explain.baselines import check_baseline
from jaxvit_interp.explain.faithfulness import check_classifier_for
from jaxvit_interp.explain.flow import attention_flow
from jaxvit_interp.explain.gradients import (
    grad_rollout_batch,
    gradcam_batch,
    integrated_gradients_batch,
)
from jaxvit_interp.explain.heads import head_attention_maps
from jaxvit_interp.explain.occlusion import occlusion_batch
from jaxvit_interp.importance.validate import check_images, check_labels, check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.progress import Share
from jaxvit_interp.rollout.measure import FinalRolloutReducer
from jaxvit_interp.summary import Summarized, number, sizes

__all__ = ["DEFAULT_METHODS", "METHODS", "Explanation", "explain"]

_F32 = 4  # bytes
# Integrated gradients' default Riemann steps: a completeness gap of a few percent of the logit
# change on the shipped models.
DEFAULT_IG_STEPS = 32


@dataclasses.dataclass(frozen=True)
class _Run:
    """What one call asks of every method: the checked inputs and options."""

    config: ViTConfig
    params: Any
    images: np.ndarray
    labels: np.ndarray | None
    execution: Execution
    ig_steps: int
    ig_baseline: str | np.ndarray
    occlusion_baseline: str | np.ndarray
    # Outputs of passes that several methods read (every head's attention maps), by name: each
    # is computed by the first method that reads it and reused by the rest (see shared_pass).
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)

    def shared_pass(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``name`` is asked for in this call, its result after."""
        if name not in self.shared:
            self.shared[name] = compute()
        return self.shared[name]


@dataclasses.dataclass(frozen=True)
class Method:
    """One explanation method.

    Attributes:
      compute: ``compute(run) -> (maps [image, Gh, Gw], extras {name: [image]})``.
      needs_label: it explains the label's logit or probability (refused on a backbone).
      summary: one line for :class:`Explanation`'s repr.
      pass_name: the name of the pass it reads through :meth:`_Run.shared_pass`, when methods
        share one (every ``head:L.H`` reads the one of all heads); None: a pass of its own.
    """

    compute: Callable[[_Run], tuple[np.ndarray, dict[str, np.ndarray]]]
    needs_label: bool
    summary: str
    pass_name: str | None = None


def _gradient_bytes(config: ViTConfig) -> int:
    """Bytes per image of a forward and backward pass (reverse mode keeps every block's
    activations) and the ``[layer, head, N, N]`` gradient of the attention keep factors and its
    rollout beside it: 1.1x (ViT-S/16) to 1.5x (digits) what XLA allocates for
    :func:`~jaxvit_interp.explain.gradients.grad_rollout_batch`."""
    n = config.num_tokens
    return full_pass_bytes(config, with_taylor=True) + 2 * _F32 * config.num_layers * (
        config.num_heads * n * n
    )


def _batched(
    run: _Run, kernel, image_bytes: int, *per_image, desc: str, step_images=None, **static
):
    """``kernel(config, params, images, *per_image batches, **static)`` over every batch of the
    images; ``step_images``: the most images a batch should hold for speed, unless the
    execution names a batch size."""
    execution = run.execution
    batcher = execution.pass_batcher(run.config, run.params, len(run.images), image_bytes)
    if step_images is not None and execution.batch_size is None:
        batcher = execution.batcher(min(batcher.batch_size, step_images * execution.num_devices))
    params = batcher.replicate(run.params)
    return batcher.map(
        lambda *batch: kernel(run.config, params, *batch, **static),
        run.images,
        *per_image,
        progress=execution.progress,
        desc=desc,
    )


def _baseline_options(baseline) -> tuple[tuple, dict]:
    """A kernel's baseline arguments: the given images as a per-image array, or a kind's name
    (computed from each batch's images inside the compiled program)."""
    if isinstance(baseline, str):
        return (), {"baseline": baseline}
    return (baseline,), {}


def _rollout(run: _Run):
    out = reduce_over_images(
        run.config, run.params, run.images, FinalRolloutReducer(), run.execution, desc="rollout"
    )
    return out["map"], {}


def _grad_rollout(run: _Run):
    maps = _batched(
        run, grad_rollout_batch, _gradient_bytes(run.config), run.labels, desc="grad_rollout"
    )
    return maps, {}


def _gradcam(run: _Run):
    # A forward pass and the last block's backward, which its kept outputs cover: 2.1x (ViT-S/16)
    # to 2.3x (digits) what XLA allocates.
    image_bytes = full_pass_bytes(run.config, with_taylor=False)
    maps = _batched(run, gradcam_batch, image_bytes, run.labels, desc="gradcam")
    return maps, {}


def _integrated_gradients(run: _Run):
    given, kind = _baseline_options(run.ig_baseline)
    # One step's gradient pass, plus the images, baselines, path and summed gradients: 1.3x
    # (ViT-S/16) to 1.6x (digits) what XLA allocates.
    image_bytes = full_pass_bytes(run.config, with_taylor=True) + 4 * run.images[0].nbytes
    maps, gap = _batched(
        run,
        integrated_gradients_batch,
        image_bytes,
        run.labels,
        *given,
        desc="integrated_gradients",
        steps=run.ig_steps,
        **kind,
    )
    return maps, {"integrated_gradients_gap": gap}


def _occlusion(run: _Run):
    given, kind = _baseline_options(run.occlusion_baseline)
    # Every occluded copy is a forward pass (its attention, which XLA drops, counted too).
    copies, n = run.config.num_patches + 1, run.config.num_tokens
    image_bytes = copies * (full_pass_bytes(run.config, with_taylor=False) + run.images[0].nbytes)
    # On a CPU a step of a few thousand tokens is fastest (default_step_tokens): 32 digits'
    # occluded copies at once ran 3x slower than one image's at a time.
    step_tokens = default_step_tokens()
    step_images = None if step_tokens is None else max(1, step_tokens // (copies * n))
    maps = _batched(
        run,
        occlusion_batch,
        image_bytes,
        run.labels,
        *given,
        desc="occlusion",
        step_images=step_images,
        **kind,
    )
    return maps, {}


def _attention_flow(run: _Run):
    return attention_flow(run.config, run.params, run.images, execution=run.execution), {}


# Every head's maps [image, layer, head, Gh, Gw] come from one attention pass: the head:L.H
# methods of a call share it.
_HEAD_MAPS_PASS = "head attention maps"


def _head_method(config: ViTConfig, name: str) -> Method:
    """``head:L.H``: head ``H`` of layer ``L``'s own attention, its read row over the patches
    (:func:`~jaxvit_interp.explain.heads.head_attention_maps`)."""
    spec = name[len(HEAD_METHOD_PREFIX) :]
    layer, _, head = spec.partition(".")
    if not (layer.isdigit() and head.isdigit()):
        raise InputError(
            f"explanation method {name!r} does not name a head; write head:LAYER.HEAD, e.g. "
            "head:0.1 (layers and heads counted from 0)"
        )
    layer, head = int(layer), int(head)
    if layer >= config.num_layers or head >= config.num_heads:
        raise InputError(
            f"explanation method {name!r} names head {layer}.{head}, outside the model's "
            f"{config.num_layers} layers x {config.num_heads} heads"
        )

    def compute(run: _Run):
        maps = run.shared_pass(
            _HEAD_MAPS_PASS,
            lambda: head_attention_maps(
                run.config, run.params, run.images, execution=run.execution
            ),
        )
        return maps[:, layer, head], {}

    summary = f"head {layer}.{head}'s own attention, its read row"
    return Method(compute, False, summary, pass_name=_HEAD_MAPS_PASS)


# The methods by name, in the order results list them. A head's own attention map ("head:L.H")
# is parsed by HEAD_METHOD_PREFIX's entry of PREFIXED_METHODS.
METHODS: dict[str, Method] = {
    "rollout": Method(_rollout, False, "attention rollout, the read row after the last layer"),
    "attention_flow": Method(
        _attention_flow, False, "Abnar & Zuidema's attention flow (max-flow, on the host)"
    ),
    "grad_rollout": Method(_grad_rollout, True, "Chefer et al.'s gradient-weighted rollout"),
    "gradcam": Method(_gradcam, True, "Grad-CAM on the tokens entering the last block"),
    "integrated_gradients": Method(
        _integrated_gradients, True, "integrated gradients summed per patch"
    ),
    "occlusion": Method(_occlusion, True, "p(label) drop with the patch replaced"),
}
HEAD_METHOD_PREFIX = "head:"
# Methods named by a prefix and a parameter ("head:3.1"): prefix -> (config, name) -> Method.
PREFIXED_METHODS: dict[str, Callable[[ViTConfig, str], Method]] = {HEAD_METHOD_PREFIX: _head_method}
# Attention flow is exact but slow past small models (seconds an image at 65 tokens x 12 layers,
# half a minute at ViT-B/16's size, benchmarks/RESULTS.md): asked for by name only.
DEFAULT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m != "attention_flow")


def _resolve_methods(config: ViTConfig, methods) -> dict[str, Method]:
    """The asked methods by name, duplicates dropped, in the order asked."""
    if isinstance(methods, str):
        methods = (methods,)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InputError("methods is empty; ask for at least one of " + ", ".join(METHODS))
    resolved = {}
    for name in methods:
        prefix = next((p for p in PREFIXED_METHODS if str(name).startswith(p)), None)
        if name in METHODS:
            resolved[name] = METHODS[name]
        elif prefix is not None:
            resolved[name] = PREFIXED_METHODS[prefix](config, name)
        else:
            known = [*METHODS, *(f"{p}..." for p in PREFIXED_METHODS)]
            raise InputError(
                f"unknown explanation method {name!r}; the known ones are {', '.join(known)}"
            )
    return resolved


@dataclasses.dataclass(frozen=True, repr=False)
class Explanation(Summarized):
    """Maps over the patch grid of every image, one per method.

    Attributes:
      maps: ``{method: [image, Gh, Gw] float32}`` in the order the methods were asked.
      labels: ``[image]`` the classes explained (given, or the model's predictions), or None when
        no method reads a label (a backbone's rollout).
      integrated_gradients_gap: ``[image]`` the attributions' sum minus ``y(x) - y(x0)``: what
        the Riemann sum misses (more steps shrink it), or None without integrated gradients.
    """

    maps: dict[str, np.ndarray]
    labels: np.ndarray | None
    integrated_gradients_gap: np.ndarray | None = None

    def _summary(self):
        first = next(iter(self.maps.values()))
        images, height, width = first.shape
        rows = []
        for name, maps in self.maps.items():
            peak = np.unravel_index(np.argmax(maps.mean(axis=0)), (height, width))
            rows.append((name, f"mean map peaks at patch (row {peak[0]}, col {peak[1]})"))
        if self.integrated_gradients_gap is not None:
            gap = np.abs(self.integrated_gradients_gap).mean()
            rows.append(("integrated_gradients_gap", f"mean |gap| {number(gap)} (logit units)"))
        return sizes(images=images, rows=height, columns=width), rows


@dataclasses.dataclass(frozen=True)
class _PredictionReducer:
    """The model's predicted class ``[batch]``, as a reducer of the attention pass."""

    name: str = "prediction"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        return {"label": jnp.argmax(out.logits, axis=-1).astype(jnp.int32)}


def _progress_part(execution: Execution, parts: int) -> Execution:
    """``execution`` reporting one of ``parts`` equal passes: a caller's :class:`Share` is cut
    into as many shares, so that the passes together move it by its size once."""
    progress = execution.progress
    if not isinstance(progress, Share):
        return execution
    return execution.with_progress(Share(progress.parent, progress.steps / parts))


def explain(
    config: ViTConfig,
    params: Any,
    images,
    labels=None,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    execution: Execution | None = None,
    ig_steps: int = DEFAULT_IG_STEPS,
    ig_baseline="zero",
    occlusion_baseline="zero",
) -> Explanation:
    """Maps ``[image, Gh, Gw]`` of what each method says each image's label rests on.

    Args:
      config, params: the model (a classifier for every method but ``rollout``: a backbone
        takes a linear probe first, :mod:`jaxvit_interp.model.probe`).
      images: ``[image, height, width, channels]`` preprocessed.
      labels: ``[image]`` the class to explain per image; None: the model's prediction.
      methods: names from :data:`METHODS`: ``rollout``, ``attention_flow``, ``grad_rollout``,
        ``gradcam``, ``integrated_gradients``, ``occlusion``, or ``head:L.H`` (head ``H`` of
        layer ``L``'s own attention); see :mod:`jaxvit_interp.explain`. Default: all but
        ``attention_flow`` (exact, but slow past small models) and the heads.
      execution: batch size, memory budget, devices and progress
        (:class:`~jaxvit_interp.execution.Execution`; None: the defaults).
      ig_steps: integrated gradients' Riemann midpoints along the path.
      ig_baseline, occlusion_baseline: ``"zero"``, ``"mean"``, ``"blur"`` or images
        (:mod:`jaxvit_interp.explain.baselines`): integrated gradients' path start, and what
        replaces an occluded patch.

    Returns:
      :class:`Explanation`.
    """
    check_unpruned(config, "explain")
    resolved = _resolve_methods(config, methods)
    needs_label = [name for name, m in resolved.items() if m.needs_label]
    if needs_label or labels is not None:
        what = f"methods {', '.join(needs_label)} explain" if needs_label else "labels name"
        label_free = [n for n, m in METHODS.items() if not m.needs_label]
        label_free.append(f"{HEAD_METHOD_PREFIX}L.H")
        check_classifier_for(
            config,
            f"explain: {what}",
            otherwise=f", or ask only for methods that read no label ({', '.join(label_free)})",
        )
    images = check_images(config, images)
    labels = check_labels(config, labels, len(images))
    run = _Run(
        config=config,
        params=params,
        images=images,
        labels=labels,
        execution=as_execution(execution),
        ig_steps=check_positive("ig_steps", ig_steps),
        ig_baseline=check_baseline(config, ig_baseline, len(images), "ig_baseline"),
        occlusion_baseline=check_baseline(
            config, occlusion_baseline, len(images), "occlusion_baseline"
        ),
    )
    predict = bool(needs_label) and labels is None
    passes = {method.pass_name or name for name, method in resolved.items()}
    execution = _progress_part(run.execution, len(passes) + predict)
    run = dataclasses.replace(run, execution=execution)
    if predict:
        predicted = reduce_over_images(
            config, params, images, _PredictionReducer(), execution, desc="predictions"
        )
        run = dataclasses.replace(run, labels=predicted["label"])
    maps, extras = {}, {}
    for name, method in resolved.items():
        maps[name], more = method.compute(run)
        maps[name] = np.asarray(maps[name], np.float32)
        extras.update(more)
    gap = extras.get("integrated_gradients_gap")
    return Explanation(
        maps=maps,
        labels=run.labels if needs_label else labels,
        integrated_gradients_gap=None if gap is None else np.asarray(gap, np.float32),
    )
