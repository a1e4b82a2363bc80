"""Attention stored compactly: the special tokens' columns as float16, every patch weight as an
8-bit code of a root of it (square, cube or fourth, chosen per row), scaled by its row's largest
patch weight.

A row ``a`` of an attention matrix (one query's weights over the ``N`` keys, in ``[0, 1]``) is
kept in two pieces (code :data:`POWER`, results bundles from version 4 on):

- the columns of the ``X`` special tokens (CLS, distillation, registers: the keys before the
  patches) as float16 in ``special [..., N, X]``: exactly the model's own float16 attention
  (:func:`~jaxvit_interp.model.run.attention_over_images`), and within float16 rounding
  (``2^-11`` of the weight, or ``2^-25`` below ``2^-14``) of any other input;
- the patch columns as uint8 ``codes = round((a / step)^(1/p))`` with one exponent ``p`` and one
  ``step = m / 255^p`` per row, ``m`` the row's largest patch weight, read back as
  ``codes^p * step`` (the special tokens' columns of ``codes`` are 0). ``p`` is the smallest of
  2 and 3 that gives at least half the row's patch weights a code of at least 64
  (:data:`MEDIAN_CODE`), else 4 (:data:`EXPONENTS`): a flat row keeps the finest steps near its
  largest weight, a peaked one finer steps among its small weights. Patch weights below
  ``m / 260100`` (:data:`ZERO_BELOW`) read as 0.

Bounds, for a patch weight ``a`` of a row whose largest patch weight is ``m``, with
``y = 255 (a / m)^(1/p)`` (``round`` moves ``(a / step)^(1/p) = y`` by at most 1/2), up to float32
rounding: ``|decoded - a| <= ((y + 1/2)^p - y^p) step``, at most 3.9e-3 m, 5.9e-3 m and 7.9e-3 m
for ``p`` = 2, 3, 4 (so at most 7.9e-3 for any weight), and ``|decoded - a| / a <=
(1 + 1/(2y))^p - 1``:

==========  ======  ============  =============  ==============  ===============
``p``       at m    from m / 10   from m / 100   from m / 1000   from m / 10^4
==========  ======  ============  =============  ==============  ===============
2           0.4%    1.2%          4.0%           13%             43%
3           0.6%    1.3%          2.8%           6.0%            13%
4           0.8%    1.4%          2.5%           4.5%            8.1%
==========  ======  ============  =============  ==============  ===============

Each matrix's worst absolute error, and its worst relative error over the weights of at least
:data:`RELATIVE_FLOOR` ``/ N`` (a tenth of a uniform row's weight; smaller ones are too faint to
see in any view), are measured when it is encoded and kept beside the codes. Over those weights
the bounds give at most 7.5% in rows of exponent 2 or 3 (half their ``P`` patch weights are at
least ``m (64/255)^p``, so ``m <= 2 / (P (64/255)^p)`` and ``y >= 64 (0.05 P / N)^(1/p)``, where
the patches are at least 90% of the tokens) and, in a row of exponent 4 whose largest patch
weight is 1, 4.0% for ``N = 65``, 5.3% for ``N = 197``, 7.0% for ``N = 577`` and 8.8% for
``N = 1374``. Measured on whole images (``benchmarks/site_large.py``, ``benchmarks/RESULTS.md``),
the worst was 3.9-5.3% (6.4% on a 1,374-token model whose register soaks up most of each row,
``tests/test_attention_codes.py``).

Why this code. The first one (:data:`LINEAR`, bundle version 3) kept ``round(a / step)`` with
``step = max(max(a) / 255, 2^-11)`` over the whole row: the floor set the step where weights are
near ``1/N`` (at 1,374 tokens, DINOv2 with registers at 518 px, a head's matrix kept 2 distinct
values, 2^-11 and 2^-10), and a register or CLS that soaks up a row's attention set it where
one does. Measured on real attention at both ends (near-uniform rows of random-weight ViT-B/16
and 1,374-token models, peaked rows of the trained digits model, of synthetic heads and of
1,374-token models whose register soaks up most of each row), each with the special columns
apart: a linear code scaled by the patch maximum reads the small weights of peaked rows as 0
(relative error 100% over the weights of at least ``0.1 / N``); a logarithmic (minifloat,
4-bit exponent) code holds 3% everywhere but keeps as few as 39 distinct values in the
flattest rows at 1,374 tokens, whose weights span a small ratio; square roots alone keep as few
as 41 in rows peaked on one patch (and up to 16% relative error over the weights of at least
``0.1 / N``), cube roots
alone as few as 50 in the flattest rows, and neither alone kept 64 in every row; the exponent
chosen per row keeps at least 73 distinct values in every row whose weights vary (by a factor
of 2 or more between their 5th and 95th percentiles) of the five 1,374-token models measured
(version 3's code: 1-22). Keeping the small weights costs bytes that the floor saved: a record
deflates to about twice the linear code's bytes for ViT-B/16, 5.7 times at 1,374 tokens
(``benchmarks/RESULTS.md``).

The bundle records which code it uses (``meta["attention_code"]``; a version-3 bundle has
linear codes), and each is decoded with its own rule, here and in the page (``site/js``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "ATTENTION_CODES",
    "CODE_MAX",
    "LINEAR",
    "POWER",
    "EXPONENTS",
    "MEDIAN_CODE",
    "RELATIVE_FLOOR",
    "STEP_FLOOR",
    "ZERO_BELOW",
    "decode_attention",
    "decode_stored",
    "encode_attention",
]

# Version 3's code: codes * step over the whole row.
LINEAR = "linear"
# Special tokens' columns as float16, codes^p * step over the patch columns, p = 2, 3 or 4 a row.
POWER = "power"
ATTENTION_CODES = (LINEAR, POWER)
CODE_MAX = 255
# The linear code's finest step: 2^-11, so a flat row is exact to 2^-12 (2.4e-4).
STEP_FLOOR = 2.0**-11
# A row's exponent: the smallest of these that gives at least half its patch weights a code of
# at least MEDIAN_CODE (the largest where none does).
EXPONENTS = (2, 3, 4)
MEDIAN_CODE = 64
# Patch weights below this share of their row's largest read as 0 (a square root's code 0).
ZERO_BELOW = 1 / (4 * CODE_MAX**2)
# The relative error is measured over the weights of at least RELATIVE_FLOOR / N.
RELATIVE_FLOOR = 0.1
# Weights encoded at once (in float64: 32 MB): the float attention of many images is never
# copied whole.
ENCODE_BLOCK = 1 << 22


def encode_attention(attention, num_special: int, code: str = POWER) -> dict[str, np.ndarray]:
    """``[..., N, N]`` attention whose first ``num_special`` keys are special tokens ->
    ``{"codes": uint8 [..., N, N], "steps": float32 [..., N], "error": float32 [...],
    "relative_error": float32 [...]}`` and, for the power code, ``"exponents": uint8 [..., N]``
    and ``"special": float16 [..., N, X]``.

    ``error`` is each matrix's worst ``|decoded - attention|``, ``relative_error`` its worst
    ``|decoded - attention| / attention`` over the weights of at least ``RELATIVE_FLOOR / N``;
    the attention is read as clipped to ``[0, 1]`` (NaN as 0). Encoded a block of matrices at a
    time.
    """
    _check_code(code)
    attention = np.asarray(attention)
    *lead, n, n_keys = attention.shape
    flat = attention.reshape(-1, n, n_keys)
    out = {
        "codes": np.zeros(flat.shape, np.uint8),
        "steps": np.zeros(flat.shape[:-1], np.float32),
        "error": np.zeros(len(flat), np.float32),
        "relative_error": np.zeros(len(flat), np.float32),
    }
    if code == POWER:
        out["exponents"] = np.zeros(flat.shape[:-1], np.uint8)
        out["special"] = np.zeros((*flat.shape[:-1], num_special), np.float16)
    block = max(1, ENCODE_BLOCK // max(1, n * n_keys))
    for start in range(0, len(flat), block):
        a = np.clip(np.nan_to_num(np.asarray(flat[start : start + block], np.float64)), 0.0, 1.0)
        encoded = _encode_linear(a) if code == LINEAR else _encode_power(a, num_special)
        for name, value in encoded.items():
            out[name][start : start + block] = value
        diff = np.abs(decode_attention(code=code, **encoded) - a)
        relative = np.where(a >= RELATIVE_FLOOR / n_keys, diff / np.maximum(a, 1e-30), 0.0)
        out["error"][start : start + block] = diff.max(axis=(-2, -1))
        out["relative_error"][start : start + block] = relative.max(axis=(-2, -1))
    return {name: value.reshape((*lead, *value.shape[1:])) for name, value in out.items()}


def _encode_linear(a: np.ndarray) -> dict[str, np.ndarray]:
    """Version 3's rule, in its float32 arithmetic."""
    a = a.astype(np.float32)
    steps = np.maximum(a.max(-1) / CODE_MAX, STEP_FLOOR).astype(np.float32)
    codes = np.minimum(np.round(a / steps[..., None]), CODE_MAX).astype(np.uint8)
    return {"codes": codes, "steps": steps}


