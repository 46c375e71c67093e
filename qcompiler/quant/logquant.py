"""The log2 and log√2 quantizers for attention probabilities (notes/algorithms.md §3).

qcompiler definition (b bits, scale s > 0, d = 2 steps per octave for log√2, d = 1 for log2):

- Z = 2^b − 1 is the **reserved zero/underflow code**. Codes k = 0 … Z−1 stand for the levels
  s·2^(−k/d); code Z stands for 0. Codes fit in b bits (stored as uint8, so b ≤ 8).
- **Reference codes** (float64): k = round(−d·log2(x/s)), half to even; code = Z when x ≤ 0 or
  k > Z−1 (underflow), else max(k, 0) (x above the top threshold saturates to level 0, the value s).
- **Threshold codes** (comparisons only, what the ONNX simulation computes): with the geometric
  midpoints t_k = s·2^(−(2k+1)/(2d)), k = 0 … Z−1 (log√2: s·2^(−(2k+1)/4); log2: s·2^(−k−1/2)),
  code = #{k : t_k > x}. It is Z for x ≤ 0 and never exceeds Z. The two codings agree except at
  exact ties, where threshold coding picks the larger level (code k at x = t_k) and the reference
  rounds k + ½ half to even. The thresholds are irrational, so a tie means x equal to the float64
  threshold itself: there −d·log2(x/s) is exactly k + ½ in float64 for k ≥ 1, so the codes differ
  by one at odd k (k = 0: log√2 differs too, its log lands an ulp above ½; tested). No float32
  value comes that close: at s = 1 the float32 grid stays ≥ 1.47e-8 (relative) from every t_k,
  far beyond float64 log error, so on float32 inputs (softmax outputs) the codings are equal.
  NaN is code Z by the reference and 0 by comparison (NaN < t is false); softmax never makes it.
- **float32 thresholds** for graphs: each float64 t_k rounded *up* to float32 (the smallest
  float32 ≥ t_k). For float32 x, ``x < T_k`` in float32 is then exactly the float64 comparison
  x < t_k, so an ONNX ``Less`` reproduces the threshold codes bit for bit. Rounding to nearest
  would not: it misses at x = T_k whenever T_k < t_k (every bit width fails the test then).
- **Dequantization** by level table: level[k] = s·2^(−k/d) for k < Z, level[Z] = 0. For log√2 the
  table is built in shift form, 2^(−k/2) = 2^(−⌈k/2⌉)·(√2 if k odd), which equals the float64
  power bitwise for every k < 256 (tested) and is what the shift-form kernel
  (qcompiler/backends/reference/log_matmul.py) multiplies by.
- **Scale**: s = 1 for softmax outputs (probabilities never exceed 1); a calibrated maximum is
  allowed (:meth:`LogQuantizer.calibrated`).
- **RepQ-ViT convention** (``repq_compat``, SIMULATION ONLY): RepQ-ViT's ``LogSqrt2Quantizer``
  and AdaLog clamp k to [0, 2^b − 1] and zero x with a separate mask k ≥ 2^b. That is 2^b non-zero
  levels plus zero, b + 1 bits of state, which no b-bit storage holds. It differs from the
  reserved-code convention only where k = 2^b − 1: RepQ-ViT keeps the level s·2^(−(2^b−1)/d),
  qcompiler codes it as Z = 0. Use it to reproduce paper numbers, never for a deployed model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.quant.spec import QuantizerKind

__all__ = ["LOG_KINDS", "MAX_LOG_BITS", "LogQuantizer", "unit_levels"]

LOG_KINDS: dict[QuantizerKind, int] = {QuantizerKind.LOG_SQRT2: 2, QuantizerKind.LOG2: 1}
"""Steps per octave d of each log quantizer: level k is s·2^(−k/d)."""

MAX_LOG_BITS = 8
"""Codes are stored as uint8."""


@dataclass(frozen=True)
class LogQuantizer:
    """A b-bit log2 or log√2 quantizer with scale s and reserved zero code Z = 2^b − 1."""

    kind: QuantizerKind = QuantizerKind.LOG_SQRT2
    bits: int = 4
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LOG_KINDS:
            raise ValueError(
                f"{self.kind.value} is not a log quantizer; expected log2 or log-sqrt2"
            )
        if not 2 <= self.bits <= MAX_LOG_BITS:
            raise ValueError(f"log quantizer bits must be in [2, {MAX_LOG_BITS}], got {self.bits}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"the scale must be finite and positive, got {self.scale}")

    @classmethod
    def calibrated(cls, kind: QuantizerKind, bits: int, samples: np.ndarray) -> LogQuantizer:
        """A quantizer whose level 0 is the largest calibration sample (instead of s = 1)."""
        return cls(kind, bits, float(np.max(samples)))

    @property
    def steps_per_octave(self) -> int:
        return LOG_KINDS[self.kind]

    @property
    def zero_code(self) -> int:
        """Z = 2^b − 1: the code of 0 and of every value below the last threshold."""
        return 2**self.bits - 1

    def levels(self) -> np.ndarray:
        """float64 [Z + 1]: level[k] = s·2^(−k/d) for k < Z, level[Z] = 0."""
        return np.append(self.scale * unit_levels(self.kind, self.zero_code), 0.0)

    def thresholds(self) -> np.ndarray:
        """float64 [Z], decreasing: t_k = s·2^(−(2k+1)/(2d)), between levels k and k + 1."""
        exponents = (2 * np.arange(self.zero_code) + 1) / (2 * self.steps_per_octave)
        return self.scale * np.exp2(-exponents)

    def float32_thresholds(self) -> np.ndarray:
        """float32 [Z]: each float64 threshold rounded up to float32 (the smallest float32 ≥ t_k),
        so for float32 x, ``x < T_k`` in float32 is exactly the float64 comparison x < t_k."""
        thresholds = self.thresholds()
        rounded = thresholds.astype(np.float32)
        below = rounded.astype(np.float64) < thresholds
        return np.where(below, np.nextafter(rounded, np.float32(np.inf)), rounded)

    def reference_codes(self, x: np.ndarray) -> np.ndarray:
        """uint8 codes from the float64 log: round(−d·log2(x/s)) half to even, zero → Z."""
        exponent = self._rounded_exponent(x)
        codes = np.where(exponent > self.zero_code - 1, self.zero_code, np.maximum(exponent, 0))
        return codes.astype(np.uint8)

    def threshold_codes(self, x: np.ndarray) -> np.ndarray:
        """uint8 codes #{k : t_k > x} by comparison in float64 (equal to the reference except at
        exact ties, see the module doc)."""
        ascending = self.thresholds()[::-1]
        x64 = np.asarray(x, dtype=np.float64)
        return (self.zero_code - np.searchsorted(ascending, x64, side="right")).astype(np.uint8)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        """float64 values of ``codes`` by level table (code Z → 0)."""
        if np.any(codes > self.zero_code):
            raise ValueError(f"codes exceed Z = {self.zero_code} for {self.bits} bits")
        return self.levels()[codes]

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """float64 dequantized reference codes: the values the quantized tensor stands for."""
        return self.dequantize(self.reference_codes(x))

    def repq_compat_fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """SIMULATION ONLY: RepQ-ViT's convention, 2^b non-zero levels plus a separate zero mask
        (b + 1 bits of state; see the module doc). float64 values."""
        exponent = self._rounded_exponent(x)
        top = 2**self.bits - 1
        levels = self.scale * unit_levels(self.kind, top + 1)
        return np.where(exponent > top, 0.0, levels[np.clip(exponent, 0, top).astype(np.int64)])

    def _rounded_exponent(self, x: np.ndarray) -> np.ndarray:
        """round(−d·log2(x/s)) (half to even) in float64; +inf where x ≤ 0 or x is NaN."""
        x64 = np.asarray(x, dtype=np.float64)
        positive = x64 > 0
        ratio = np.where(positive, x64 / self.scale, 1.0)
        exponent = np.rint(-self.steps_per_octave * np.log2(ratio))
        return np.where(positive, exponent, np.inf)


def unit_levels(kind: QuantizerKind, count: int) -> np.ndarray:
    """float64 2^(−k/d) for k < ``count``; log√2 in shift form 2^(−⌈k/2⌉)·(√2 if k odd)."""
    k = np.arange(count)
    if LOG_KINDS[kind] == 1:
        return np.ldexp(1.0, -k)
    return np.ldexp(np.where(k % 2 == 1, np.sqrt(2.0), 1.0), -((k + 1) // 2))
