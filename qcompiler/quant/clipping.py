"""Clipping ranges chosen on a histogram: KL divergence and expected MSE (algorithms.md §12).

**KL threshold.** On a histogram of |x| with K bins of width w, and L = 2^(bits−1) quantized
levels, every i = L, ..., K is a candidate threshold T = i·w (the upper edge of bin i − 1):

- P = hist[:i], with the mass beyond the threshold added to P[i − 1];
- Q = hist[:i] merged into L groups (bin j → group ⌊j·L/i⌋, the exact form of TensorRT's
  ``np.digitize(range(i), linspace(0, i, L + 1))``), each group's mass spread evenly over its
  *non-empty* source bins;
- both normalized; KL(P‖Q) = Σ P·log(P/Q) over P > 0 (infinite where Q = 0 < P).

The threshold minimizes KL (first minimum on ties). TensorRT's histogram ends at max |x|; ours
ends at R ≥ max |x| (:mod:`qcompiler.quant.histogram`), so candidates stop at the last non-empty
bin: a threshold beyond the data clips nothing, and its KL only measures merging, which would
otherwise let it win (on N(0, 1) it did: 5.37 > max |x| = 5.35).

ORT's entropy calibrator with its defaults (128 bins, 128 levels) has one candidate and
degenerates to MinMax (§19 trap 21); this observer must not.

**MSE-optimal range.** For a candidate range the grid has step s and clip points
lo = (qmin − z)·s, hi = (qmax − z)·s (from :func:`qcompiler.quant.uniform.scale_and_zero_point`).
With the density uniform inside each bin [a, b) of mass n, the expected squared error is

  E(lo, hi) = Σ n·[ overlap([a, b), [lo, hi])/(b − a) · s²/12
                   + ((b − hi)₊³ − (a − hi)₊³)/(3(b − a))
                   + ((lo − a)₊³ − (lo − b)₊³)/(3(b − a)) ] / N

(uniform rounding noise inside, exact clipping error outside; §12 says this gives the same
optimum as the exact Gaussian integral to 4 digits at b ≥ 3). Candidates shrink the observed
range (widened to include 0) by a factor c ∈ (0, 1]: a grid of ``COARSE_STEPS`` factors, then a
finer grid of the same size across the best coarse step's neighbourhood, so c is resolved to
1/(COARSE_STEPS²/2) of the observed range. Rows (channels) are searched independently. Prefix
sums (:class:`BinMoments`) make each candidate O(1), so 1536 channels × 2048 bins take ~1.5 s.

**Dual clipping** (RepQuant, §4) searches the lower and the upper clip of each row
independently: factors (a, b) over a 2-D grid instead of one shared c, for asymmetric channels
(a long upper tail and a short lower one) whose best clip differs per side.
"""

from __future__ import annotations

import numpy as np

from qcompiler.quant.histogram import StreamingHistogram
from qcompiler.quant.spec import QuantSpec
from qcompiler.quant.uniform import scale_and_zero_point

COARSE_STEPS = 128
DUAL_STEPS = 32


def kl_threshold(abs_counts: np.ndarray, bin_width: float, bits: int) -> float:
    """The |x| threshold minimizing KL(P‖Q) over a histogram of |x| (0 when it is empty)."""
    levels = 2 ** (bits - 1)
    if abs_counts.ndim != 1 or len(abs_counts) < levels:
        raise ValueError(f"KL needs a 1-D |x| histogram of at least {levels} bins")
    hist = abs_counts.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    beyond = total - np.cumsum(hist)
    nonempty = hist > 0
    last = max(int(np.flatnonzero(nonempty)[-1]) + 1, levels)
    divergences = [
        _kl_divergence(hist[:i], nonempty[:i], beyond[i - 1], levels)
        for i in range(levels, last + 1)
    ]
    return float((levels + int(np.argmin(divergences))) * bin_width)