def _encode_power(a: np.ndarray, num_special: int) -> dict[str, np.ndarray]:
    patches = a[..., num_special:]
    largest = patches.max(-1, keepdims=True) if patches.shape[-1] else np.zeros((*a.shape[:-1], 1))
    exponents = np.full(largest.shape, EXPONENTS[-1])
    for p in reversed(EXPONENTS[:-1]):
        high = np.count_nonzero(patches >= largest * (MEDIAN_CODE / CODE_MAX) ** p, -1)
        exponents[2 * high[..., None] >= patches.shape[-1]] = p
    steps = (largest / CODE_MAX**exponents).astype(np.float32)
    step = steps.astype(np.float64)
    # A row without patch weight (all 0) has step 0 and codes 0. Roots taken in place, each
    # exponent's on its rows only: a block of rows is tens of MB.
    roots = np.divide(patches, step, out=np.zeros_like(patches), where=step > 0)
    for p in EXPONENTS:
        rows = exponents[..., 0] == p
        roots[rows] = roots[rows] ** (1 / p) if p != 2 else np.sqrt(roots[rows])
    np.minimum(np.round(roots, out=roots), CODE_MAX, out=roots)
    roots[patches < largest * ZERO_BELOW] = 0
    codes = np.zeros(a.shape, np.uint8)
    codes[..., num_special:] = roots
    return {
        "codes": codes,
        "steps": steps[..., 0],
        "exponents": exponents[..., 0].astype(np.uint8),
        "special": a[..., :num_special].astype(np.float16),
    }


