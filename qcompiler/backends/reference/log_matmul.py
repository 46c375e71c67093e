"""A·V in shift form for log-quantized attention probabilities (notes/algorithms.md §3).

Inputs: the codes q of A (rows of attention probabilities, :class:`LogQuantizer` with scale s and
d steps per octave, code Z = zero) and V quantized uniformly as V = s_v·(v − z_v) with uint8 codes
v. A level is s·2^(−q/d), and for log√2 2^(−q/2) = 2^(−⌈q/2⌉)·(√2 if q odd), so with
F = ⌈(Z−1)/d⌉ fraction bits (the largest shift) both partial sums are exact integers:

    E = Σ_{j: q_j even} (v_j − z_v)·2^(F − q_j/2)
    O = Σ_{j: q_j odd}  (v_j − z_v)·2^(F − (q_j+1)/2)

(code Z skipped), and A·V = s·s_v·2^(−F)·(E + √2·O): one √2 multiply per output, not per element.
For log2 (d = 1) every level is a power of two, F = Z − 1 and O = 0.

E and O are numpy int64, and they must stay below 2^53 so that they convert to float64 exactly:
|E|, |O| ≤ 2^F·max|v − z_v|·K for rows of K elements. Bit widths that break this are refused
(log√2: b ≤ 6 fits, F = 31 at b = 6; b = 8 needs F = 127; log2: b ≤ 5). An 8-bit log√2 kernel has
to define a truncation, which is a different quantizer.

This is the form the CUDA backend will run; ONNX Runtime has no log-quantizer kernel, so the ORT
graph is a float simulation (passes/quantize/softmax_log.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.quant.logquant import LogQuantizer

EXACT_FLOAT_BITS = 53
"""float64 represents every integer below 2^53 exactly."""

V_CODE_RANGE = (0, 255)
"""V's codes are uint8."""


@dataclass(frozen=True)
class ShiftAccumulators:
    """The exact integer partial sums of A·V: A·V = s·s_v·2^(−F)·(even + √2·odd)."""

    even: np.ndarray
    odd: np.ndarray
    fraction_bits: int


def fraction_bits(quantizer: LogQuantizer) -> int:
    """F = ⌈(Z−1)/d⌉: the right shift of the smallest non-zero level."""
    return -(-(quantizer.zero_code - 1) // quantizer.steps_per_octave)


def shift_accumulators(
    codes: np.ndarray, quantizer: LogQuantizer, v: np.ndarray, v_zero_point: int
) -> ShiftAccumulators:
    """E and O (int64, shape [..., M, N]) for A codes [..., M, K] and uint8 V codes [..., K, N]."""
    _check_operands(codes, quantizer, v)
    shift_bits = fraction_bits(quantizer)
    _require_exact(quantizer, shift_bits, codes.shape[-1], v_zero_point)
    q = codes.astype(np.int64)
    live = q != quantizer.zero_code
    shifts = np.where(live, shift_bits - _ceil_div(q, quantizer.steps_per_octave), 0)
    weights = np.where(live, np.left_shift(np.int64(1), shifts), 0)
    odd = live & (q % 2 == 1) if quantizer.steps_per_octave == 2 else np.zeros_like(live)
    centered = v.astype(np.int64) - v_zero_point
    even_sum = np.matmul(np.where(odd, 0, weights), centered)
    odd_sum = np.matmul(np.where(odd, weights, 0), centered)
    return ShiftAccumulators(even_sum, odd_sum, shift_bits)


def log_matmul(
    codes: np.ndarray,
    quantizer: LogQuantizer,
    v: np.ndarray,
    v_scale: float,
    v_zero_point: int,
) -> np.ndarray:
    """A·V in float64 from the shift form: s·s_v·2^(−F)·(E + √2·O)."""
    accumulators = shift_accumulators(codes, quantizer, v, v_zero_point)
    combined = accumulators.even.astype(np.float64) + np.sqrt(2.0) * accumulators.odd
    return np.ldexp(quantizer.scale * v_scale, -accumulators.fraction_bits) * combined


def _ceil_div(q: np.ndarray, d: int) -> np.ndarray:
    return -(-q // d)


def _check_operands(codes: np.ndarray, quantizer: LogQuantizer, v: np.ndarray) -> None:
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"A's codes must be integers, got {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() > quantizer.zero_code):
        raise ValueError(f"A's codes must be in [0, {quantizer.zero_code}]")
    if v.dtype != np.uint8:
        raise TypeError(f"V's codes must be uint8, got {v.dtype}")
    if codes.shape[-1] != v.shape[-2]:
        raise ValueError(f"A is [..., M, {codes.shape[-1]}] but V is [..., {v.shape[-2]}, N]")


def _require_exact(
    quantizer: LogQuantizer, shift_bits: int, row_length: int, v_zero_point: int
) -> None:
    """Refuse bit widths whose |E|, |O| ≤ 2^F·max|v − z_v|·K can reach 2^53."""
    low, high = V_CODE_RANGE
    if not low <= v_zero_point <= high:
        raise ValueError(f"V's zero point must be in [{low}, {high}], got {v_zero_point}")
    largest_step = max(v_zero_point - low, high - v_zero_point)
    bound = (1 << shift_bits) * largest_step * row_length
    if bound >= 1 << EXACT_FLOAT_BITS:
        raise ValueError(
            f"{quantizer.bits}-bit {quantizer.kind.value} needs {shift_bits} fraction bits: E and "
            f"O can reach 2^{np.log2(float(bound)):.1f} (rows of {row_length}), beyond the "
            f"{EXACT_FLOAT_BITS} bits float64 holds exactly; this kernel is exact only for "
            "narrower codes (an 8-bit log√2 kernel must define a truncation, notes §3)"
        )
