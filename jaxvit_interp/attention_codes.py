"""Attention stored compactly: 8-bit codes with one step per matrix row.

A row ``a`` of an attention matrix (one query's weights over the keys, in ``[0, 1]``) is kept as
``codes = round(a / step)`` in uint8 with ``step = max(max(a) / 255, STEP_FLOOR)``, and read back
as ``codes * step``. A row's largest weight keeps 8 bits of precision, so peaked rows are exact to
``max(a) / 510`` (at most 1/510, about 2.0e-3, for any row); the floor keeps a near-uniform row's
noise from costing bytes: its weights are exact to ``STEP_FLOOR / 2`` (2.4e-4). The codes of many
heads are mostly small or repeated, which deflate then shrinks (see ``benchmarks/site_large.py``).

The worst absolute error of each matrix is measured when it is encoded and kept beside the codes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CODE_MAX", "STEP_FLOOR", "decode_attention", "encode_attention"]

CODE_MAX = 255
# The finest step a row gets: 2^-11, so a flat row is exact to 2^-12 (2.4e-4), the precision of
# the float16 attention the model pass returns near 0.5.
STEP_FLOOR = 2.0**-11


def encode_attention(attention) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[..., N, N]`` attention -> ``(codes uint8 [..., N, N], steps float32 [..., N],
    error float32 [...])``, the error being each matrix's worst ``|codes * step - attention|``."""
    a = np.clip(np.nan_to_num(np.asarray(attention, np.float32)), 0.0, 1.0)
    steps = np.maximum(a.max(-1) / CODE_MAX, STEP_FLOOR).astype(np.float32)
    codes = np.minimum(np.round(a / steps[..., None]), CODE_MAX).astype(np.uint8)
    error = np.abs(decode_attention(codes, steps) - a).max(axis=(-2, -1))
    return codes, steps, error.astype(np.float32)


def decode_attention(codes: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The attention that ``codes`` and their row ``steps`` stand for, float32 ``[..., N, N]``."""
    return np.asarray(codes, np.float32) * np.asarray(steps, np.float32)[..., None]