def _kl_divergence(head: np.ndarray, nonempty: np.ndarray, beyond: float, levels: int) -> float:
    """KL(P‖Q) for the candidate that keeps the bins ``head``."""
    groups = (np.arange(len(head)) * levels) // len(head)
    merged = np.bincount(groups, weights=head, minlength=levels)
    occupied = np.bincount(groups, weights=nonempty, minlength=levels)
    q = np.where(nonempty, merged[groups] / np.maximum(occupied[groups], 1.0), 0.0)
    p = head.copy()
    p[-1] += beyond
    support = p > 0
    if q.sum() == 0 or np.any(q[support] == 0):
        return float("inf")
    p, q = p[support] / p.sum(), q[support] / q.sum()
    return float(np.sum(p * np.log(p / q)))


def mse_optimal_range(
    histogram: StreamingHistogram, rmin: np.ndarray, rmax: np.ndarray, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row range (c·rmin, c·rmax) minimizing the expected quantization MSE of ``spec``'s grid.

    ``rmin``/``rmax`` (C,) are the observed ranges, widened here to include 0.
    """
    low = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)[:, None]
    high = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)[:, None]
    moments = BinMoments(histogram)
    factors = np.arange(1, COARSE_STEPS + 1)[None, :] / COARSE_STEPS
    best = _best_factor(moments, low, high, spec, factors)
    offsets = np.linspace(-1.0, 1.0, COARSE_STEPS + 1)[None, :] / COARSE_STEPS
    factors = np.clip(best + offsets, 1.0 / COARSE_STEPS**2, 1.0)
    best = _best_factor(moments, low, high, spec, factors)
    return (best * low)[:, 0], (best * high)[:, 0]


def dual_clip_range(
    histogram: StreamingHistogram, rmin: np.ndarray, rmax: np.ndarray, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (a·rmin, b·rmax) with **independent** factors a, b ∈ (0, 1] minimizing the
    expected MSE: RepQuant's per-channel dual clipping (notes/algorithms.md §4), searched on a
    ``DUAL_STEPS``² grid of (a, b), then on a grid of the same step count across the best
    pair's neighbourhood (a and b resolved to 1/(DUAL_STEPS²/2) of the observed range)."""
    low = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)[:, None]
    high = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)[:, None]
    moments = BinMoments(histogram)
    steps = np.arange(1, DUAL_STEPS + 1) / DUAL_STEPS
    best_low, best_high = _best_pair(moments, low, high, spec, steps[None, :], steps[None, :])
    offsets = np.linspace(-1.0, 1.0, DUAL_STEPS // 2 + 1)[None, :] / DUAL_STEPS
    fine = (np.clip(best + offsets, 1.0 / DUAL_STEPS**2, 1.0) for best in (best_low, best_high))
    best_low, best_high = _best_pair(moments, low, high, spec, *fine)
    return (best_low * low)[:, 0], (best_high * high)[:, 0]


def _best_pair(
    moments: BinMoments,
    low: np.ndarray,
    high: np.ndarray,
    spec: QuantSpec,
    low_factors: np.ndarray,
    high_factors: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(C, 1) each: the (lower, upper) factor pair, over all pairs of the (C or 1, F) candidate
    lists, with the least expected MSE."""
    rows = low.shape[0]
    a = np.broadcast_to(low_factors, (rows, low_factors.shape[1]))[:, :, None]
    b = np.broadcast_to(high_factors, (rows, high_factors.shape[1]))[:, None, :]
    a, b = (np.broadcast_to(f, (rows, a.shape[1], b.shape[2])).reshape(rows, -1) for f in (a, b))
    errors = moments.expected_mse(a * low, b * high, spec)
    best = np.argmin(errors, axis=1)[:, None]
    return np.take_along_axis(a, best, axis=1), np.take_along_axis(b, best, axis=1)


def _best_factor(
    moments: BinMoments, low: np.ndarray, high: np.ndarray, spec: QuantSpec, factors: np.ndarray
) -> np.ndarray:
    """(C, 1): each row's factor, among ``factors`` (C or 1, F), with the least expected MSE."""
    factors = np.broadcast_to(factors, (low.shape[0], factors.shape[1]))
    errors = moments.expected_mse(factors * low, factors * high, spec)
    return np.take_along_axis(factors, np.argmin(errors, axis=1)[:, None], axis=1)


def expected_mse(
    histogram: StreamingHistogram, rmin: np.ndarray, rmax: np.ndarray, spec: QuantSpec
) -> np.ndarray:
    """Expected squared error (C,) of quantizing each row of the histogram to [rmin, rmax]."""
    moments = BinMoments(histogram)
    return moments.expected_mse(rmin[:, None], rmax[:, None], spec)[:, 0]


class BinMoments:
    """Prefix and suffix sums that give E(lo, hi) for many candidates in O(1) each.

    For a bin [a, b) of mass n, the clipping integrals of the whole bin beyond hi, or below lo,
    are the same polynomial in the clip point t:
    n·((b³ − a³) − 3t(b² − a²) + 3t²(b − a))/(3(b − a)).
    Summing n(b − a), n(b² − a²), n(b³ − a³) over the bins on either side of t leaves only the
    bin that holds t to integrate directly.
    """

    def __init__(self, histogram: StreamingHistogram) -> None:
        counts = histogram.counts.astype(np.float64)
        edges = histogram.edges()
        a, b = edges[:, :-1], edges[:, 1:]
        terms = np.stack(
            [counts * (b - a), counts * (b * b - a * a), counts * (b**3 - a**3), counts]
        )
        padding = np.zeros((*terms.shape[:2], 1))
        self.before = np.concatenate([padding, np.cumsum(terms, axis=2)], axis=2)
        """before[m][row, j]: sum of term m over the bins i < j."""
        after = np.cumsum(terms[:, :, ::-1], axis=2)[:, :, ::-1]
        self.after = np.concatenate([after, padding], axis=2)
        """after[m][row, j]: sum of term m over the bins i ≥ j."""
        self.counts = np.concatenate([counts, padding[0]], axis=1)
        self.lower_edges = edges
        self.width = histogram.bin_width[:, None]
        self.bins = histogram.bins
        self.total = np.maximum(histogram.total, 1)[:, None]

    def expected_mse(self, rmin: np.ndarray, rmax: np.ndarray, spec: QuantSpec) -> np.ndarray:
        """E for candidate ranges (C, F) → (C, F)."""
        scale, zero_point = scale_and_zero_point(
            rmin.astype(np.float32), rmax.astype(np.float32), spec.qmin, spec.qmax, spec.symmetric
        )
        lo = (spec.qmin - zero_point) * scale
        hi = (spec.qmax - zero_point) * scale
        inside = self._mass_below(hi) - self._mass_below(lo)
        error = inside * scale**2 / 12 + self._clipped_above(hi) + self._clipped_below(lo)
        return np.asarray(error / self.total)

    def _bin(self, value: np.ndarray) -> np.ndarray:
        """Index of the bin holding ``value``: −1 below the histogram, B above it."""
        index = np.floor(value / self.width) + self.bins // 2
        return np.clip(index, -1, self.bins).astype(np.int64)

    def _at(self, array: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.take_along_axis(array, np.clip(index, 0, self.bins), axis=1)

    def _mass_below(self, value: np.ndarray) -> np.ndarray:
        k = self._bin(value)
        partial = self._at(self.counts, k) * (value - self._at(self.lower_edges, k)) / self.width
        return self._at(self.before[3], k) + np.where(k >= 0, partial, 0.0)

    def _clipped_above(self, t: np.ndarray) -> np.ndarray:
        k = self._bin(t)
        whole = self._polynomial(self.after, k + 1, t)
        upper = self._at(self.lower_edges, k) + self.width
        partial = self._at(self.counts, k) * np.maximum(upper - t, 0.0) ** 3 / (3 * self.width)
        return whole + np.where(k >= 0, partial, 0.0)

    def _clipped_below(self, t: np.ndarray) -> np.ndarray:
        k = self._bin(t)
        whole = self._polynomial(self.before, k, t)
        lower = self._at(self.lower_edges, k)
        partial = self._at(self.counts, k) * np.maximum(t - lower, 0.0) ** 3 / (3 * self.width)
        return whole + np.where(k >= 0, partial, 0.0)

    def _polynomial(self, sums: np.ndarray, index: np.ndarray, t: np.ndarray) -> np.ndarray:
        linear, square, cube = (self._at(sums[m], index) for m in range(3))
        return (cube - 3 * t * square + 3 * t * t * linear) / (3 * self.width)
