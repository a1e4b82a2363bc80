"""Patterns of every head on every image, streamed from the model batch by batch.

Only patterns leave each batch (``[batch, layer, head, h, w]``, a few hundred values a head), never
the ``[batch, layer, head, N, N]`` attention, so many images fit however large ``N`` is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.model.run import run_model
from jaxvit_interp.patterns.extract import extract_patterns, pattern_shape


def collect_patterns(
    config: ViTConfig,
    params: Any,
    images,
    *,
    kinds: tuple[str, ...] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Raw (un-normalised) patterns of every head on every image.

    Args:
      config: the model's configuration.
      params: its parameters.
      images: ``[image, height, width, channels]`` preprocessed images.
      kinds: pattern kinds to collect; default ``("cls", "patch")``, or ``("patch",)`` for a model
        without a CLS token.
      batch_size: images per forward pass.
      progress: show a progress bar.

    Returns:
      ``{kind: [image, layer, head, h, w]}`` float32 arrays, ``(h, w)`` from
      :func:`~jaxvit_interp.patterns.extract.pattern_shape`.
    """
    if kinds is None:
        kinds = ("cls", "patch") if config.has_cls_token else ("patch",)
    for kind in kinds:
        pattern_shape(kind, config.grid)  # validates the kind before any model pass
        if kind == "cls" and not config.has_cls_token:
            raise InputError(
                "this model has no CLS token, so it has no CLS pattern; use kind='patch'"
            )
    images = np.asarray(images)
    out = {
        kind: np.empty(
            (len(images), config.num_layers, config.num_heads, *pattern_shape(kind, config.grid)),
            np.float32,
        )
        for kind in kinds
    }
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="patterns", unit="batch", disable=not progress, leave=False):
        batch = images[start : start + batch_size]
        rows = len(batch)
        if rows < batch_size and start > 0:
            # Pad the ragged last batch so it reuses the compiled forward pass.
            batch = np.concatenate(
                [batch, np.zeros((batch_size - rows, *batch.shape[1:]), batch.dtype)]
            )
        attention = run_model(config, params, batch).attention[:rows]
        for i, kind in enumerate(kinds):
            # The attention is checked once per batch, with the first kind.
            patterns = extract_patterns(
                attention,
                config.grid,
                config.has_cls_token,
                kind,
                check=(i == 0),
                num_prefix_tokens=config.num_prefix_tokens,
            )
            out[kind][start : start + rows] = np.asarray(patterns)
    return out
