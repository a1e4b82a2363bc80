"""Partial pruning (paper panels B2/B3): zero parts of a head's attention; ``p'_y`` and the top 5.

Each (head, mode) pair is one spawn slot of the ablation engine: the zeroed entries' contribution
``((A_lh * (1 - keep)) V_lh) W_out[h]`` is taken off the block output and only the layers from the
head's own MLP up run again.  The ``none`` mode is the unpruned model and costs nothing.  With a
mean or resample ablation the zeroed entries' share of the head's output,
``(A_lh * (1 - keep)) V_lh``, is replaced by that same share on the reference images (the
reference's own attention entries in that part times its own values), averaged or image by
image; for the ``head`` mode that is the whole head's output, as
:func:`~jaxvit_interp.importance.head_importance` replaces it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.importance import validate
from jaxvit_interp.importance.ablation_kinds import Ablation, as_ablation
from jaxvit_interp.importance.engine import run_engine
from jaxvit_interp.importance.metrics import probability
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.edits import keep_mask
from jaxvit_interp.summary import Summarized, listed, number, sizes

Array = jax.Array


@dataclasses.dataclass(frozen=True, repr=False)
class PartialPruning(Summarized):
    """Prediction after each partial-pruning mode of each chosen head, per image.

    Attributes:
      heads: ``[head, 2]`` int ``(layer, head)`` pairs, in the order the arrays use.
      modes: the modes (names from ``PRUNING_MODES``), in the order the arrays use.
      prob: ``[image, head, mode]`` ``p'_y`` after pruning.
      top_classes: ``[image, head, mode, k]`` int, the top-``k`` classes after pruning, best first.
      top_probs: ``[image, head, mode, k]`` their probabilities.
      probs: ``[image, class]`` unpruned softmax output.
      predictions: ``[image]`` unpruned top-1 class.
      labels: ``[image]`` the class ``y``.
      labels_are_predictions: True when no labels were given.
    """

    heads: np.ndarray
    modes: tuple[str, ...]
    prob: np.ndarray
    top_classes: np.ndarray
    top_probs: np.ndarray
    probs: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    labels_are_predictions: bool

    def head_index(self, layer: int, head: int) -> int:
        """Position of ``(layer, head)`` along the arrays' head axis."""
        hits = np.flatnonzero((self.heads[:, 0] == layer) & (self.heads[:, 1] == head))
        if not hits.size:
            raise KeyError(f"head (layer={layer}, head={head}) is not in this result")
        return int(hits[0])

    def _summary(self):
        images, heads, modes = self.prob.shape
        mean = self.prob.mean(axis=(0, 1))
        return sizes(images=images, heads=heads, modes=modes), [
            ("modes", listed(self.modes)),
            ("mean p'(y)", ", ".join(f"{m} {number(v)}" for m, v in zip(self.modes, mean))),
            ("top classes", f"the {self.top_classes.shape[-1]} most probable after pruning"),
        ]


@dataclasses.dataclass(frozen=True)
class _PartialReduce:
    """``p'_y`` and the top-``k`` of every slot; a frozen dataclass so jit caches on its value."""

    top_k: int

    def __call__(self, logits, z, targets, logits_pruned, z_pruned) -> dict[str, Array]:
        del logits, z, z_pruned
        probs = jax.nn.softmax(logits_pruned, axis=-1)
        top_probs, top_classes = jax.lax.top_k(probs, self.top_k)
        prob = jax.vmap(jax.vmap(jax.vmap(probability, (0, None)), (0, None)))(
            logits_pruned, targets
        )
        return {"prob": prob, "top_classes": top_classes, "top_probs": top_probs}


