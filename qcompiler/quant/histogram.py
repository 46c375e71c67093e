"""A streaming histogram whose merged result equals the one-shot one (notes/algorithms.md §12).

Each of C rows (one per channel; C = 1 per tensor) is a histogram of signed values over the
symmetric range [−R, R) with R = 2^e a power of two and B bins (a power of two) of width
w = 2R/B, also a power of two. A value x goes to bin ⌊x/w⌋ + B/2; x/w only shifts the exponent, so
binning is exact (done in float64, whose exponent range covers every float32 value).

When a batch holds |x| ≥ R, the row grows: R ← 2R, and the old bins 2m, 2m+1 are summed into the
new bin B/4 + m (new[B/4 : 3B/4] = old pairwise sums). The old edges are a subset of the new ones,
so the merged histogram **equals** the histogram of all the data binned at the final R, which is
the smallest power of two above max |x| (at least 2^MIN_EXPONENT). Counts are integers and memory
is C·B whatever the number of batches. ORT's calibrator instead extends by the old stride or
re-bins with float edges, which drift.

Quantiles read the cumulative counts and interpolate linearly inside the bin that holds the
target rank (ORT reads the bin's upper edge, one bin high at worst).
"""

from __future__ import annotations

import numpy as np

MIN_EXPONENT = -126
"""The smallest range is [−2^−126, 2^−126): float32's smallest normal magnitude."""


def require_valid_bins(bins: int) -> None:
    """Raise unless ``bins`` is a power of two ≥ 4 (so that B/4 bins are whole)."""
    if bins < 4 or bins & (bins - 1):
        raise ValueError(f"the number of bins must be a power of two ≥ 4, got {bins}")


class StreamingHistogram:
    """Per-row histograms of signed values on power-of-two ranges that only grow."""

    def __init__(self, bins: int = 2048, channels: int = 1) -> None:
        require_valid_bins(bins)
        if channels < 1:
            raise ValueError(f"a histogram needs at least one channel, got {channels}")
        self.bins = bins
        self.channels = channels
        self.counts = np.zeros((channels, bins), dtype=np.int64)
        self.exponents = np.full(channels, MIN_EXPONENT, dtype=np.int64)

    @classmethod
    def from_counts(cls, counts: np.ndarray, exponents: np.ndarray) -> StreamingHistogram:
        """Rebuild a histogram from its counts (C, B) and range exponents (C,), R = 2^exponent."""
        counts = np.asarray(counts, dtype=np.int64)
        exponents = np.asarray(exponents, dtype=np.int64)
        if counts.ndim != 2 or exponents.shape != counts.shape[:1]:
            raise ValueError(f"counts {counts.shape} and exponents {exponents.shape} do not match")
        histogram = cls(bins=counts.shape[1], channels=counts.shape[0])
        histogram.counts = counts.copy()
        histogram.exponents = exponents.copy()
        return histogram

    @property
    def radius(self) -> np.ndarray:
        """R per row: every value seen lies in [−R, R)."""
        return np.ldexp(1.0, self.exponents)

    @property
    def bin_width(self) -> np.ndarray:
        """w = 2R/B per row."""
        return np.ldexp(1.0, self.exponents + 1 - self._log2_bins)

    @property
    def total(self) -> np.ndarray:
        """Number of values per row."""
        return self.counts.sum(axis=1)

    def edges(self) -> np.ndarray:
        """Bin edges (C, B + 1): −R, −R + w, ..., R."""
        offsets = np.arange(self.bins + 1) - self.bins // 2
        return offsets[None, :] * self.bin_width[:, None]

    def abs_counts(self) -> np.ndarray:
        """The histogram of |x| (C, B/2) over [0, R) with the same w (bin k: |x| ∈ [kw, (k+1)w])."""
        half = self.bins // 2
        return self.counts[:, half:] + self.counts[:, half - 1 :: -1]

    def update(self, x: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add values: ``x`` reshapes to (C, M), one row per channel; ``valid`` masks what counts.

        Counted values must be finite. Rows grow first, so every value lands inside its range.
        """
        rows = np.asarray(x, dtype=np.float64).reshape(self.channels, -1)
        if valid is not None:
            rows = np.where(np.asarray(valid).reshape(rows.shape), rows, 0.0)
        absmax = np.abs(rows).max(axis=1, initial=0.0)
        if not np.all(np.isfinite(absmax)):
            raise ValueError("a histogram counts finite values only")
        needed = np.where(absmax > 0, np.frexp(absmax)[1], MIN_EXPONENT)
        self._grow(np.maximum(needed - self.exponents, 0))
        shift = self._log2_bins - 1 - self.exponents
        index = np.floor(np.ldexp(rows, shift[:, None])).astype(np.int64) + self.bins // 2
        index += (np.arange(self.channels) * self.bins)[:, None]
        flat = index.ravel() if valid is None else index[np.asarray(valid).reshape(rows.shape)]
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def signed_quantile(self, fraction: float) -> np.ndarray:
        """The value below which ``fraction`` of each row's values lie (0 for an empty row)."""
        return quantile(self.counts, self.edges(), fraction)

    def abs_quantile(self, fraction: float) -> np.ndarray:
        """The value below which ``fraction`` of each row's |x| lie (0 for an empty row)."""
        half = self.bins // 2
        return quantile(self.abs_counts(), self.edges()[:, half:], fraction)

    @property
    def _log2_bins(self) -> int:
        return self.bins.bit_length() - 1

    def _grow(self, doublings: np.ndarray) -> None:
        """Double R of each row ``doublings[row]`` times, merging bin pairs into the central half.

        After log2(B) doublings every value sits in one of the two central bins and further
        doublings change nothing, so the loop is bounded by log2(B).
        """
        quarter = self.bins // 4
        for step in range(min(int(doublings.max(initial=0)), self._log2_bins)):
            rows = doublings > step
            old = self.counts[rows]
            grown = np.zeros_like(old)
            grown[:, quarter : 3 * quarter] = old[:, 0::2] + old[:, 1::2]
            self.counts[rows] = grown
        self.exponents = self.exponents + doublings


def quantile(counts: np.ndarray, edges: np.ndarray, fraction: float) -> np.ndarray:
    """Per-row quantile of histograms ``counts`` (C, K) with ``edges`` (C, K + 1).

    The target rank t = fraction·N falls in the first bin k whose cumulative count reaches it
    (skipping leading empty bins); the result interpolates linearly inside bin k.
    """
    total = counts.sum(axis=1)
    target = fraction * total
    cumulative = np.cumsum(counts, axis=1)
    below = (cumulative < target[:, None]) | (cumulative == 0)
    k = np.minimum(below.sum(axis=1), counts.shape[1] - 1)
    rows = np.arange(counts.shape[0])
    in_bin = counts[rows, k]
    before = cumulative[rows, k] - in_bin
    share = np.divide(target - before, in_bin, out=np.zeros(len(k)), where=in_bin > 0)
    lower, upper = edges[rows, k], edges[rows, k + 1]
    value = lower + np.clip(share, 0.0, 1.0) * (upper - lower)
    return np.where(total > 0, value, 0.0)
