"""Each head's attention as an explanation of the image, and how faithful each one is.

A head's map is the attention row of the token the classifier reads (the CLS row; for a model
without CLS the mean of the patch rows, as rollout reads it) over the patches,
``[image, layer, head, Gh, Gw]``. Its faithfulness is the deletion or insertion curve of that
map (:mod:`jaxvit_interp.explain.faithfulness`), for every head at once.

This sits beside head importance (:func:`~jaxvit_interp.importance.head_importance`): importance
says how much the prediction needs a head, faithfulness whether the patches the head looks at
are the ones the prediction needs. Heads that both matter and point at what matters can be read
off the two ``[layer, head]`` tables side by side.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxvit_interp.attention_pass import reduce_over_images
from jaxvit_interp.execution import Execution, as_execution
from jaxvit_interp.explain.faithfulness import (
    check_curve_options,
    curve_area,
    curves_over_images,
)
from jaxvit_interp.importance.validate import check_images, check_labels, check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.rollout.kernels import read_rows

__all__ = ["HeadFaithfulness", "HeadMapsReducer", "head_attention_maps", "head_faithfulness"]


def head_read_rows(attention: jax.Array, num_prefix: int, has_cls_token: bool) -> jax.Array:
    """``[..., N, N]`` attention -> ``[..., P]``: the read token's row over the patch columns
    (the CLS row, else the mean of the patch rows: rollout's :func:`read_rows`)."""
    return read_rows(attention, num_prefix, has_cls_token)[..., num_prefix:]


@dataclasses.dataclass(frozen=True)
class HeadMapsReducer:
    """Every head's read row over the patch grid, ``maps [batch, layer, head, Gh, Gw]``, as a
    reducer of the attention pass (:mod:`jaxvit_interp.attention_pass`)."""

    name: str = "head_maps"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        rows = head_read_rows(out.attention, config.num_prefix_tokens, config.has_cls_token)
        return {"maps": rows.reshape(*rows.shape[:-1], *config.grid)}


def head_attention_maps(
    config: ViTConfig, params: Any, images, execution: Execution | None = None
) -> np.ndarray:
    """Each head's attention map ``[image, layer, head, Gh, Gw]`` float32 of preprocessed
    ``images``, from one attention pass per batch (``execution``: batching, devices, progress;
    None: the defaults)."""
    check_unpruned(config, "head_attention_maps")
    images = check_images(config, images)
    out = reduce_over_images(
        config, params, images, HeadMapsReducer(), execution, desc="head attention maps"
    )
    return out["maps"].astype(np.float32)


class HeadFaithfulness(NamedTuple):
    """Deletion or insertion faithfulness of every head's attention map.

    Attributes:
      curves: ``[image, layer, head, steps + 1]`` p(label) along each head's order.
      area: ``[image, layer, head]`` the area under each curve.
      mean: ``[layer, head]`` ``area`` over the images.
      random_curves: ``[image, steps + 1]`` one fixed random patch order per image.
      random_area: ``[image]``; ``random_mean`` its mean, the chance level to read ``mean``
        against (below it is better for deletion, above for insertion).
      labels: ``[image]`` the labels followed.
      mode, baseline: as asked.
    """

    curves: np.ndarray
    area: np.ndarray
    mean: np.ndarray
    random_curves: np.ndarray
    random_area: np.ndarray
    random_mean: float
    labels: np.ndarray
    mode: str
    baseline: str


def head_faithfulness(
    config: ViTConfig,
    params: Any,
    images,
    labels,
    *,
    mode: str = "deletion",
    steps: int = 10,
    baseline: str = "zero",
    execution: Execution | None = None,
    random_seed: int | None = None,
) -> HeadFaithfulness:
    """The faithfulness of every head's attention map (:func:`head_attention_maps`).

    One attention pass gives the maps; then each batch of images runs every head's curve and
    the random order's, every step, in one compiled call (as many heads' maps at a time as the
    memory budget holds). Arguments as :func:`~jaxvit_interp.explain.faithfulness`.

    Returns:
      :class:`HeadFaithfulness`.
    """
    steps = check_curve_options(config, mode, steps, baseline, "head_faithfulness")
    check_unpruned(config, "head_faithfulness")
    images = check_images(config, images)
    labels = check_labels(config, labels, len(images))
    execution = as_execution(execution)
    maps = head_attention_maps(config, params, images, execution)
    n, layers, heads = maps.shape[:3]
    curves, random_curves, followed = curves_over_images(
        config,
        params,
        images,
        labels,
        maps.reshape(n, layers * heads, -1),
        mode=mode,
        steps=steps,
        baseline=baseline,
        execution=execution,
        random_seed=random_seed,
        desc=f"head {mode} curves",
    )
    head_curves = curves.reshape(n, layers, heads, -1)
    area = curve_area(head_curves)
    random_area = curve_area(random_curves)
    return HeadFaithfulness(
        curves=head_curves,
        area=area,
        mean=area.mean(axis=0, dtype=np.float64).astype(np.float32),
        random_curves=random_curves,
        random_area=random_area,
        random_mean=float(random_area.mean(dtype=np.float64)),
        labels=followed,
        mode=mode,
        baseline=baseline,
    )
