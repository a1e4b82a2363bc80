"""Attention maps with known, planted patterns: ground truth for the pattern pipeline.

Each map is ``softmax(s * mask + noise)`` over the keys of every query, with ``mask`` the planted
pattern's target keys for that query, ``s`` a per-map strength and ``noise`` Gaussian logit noise,
so every row is a proper softmax distribution. With the default strength (4 to 7) and noise
(0.7) on an 8x8 grid with CLS, a single planted key gets about 40% to 93% of its row.

Planted kinds (query patch ``(r, c)``; tokens CLS first when present, then patches row-major):

- ``self``: the query patch itself.
- ``up`` / ``down`` / ``left`` / ``right``: the neighbouring patch ``(r-1, c)``, ``(r+1, c)``,
  ``(r, c-1)``, ``(r, c+1)``. Queries on the edge, which have no such neighbour, look at CLS
  (or at themselves in a model without CLS), as edge patches of trained ViTs often do.
- ``row`` / ``column``: every patch of the query's row / column.
- ``global``: no target: all keys alike up to noise.
- ``cls_only``: the CLS token (a model without CLS cannot have this kind).

The CLS query row carries no planted structure (noise only): the planted patterns are patterns of
patches, so the patch pattern is the kind that tells them apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError

PLANTED_KINDS: tuple[str, ...] = (
    "self",
    "up",
    "down",
    "left",
    "right",
    "row",
    "column",
    "global",
    "cls_only",
)


def planted_masks(
    grid: tuple[int, int], has_cls_token: bool = True, kinds: tuple[str, ...] = PLANTED_KINDS
) -> np.ndarray:
    """``[kind, N, N]`` 0/1 target masks of the planted ``kinds`` (CLS query row left empty)."""
    gh, gw = grid
    first = int(has_cls_token)
    n = gh * gw + first
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    masks = np.zeros((len(kinds), n, n), np.float32)
    steps = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
    for k, kind in enumerate(kinds):
        patch = masks[k, first:, first:]  # a view: [query patch, key patch]
        if kind == "self":
            patch[np.arange(gh * gw), np.arange(gh * gw)] = 1
        elif kind in steps:
            dr, dc = steps[kind]
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < gh) & (c >= 0) & (c < gw)
            q = np.flatnonzero(inside)
            patch[q, r[q] * gw + c[q]] = 1
            edge = np.flatnonzero(~inside)
            if has_cls_token:
                masks[k, first + edge, 0] = 1
            else:
                patch[edge, edge] = 1
        elif kind == "row":
            patch[:] = rows[:, None] == rows[None, :]
        elif kind == "column":
            patch[:] = cols[:, None] == cols[None, :]
        elif kind == "global":
            pass
        elif kind == "cls_only":
            if not has_cls_token:
                raise InputError("planted kind 'cls_only' needs a CLS token (has_cls_token=False)")
            masks[k, first:, 0] = 1
        else:
            raise InputError(
                f"unknown planted kind {kind!r}; expected one of {', '.join(PLANTED_KINDS)}"
            )
    return masks


def planted_attention(
    seed: int,
    labels,
    grid: tuple[int, int],
    *,
    has_cls_token: bool = True,
    kinds: tuple[str, ...] = PLANTED_KINDS,
    strength: tuple[float, float] = (4.0, 7.0),
    noise: float = 0.7,
) -> jax.Array:
    """Synthetic attention ``[*labels.shape, N, N]`` whose map ``i`` plants ``kinds[labels[i]]``.

    Args:
      seed: seeds the strengths and the noise.
      labels: integer array of any shape (e.g. ``[image, head]``), indices into ``kinds``.
      grid: patch grid ``(Gh, Gw)``.
      has_cls_token: whether token 0 is CLS.
      kinds: the planted kinds ``labels`` index.
      strength: each map's logit boost ``s`` on its targets, uniform in this range.
      noise: standard deviation of the Gaussian logit noise, fresh for every entry.
    """
    labels = jnp.asarray(labels, jnp.int32)
    masks = jnp.asarray(planted_masks(grid, has_cls_token, kinds))
    key_s, key_n = jax.random.split(jax.random.key(seed))
    s = jax.random.uniform(key_s, labels.shape + (1, 1), minval=strength[0], maxval=strength[1])
    n = masks.shape[-1]
    logits = s * masks[labels] + noise * jax.random.normal(key_n, labels.shape + (n, n))
    return jax.nn.softmax(logits, axis=-1)
