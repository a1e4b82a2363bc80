"""Rollout maps of many images, streamed from the model batch by batch."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxvit_interp.attention_pass import reduce_over_images
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.validate import check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.rollout.kernels import (
    RESIDUAL_WEIGHT,
    attention_rollout,
    layer_contributions,
    read_rows,
    rollout_maps,
)
from jaxvit_interp.summary import Summarized, listed, number, sizes


@dataclasses.dataclass(frozen=True)
class RolloutMapsReducer:
    """The rollout map after every layer, ``maps [batch, layer, Gh, Gw]``, as a reducer of the
    attention pass (:mod:`jaxvit_interp.attention_pass`); only the maps leave the program."""

    residual_weight: float = RESIDUAL_WEIGHT
    name: str = "rollout_maps"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        rollout = attention_rollout(out.attention, residual_weight=self.residual_weight)
        maps = rollout_maps(rollout, config.grid, config.num_prefix_tokens, config.has_cls_token)
        return {"maps": maps}


@dataclasses.dataclass(frozen=True)
class FinalRolloutReducer:
    """The rollout map after the last layer and each layer's contribution
    (:class:`FinalRollout`'s ``map [batch, Gh, Gw]`` and ``contribution [batch, layer]``), as a
    reducer of the attention pass."""

    residual_weight: float = RESIDUAL_WEIGHT
    name: str = "rollout"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        rollout = attention_rollout(out.attention, residual_weight=self.residual_weight)
        rows = read_rows(rollout, config.num_prefix_tokens, config.has_cls_token)  # [b, L, N]
        first = config.num_prefix_tokens
        return {
            "map": rows[:, -1, first:].reshape(len(rows), *config.grid),
            "contribution": layer_contributions(rows, first, config.has_cls_token),
        }


class FinalRollout(NamedTuple):
    """The rollout after the last layer of each image, and what each layer added to it.

    Attributes:
      map: ``[image, Gh, Gw]`` the read row (CLS, or the mean of the patch rows without CLS)
        over the patches, after the last layer.
      contribution: ``[image, layer]`` the share of the read row each layer's attention moves
        (:func:`~jaxvit_interp.rollout.kernels.layer_contributions`).
    """

    map: np.ndarray
    contribution: np.ndarray

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> FinalRollout:
        """From :class:`FinalRolloutReducer`'s outputs, float32."""
        return cls(
            np.asarray(outputs["map"], np.float32), np.asarray(outputs["contribution"], np.float32)
        )

    # A NamedTuple takes no other base class: Summarized's methods, named here.
    _rows = Summarized._rows
    __repr__ = Summarized.__repr__
    _repr_html_ = Summarized._repr_html_

    def _summary(self):
        images, height, width = self.map.shape
        mean = self.contribution.mean(axis=0)
        rows = [
            ("map", f"{height}x{width} patches, the read row after the last layer"),
            ("contribution", "mean by layer: " + listed(number(v) for v in mean)),
        ]
        return sizes(images=images, layers=len(mean)), rows


def model_rollout_over_images(
    config: ViTConfig,
    params: Any,
    images,
    *,
    residual_weight: float = RESIDUAL_WEIGHT,
    execution: Execution | None = None,
) -> np.ndarray:
    """Rollout maps ``[image, layer, Gh, Gw]`` float32 of preprocessed ``images``.

    Only the maps leave each batch: the ``[layer, N, N]`` rollout lives inside one compiled
    program per batch. ``execution``: images per pass, the devices that share them and the
    progress report (:class:`~jaxvit_interp.execution.Execution`; None: the defaults).
    """
    check_unpruned(config, "model_rollout_over_images")
    reducer = RolloutMapsReducer(residual_weight)
    out = reduce_over_images(config, params, images, reducer, execution, desc="rollout")
    return out["maps"].astype(np.float32)


def final_rollout_over_images(
    config: ViTConfig,
    params: Any,
    images,
    *,
    residual_weight: float = RESIDUAL_WEIGHT,
    execution: Execution | None = None,
) -> FinalRollout:
    """The final rollout map and the per-layer contributions of preprocessed ``images``, float32.

    One model pass per batch, as :func:`model_rollout_over_images` (``execution`` too); only
    ``[Gh, Gw]`` and ``[layer]`` values leave it for each image.
    """
    check_unpruned(config, "final_rollout_over_images")
    reducer = FinalRolloutReducer(residual_weight)
    out = reduce_over_images(config, params, images, reducer, execution, desc="rollout")
    return FinalRollout.from_outputs(out)


def rollout_part(maps: np.ndarray, contributions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image rollout maps ``[image, Gh, Gw]`` and layer contributions ``[image, layer]``
    (:func:`~jaxvit_interp.rollout.final_rollout_over_images`) plus their means over the images."""
    maps = np.asarray(maps, np.float32)
    contributions = np.asarray(contributions, np.float32)
    return {
        "map": maps,
        "contribution": contributions,
        # Summed in float64: thousands of images.
        "map_mean": maps.mean(axis=0, dtype=np.float64).astype(np.float32),
        "contribution_mean": contributions.mean(axis=0, dtype=np.float64).astype(np.float32),
    }
