"""Attention as 8-bit codes with a step per row: the error bound and the recorded error."""

from __future__ import annotations

import numpy as np

from jaxvit_interp.attention_codes import CODE_MAX, STEP_FLOOR, decode_attention, encode_attention


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_error_is_half_a_step_and_recorded(rng):
    temperature = rng.uniform(0.1, 8.0, (3, 4, 1, 1))
    attention = _softmax(rng.normal(0, 1, (3, 4, 20, 20)) * temperature).astype(np.float32)
    codes, steps, error = encode_attention(attention)
    assert codes.dtype == np.uint8 and steps.dtype == np.float32 and error.shape == (3, 4)
    decoded = decode_attention(codes, steps)
    worst = np.abs(decoded - attention).max(axis=(-2, -1))
    np.testing.assert_array_equal(error, worst)
    # Half a step of each row, the step being the row's largest weight / 255 or the floor.
    row_error = np.abs(decoded - attention).max(-1)
    want_steps = np.maximum(attention.max(-1) / CODE_MAX, STEP_FLOOR)
    np.testing.assert_allclose(steps, want_steps, rtol=1e-6)
    assert (row_error <= steps / 2 * (1 + 1e-5) + 1e-9).all()
    assert error.max() <= 0.5 / CODE_MAX + 1e-7


def test_flat_rows_are_exact_to_the_floor_and_odd_values_clipped():
    flat = np.full((1, 50), 1 / 50, np.float32)
    codes, steps, error = encode_attention(flat)
    assert steps[0] == np.float32(STEP_FLOOR) and error <= STEP_FLOOR / 2
    codes, steps, _ = encode_attention(np.array([[0.0, 1.0, 1.5, -0.1, np.nan]]))
    assert codes.tolist() == [[0, CODE_MAX, CODE_MAX, 0, 0]]
