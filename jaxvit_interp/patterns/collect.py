"""Patterns of every head on every image, streamed from the model batch by batch.

Only patterns leave each batch (``[batch, layer, head, h, w]``, a few hundred values a head), never
the ``[batch, layer, head, N, N]`` attention: it exists only inside one compiled program per batch,
so many images fit however large ``N`` is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.attention_pass import reduce_over_images
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance.validate import check_unpruned
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.patterns.extract import cls_pattern, patch_pattern, pattern_shape

# How far a softmax row may sum from 1 (float32 rounding over a few hundred keys is ~1e-6).
_ROW_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class PatternReducer:
    """The raw patterns of every head of a batch, as a reducer of the attention pass
    (:mod:`jaxvit_interp.attention_pass`): ``{kind: [batch, layer, head, h, w]}`` plus each
    image's worst ``|row sum - 1|`` (``row_error``), which :meth:`finish` checks on the host.

    Attributes:
      kinds: the pattern kinds, ``"cls"`` and/or ``"patch"``.
    """

    kinds: tuple[str, ...] = ("cls", "patch")
    name: str = "patterns"

    def __call__(self, config: ViTConfig, out) -> dict[str, jax.Array]:
        attention = out.attention
        result = {
            kind: (cls_pattern if kind == "cls" else patch_pattern)(
                attention, config.grid, config.has_cls_token, config.num_prefix_tokens
            )
            for kind in self.kinds
        }
        # Each image's worst row: softmax rows sum to 1, unless weights or pixels are not finite.
        result["row_error"] = jnp.abs(attention.sum(-1) - 1.0).max(axis=(1, 2, 3))
        return result

    def finish(self, outputs: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        error = outputs["row_error"]
        bad = np.flatnonzero(~(error <= _ROW_TOLERANCE))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"the model's attention rows do not sum to 1 (off by {error[i]:.3g}) on image "
                f"{start + i}: non-finite weights or pixels?"
            )
        return {k: v for k, v in outputs.items() if k != "row_error"}


def collect_patterns(
    config: ViTConfig,
    params: Any,
    images,
    *,
    kinds: tuple[str, ...] | None = None,
    execution: Execution | None = None,
) -> dict[str, np.ndarray]:
    """Raw (un-normalised) patterns of every head on every image.

    Args:
      config: the model's configuration.
      params: its parameters.
      images: ``[image, height, width, channels]`` preprocessed images.
      kinds: pattern kinds to collect; default ``("cls", "patch")``, or ``("patch",)`` for a model
        without a CLS token.
      execution: images per forward pass over all devices (default: as many as the memory
        budget holds; the last batch is padded), the mesh that shards them and the progress
        report (:class:`~jaxvit_interp.execution.Execution`); None: the defaults.

    Returns:
      ``{kind: [image, layer, head, h, w]}`` float32 arrays, ``(h, w)`` from
      :func:`~jaxvit_interp.patterns.extract.pattern_shape`.

    Raises:
      InputError: an unknown kind, ``"cls"`` for a model without a CLS token, or attention rows
        that do not sum to 1 (non-finite weights or pixels; the message names the image).
    """
    check_unpruned(config, "collect_patterns")
    if kinds is None:
        kinds = ("cls", "patch") if config.has_cls_token else ("patch",)
    kinds = tuple(kinds)
    for kind in kinds:
        pattern_shape(kind, config.grid)  # validates the kind before any model pass
        if kind == "cls" and not config.has_cls_token:
            raise InputError(
                "this model has no CLS token, so it has no CLS pattern; use kind='patch'"
            )
    reducer = PatternReducer(kinds)
    out = reduce_over_images(config, params, images, reducer, execution, desc="patterns")
    return {kind: out[kind].astype(np.float32) for kind in kinds}