def decode_attention(
    codes: np.ndarray,
    steps: np.ndarray,
    exponents: np.ndarray | None = None,
    special: np.ndarray | None = None,
    *,
    code: str = POWER,
) -> np.ndarray:
    """The attention that ``codes`` ``[..., N, N]`` and their row ``steps`` ``[..., N]`` (and, for
    the power code, the row ``exponents`` ``[..., N]`` and the special tokens' columns
    ``special`` ``[..., N, X]``) stand for, float32 ``[..., N, N]``: ``codes * step`` (linear), or
    the special columns then ``codes^p * step`` (power). ``codes^p`` is exact in a double, and
    its product with the float32 step is rounded to a double and then to float32, as the page
    computes it."""
    _check_code(code)
    steps = np.asarray(steps, np.float32)[..., None]
    if code == LINEAR:
        return np.asarray(codes, np.float32) * steps
    if exponents is None or special is None:
        raise ValueError("the power attention code needs the row exponents and special columns")
    values = np.asarray(codes, np.float64)
    exponents = np.asarray(exponents)[..., None]
    powers = values * values
    for p in EXPONENTS[1:]:
        powers = np.where(exponents >= p, powers * values, powers)
    decoded = (powers * steps.astype(np.float64)).astype(np.float32)
    decoded[..., : special.shape[-1]] = special
    return decoded


def decode_stored(stored: Mapping[str, np.ndarray], code: str, index=()) -> np.ndarray:
    """The attention a results bundle's ``attention`` part ``stored`` holds at ``index`` (into
    its leading axes: attention row, layer, head), decoded with the bundle's ``code``
    (:attr:`~jaxvit_interp.bundle.ResultsBundle.attention_code`)."""
    extra = {}
    if code == POWER:
        extra = {"exponents": stored["exponents"][index], "special": stored["special"][index]}
    return decode_attention(stored["codes"][index], stored["steps"][index], code=code, **extra)


def _check_code(code: str) -> None:
    if code not in ATTENTION_CODES:
        raise ValueError(f"unknown attention code {code!r}; known: {list(ATTENTION_CODES)}")