def partial_pruning(
    config: ViTConfig,
    params: Any,
    images,
    labels=None,
    heads: Sequence[tuple[int, int]] | None = None,
    *,
    modes: Sequence[str] | None = None,
    top_k: int = 5,
    ablation: str | Ablation = "zero",
    reference=None,
    execution: Execution | None = None,
) -> PartialPruning:
    """Apply each partial-pruning mode to each chosen head, one (head, mode) at a time.

    Modes (``PRUNING_MODES``): ``none``, ``head`` (every entry), ``cls`` (CLS row and column),
    ``patch_to_patch``, ``cls_patch`` (CLS<->patch, keeping CLS->CLS), ``cls_to_cls``; entries
    are zeroed without renormalising.  Models without a CLS token have only the first, second
    and fourth.

    Args:
      config, params: the model.
      images: ``[image, height, width, channels]``.
      labels: ``[image]`` int, or None for the unpruned prediction.
      heads: ``[(layer, head), ...]``, or None for every head.
      modes: a subset of the modes; None for all that apply.
      top_k: how many top classes to keep (at most the number of classes).
      ablation, reference, execution: as in
        :func:`~jaxvit_interp.importance.head_importance`; the ablation says what takes the
        place of a head's zeroed attention entries' share of its output
        ``(A * (1 - keep)) V``: nothing (``"zero"``), that share's mean per token position over
        the reference images (``"mean"``: the reference's own attention entries in the mode's
        part times its own values), or that share on ``reference[i]`` (``"resample"``).  For the
        ``head`` mode this is the whole head's output, as ``head_importance`` replaces it.

    Returns:
      :class:`PartialPruning`.
    """
    validate.check_unpruned(config, "partial_pruning")
    validate.check_classifier(config, ("prob",), labels, "partial_pruning")
    images = validate.check_images(config, images)
    labels = validate.check_labels(config, labels, images.shape[0])
    heads = validate.check_heads(config, heads)
    modes = validate.check_modes(config, modes)
    top_k = validate.check_positive("top_k", top_k)
    if top_k > config.num_classes:
        raise InputError(f"top_k={top_k} exceeds the model's {config.num_classes} classes")
    ablation = as_ablation(ablation)
    execution = as_execution(execution)
    reference = validate.check_reference(config, ablation, reference, images)

    pruned_modes = [m for m in modes if m != "none"]
    keep_table = np.stack(
        [
            keep_mask(m, config.num_tokens, config.has_cls_token, config.num_prefix_tokens)
            for m in pruned_modes
        ]
        or [np.ones((config.num_tokens,) * 2, np.float32)]
    )
    # One slot per (head, pruned mode), grouped by the head's layer; layers padded to equal length.
    spawn_layers = tuple(sorted({layer for layer, _ in heads})) if pruned_modes else ()
    per_layer = {layer: [] for layer in spawn_layers}
    where = {}
    for i, (layer, head) in enumerate(heads):
        for j in range(len(pruned_modes)):
            where[(i, j)] = (spawn_layers.index(layer), len(per_layer[layer]))
            per_layer[layer].append((head, j))
    width = max((len(v) for v in per_layer.values()), default=0)
    slot_heads = np.zeros((len(spawn_layers), width), np.int32)
    slot_modes = np.zeros((len(spawn_layers), width), np.int32)
    for s, layer in enumerate(spawn_layers):
        items = per_layer[layer] + [per_layer[layer][-1]] * (width - len(per_layer[layer]))
        slot_heads[s] = [h for h, _ in items]
        slot_modes[s] = [m for _, m in items]

    out = run_engine(
        config,
        params,
        images,
        labels,
        spawn_layers=spawn_layers,
        slot_heads=slot_heads,
        slot_modes=slot_modes,
        keep_table=keep_table,
        reduce=_PartialReduce(top_k),
        ablation=ablation,
        reference=reference,
        execution=execution,
        desc="partial pruning",
    )

    n = images.shape[0]
    probs = np.asarray(jax.nn.softmax(jnp.asarray(out.logits), axis=-1))
    rows = np.arange(n)
    prob = np.zeros((n, len(heads), len(modes)), np.float32)
    top_classes = np.zeros((n, len(heads), len(modes), top_k), np.int32)
    top_probs = np.zeros((n, len(heads), len(modes), top_k), np.float32)
    # The unpruned top-k, ordered like lax.top_k (descending, lower index first on ties).
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    for j, mode in enumerate(modes):
        if mode == "none":
            prob[:, :, j] = probs[rows, out.targets][:, None]
            top_classes[:, :, j] = order[:, None]
            top_probs[:, :, j] = np.take_along_axis(probs, order, axis=-1)[:, None]
            continue
        jj = pruned_modes.index(mode)
        for i in range(len(heads)):
            s, k = where[(i, jj)]
            prob[:, i, j] = out.per_slot["prob"][:, s, k]
            top_classes[:, i, j] = out.per_slot["top_classes"][:, s, k]
            top_probs[:, i, j] = out.per_slot["top_probs"][:, s, k]
    return PartialPruning(
        heads=np.asarray(heads, np.int32).reshape(-1, 2),
        modes=modes,
        prob=prob,
        top_classes=top_classes,
        top_probs=top_probs,
        probs=probs,
        predictions=out.logits.argmax(axis=-1).astype(np.int32),
        labels=out.targets,
        labels_are_predictions=labels is None,
    )
