"""Calibration observers: streaming statistics that turn batches of a tensor into a range.

Each ``update(x)`` reduces one batch into running statistics (min/max, a histogram), so memory does
not depend on the number of batches, and a tensor's batches may differ in every dimension but the
channel axis. ``range()`` gives (rmin, rmax): shape () per tensor, (C,) per channel along ``axis``
(statistics over all other axes; negative axes count from the end).

Observers (notes/algorithms.md §12):

- **MinMax**: running min and max. Streaming is exact.
- **Percentile**: the p-th percentile of |x| as ±T when symmetric, else the (100 − p)/200 and
  1 − (100 − p)/200 quantiles of x, read from a :class:`StreamingHistogram` by linear
  interpolation inside the bin.
- **Entropy**: TensorRT's KL threshold over a histogram of |x| with ``bins`` bins and
  2^(bits−1) levels (:func:`qcompiler.quant.clipping.kl_threshold`). Per tensor only.
- **MSE**: the range (shrunk from min/max) that minimizes the expected quantization error of the
  spec's grid on the histogram (:func:`qcompiler.quant.clipping.mse_optimal_range`).
- **Dual clip**: RepQuant's per-channel dual clipping, the lower and upper clips searched
  independently for the least expected MSE (:func:`qcompiler.quant.clipping.dual_clip_range`).

Histogram-based ranges are clipped to the observed [min, max], so they never exceed MinMax.

**Excluded values** (§12, §19 traps 9 and 10). Values with |x| ≥ 1e30 are *sentinels* (the
−3.4028e38 fill of masked attention scores): min/max over them would give s ≈ 1.3e36 and collapse
every real value onto one code. ±inf would make s infinite. Both are left out of the statistics
and counted in :class:`ObserverStats` (``sentinel_count``, ``inf_count``), so the planner can
refuse to quantize a tensor that carries a sentinel. NaN raises :class:`NonFiniteCalibrationError`
(ORT's calibrator silently drops it). A channel (or tensor) with no counted values has the range
(0, 0), which :func:`qcompiler.quant.uniform.compute_params` turns into a degenerate (s = 1) grid;
``stats.count`` tells the two apart.

**State.** ``state()`` is a flat dict of str, int, float, bool and (nested) lists of numbers, so
both ``json.dumps`` and ``np.savez(**state)`` store it (a channel with no values keeps ±inf as its
running min/max, which Python's json writes as ±Infinity). :func:`observer_from_state` rebuilds
the observer from either form, and further updates continue exactly where the original left off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.quant.clipping import dual_clip_range, kl_threshold, mse_optimal_range
from qcompiler.quant.histogram import StreamingHistogram, require_valid_bins
from qcompiler.quant.spec import QuantizerKind, QuantSpec

__all__ = [
    "SENTINEL_MAGNITUDE",
    "EntropyObserver",
    "MSEObserver",
    "MinMaxObserver",
    "NonFiniteCalibrationError",
    "Observer",
    "ObserverStats",
    "PercentileObserver",
    "StreamingHistogram",
    "make_observer",
    "observer_from_state",
]

SENTINEL_MAGNITUDE = 1e30
"""Finite values with |x| at least this large are sentinels, not data."""


class NonFiniteCalibrationError(QCompilerError):
    """Calibration data held NaN. ``in_tensor(name)`` gives the same error naming the tensor."""

    def __init__(self, nan_count: int, size: int, tensor: str | None = None) -> None:
        self.nan_count = nan_count
        self.size = size
        self.tensor = tensor
        where = f" in tensor '{tensor}'" if tensor else ""
        super().__init__(
            f"NaN{where}: {nan_count} of {size} calibration values are NaN; check the "
            "calibration data and the model's float outputs on it"
        )

    def in_tensor(self, name: str) -> NonFiniteCalibrationError:
        return NonFiniteCalibrationError(self.nan_count, self.size, name)


@dataclass
class ObserverStats:
    """What an observer has seen: values counted, sentinels and infinities left out, batches."""

    count: int = 0
    sentinel_count: int = 0
    inf_count: int = 0
    batches: int = 0

    @property
    def has_sentinel(self) -> bool:
        return self.sentinel_count > 0

    def add(self, other: ObserverStats) -> None:
        self.count += other.count
        self.sentinel_count += other.sentinel_count
        self.inf_count += other.inf_count
        self.batches += other.batches


class Observer(Protocol):
    """A streaming reduction of a tensor's calibration batches into a range."""

    stats: ObserverStats

    def update(self, x: np.ndarray) -> None: ...

    def range(self) -> tuple[np.ndarray, np.ndarray]: ...

    def state(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Batch:
    """One batch as rows (C, M), one per channel, and the mask of values that count."""

    rows: np.ndarray
    valid: np.ndarray | None
    """None when every value counts."""

    def stats(self) -> ObserverStats:
        counted = self.rows.size if self.valid is None else int(np.count_nonzero(self.valid))
        infinite = 0 if self.valid is None else int(np.count_nonzero(np.isinf(self.rows)))
        return ObserverStats(counted, self.rows.size - counted - infinite, infinite, 1)


class MinMaxObserver:
    """Running min and max, per tensor or per channel along ``axis``."""

    name: ClassVar[str] = "minmax"

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.stats = ObserverStats()
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        batch = self._screen(x)
        self._absorb(batch)
        self.stats.add(batch.stats())

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        return self._shaped(*self._observed())

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "observer": self.name,
            "count": self.stats.count,
            "sentinel_count": self.stats.sentinel_count,
            "inf_count": self.stats.inf_count,
            "batches": self.stats.batches,
        }
        if self.axis is not None:
            state["axis"] = self.axis
        if self._min is not None and self._max is not None:
            state["min"] = self._min.tolist()
            state["max"] = self._max.tolist()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MinMaxObserver:
        observer = cls(axis=_axis_from_state(state))
        observer._restore(state)
        return observer

    def _restore(self, state: dict[str, Any]) -> None:
        self.stats = ObserverStats(
            int(state["count"]),
            int(state["sentinel_count"]),
            int(state["inf_count"]),
            int(state["batches"]),
        )
        if "min" in state:
            self._min = np.asarray(state["min"], dtype=np.float32).reshape(-1)
            self._max = np.asarray(state["max"], dtype=np.float32).reshape(-1)

    @property
    def channels(self) -> int | None:
        """C once the first batch fixed it (1 per tensor)."""
        return None if self._min is None else len(self._min)

    def _screen(self, x: np.ndarray) -> _Batch:
        """Rows per channel and the mask of counted values; raises on NaN or a channel mismatch."""
        values = np.asarray(x, dtype=np.float32)
        nan_count = int(np.count_nonzero(np.isnan(values)))
        if nan_count:
            raise NonFiniteCalibrationError(nan_count, values.size)
        rows = self._rows(values)
        if self.channels is not None and rows.shape[0] != self.channels:
            raise ValueError(
                f"axis {self.axis} has {rows.shape[0]} channels in this batch, "
                f"{self.channels} before"
            )
        valid = np.abs(rows) < SENTINEL_MAGNITUDE
        return _Batch(rows, None if valid.all() else valid)

    def _rows(self, values: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return values.reshape(1, -1)
        if not -values.ndim <= self.axis < values.ndim:
            raise ValueError(f"axis {self.axis} is out of range for shape {values.shape}")
        return np.moveaxis(values, self.axis, 0).reshape(values.shape[self.axis], -1)

    def _absorb(self, batch: _Batch) -> None:
        rows = batch.rows
        low = rows if batch.valid is None else np.where(batch.valid, rows, np.inf)
        high = rows if batch.valid is None else np.where(batch.valid, rows, -np.inf)
        batch_min = low.min(axis=1, initial=np.inf)
        batch_max = high.max(axis=1, initial=-np.inf)
        if self._min is None or self._max is None:
            self._min, self._max = batch_min, batch_max
        else:
            self._min = np.minimum(self._min, batch_min)
            self._max = np.maximum(self._max, batch_max)

    def _observed(self) -> tuple[np.ndarray, np.ndarray]:
        """Running (min, max) per channel, (0, 0) where nothing was counted."""
        if self._min is None or self._max is None:
            return np.zeros(1, np.float32), np.zeros(1, np.float32)
        empty = self._min > self._max
        return np.where(empty, 0, self._min), np.where(empty, 0, self._max)

    def _shaped(self, rmin: np.ndarray, rmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (C,) per channel, () per tensor."""
        rmin, rmax = rmin.astype(np.float32), rmax.astype(np.float32)
        if self.axis is None:
            return rmin.reshape(()), rmax.reshape(())
        return rmin, rmax


class _HistogramObserver(MinMaxObserver):
    """MinMax plus a streaming histogram with ``histogram_bins`` signed bins per channel."""

    def __init__(self, histogram_bins: int, axis: int | None = None) -> None:
        super().__init__(axis)
        require_valid_bins(histogram_bins)
        self.histogram_bins = histogram_bins
        self.histogram: StreamingHistogram | None = None

    def state(self) -> dict[str, Any]:
        state = super().state()
        if self.histogram is not None:
            state["histogram_counts"] = self.histogram.counts.tolist()
            state["histogram_exponents"] = self.histogram.exponents.tolist()
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        if "histogram_counts" in state:
            self.histogram = StreamingHistogram.from_counts(
                np.asarray(state["histogram_counts"]), np.asarray(state["histogram_exponents"])
            )

    def _absorb(self, batch: _Batch) -> None:
        super()._absorb(batch)
        if self.histogram is None:
            self.histogram = StreamingHistogram(self.histogram_bins, channels=batch.rows.shape[0])
        self.histogram.update(batch.rows, batch.valid)

    def _within_observed(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rmin, rmax = self._observed()
        return self._shaped(np.clip(low, rmin, rmax), np.clip(high, rmin, rmax))


class PercentileObserver(_HistogramObserver):
    """The central ``percentile`` % of x (or of |x| when ``symmetric``), on ``bins`` bins."""

    name: ClassVar[str] = "percentile"

    def __init__(
        self, percentile: float, symmetric: bool, axis: int | None = None, bins: int = 2048
    ) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(bins, axis)
        self.percentile = percentile
        self.symmetric = symmetric

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.histogram is None:
            return self._shaped(*self._observed())
        if self.symmetric:
            threshold = self.histogram.abs_quantile(self.percentile / 100.0)
            return self._within_observed(-threshold, threshold)
        tail = (100.0 - self.percentile) / 200.0
        low = self.histogram.signed_quantile(tail)
        return self._within_observed(low, self.histogram.signed_quantile(1.0 - tail))

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "bins": self.histogram_bins,
            "percentile": self.percentile,
            "symmetric": self.symmetric,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PercentileObserver:
        observer = cls(
            float(state["percentile"]),
            bool(state["symmetric"]),
            _axis_from_state(state),
            int(state["bins"]),
        )
        observer._restore(state)
        return observer


class EntropyObserver(_HistogramObserver):
    """TensorRT's KL threshold for a ``bits``-bit grid over ``bins`` bins of |x|; per tensor."""

    name: ClassVar[str] = "entropy"

    def __init__(self, bits: int = 8, bins: int = 2048) -> None:
        if bins < 2 ** (bits - 1):
            raise ValueError(f"KL over {bits} bits needs at least {2 ** (bits - 1)} bins")
        super().__init__(2 * bins)
        self.bits = bits
        self.bins = bins

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.histogram is None:
            return self._shaped(*self._observed())
        abs_counts = self.histogram.abs_counts()[0]
        threshold = kl_threshold(abs_counts, float(self.histogram.bin_width[0]), self.bits)
        return self._within_observed(np.array([-threshold]), np.array([threshold]))

    def state(self) -> dict[str, Any]:
        return {**super().state(), "bits": self.bits, "bins": self.bins}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EntropyObserver:
        observer = cls(int(state["bits"]), int(state["bins"]))
        observer._restore(state)
        return observer


class MSEObserver(_HistogramObserver):
    """The range minimizing the expected quantization MSE of ``spec``'s grid, on ``bins`` bins."""

    name: ClassVar[str] = "mse"

    def __init__(self, spec: QuantSpec, bins: int = 2048, axis: int | None = None) -> None:
        if spec.kind is not QuantizerKind.UNIFORM:
            raise NotImplementedError(f"MSE search for the {spec.kind.value} quantizer")
        super().__init__(bins, axis)
        self.spec = spec

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        rmin, rmax = self._observed()
        if self.histogram is None:
            return self._shaped(rmin, rmax)
        return self._within_observed(*mse_optimal_range(self.histogram, rmin, rmax, self.spec))

    def state(self) -> dict[str, Any]:
        spec = json.dumps(self.spec.to_json())
        return {**super().state(), "bins": self.histogram_bins, "spec": spec}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MSEObserver:
        spec = QuantSpec.from_json(json.loads(str(state["spec"])))
        observer = cls(spec, int(state["bins"]), _axis_from_state(state))
        observer._restore(state)
        return observer


class DualClipObserver(MSEObserver):
    """Per-channel independent lower and upper clips minimizing the expected MSE (RepQuant's
    dual clipping, :func:`~qcompiler.quant.clipping.dual_clip_range`)."""

    name: ClassVar[str] = "dual-clip"

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        rmin, rmax = self._observed()
        if self.histogram is None:
            return self._shaped(rmin, rmax)
        return self._within_observed(*dual_clip_range(self.histogram, rmin, rmax, self.spec))


OBSERVER_TYPES: dict[str, type[MinMaxObserver]] = {
    kind.name: kind
    for kind in (
        MinMaxObserver,
        PercentileObserver,
        EntropyObserver,
        MSEObserver,
        DualClipObserver,
    )
}


def make_observer(spec: QuantSpec, axis: int | None = None) -> Observer:
    """The observer ``spec.observer`` names, keeping channels along ``axis``.

    ``axis`` defaults to the spec's own axis when it is per-channel, else per tensor; pass it to
    collect per-channel statistics for a tensor quantized per tensor. Per-group specs have no
    streaming statistics (their weights are read whole).
    """
    if spec.granularity.kind == "per-group":
        raise ValueError("per-group specs are calibrated from the weight itself, not observed")
    if axis is None and spec.granularity.kind == "per-channel":
        axis = spec.granularity.axis
    if spec.observer == "minmax":
        return MinMaxObserver(axis)
    if spec.observer == "percentile":
        return PercentileObserver(spec.percentile, spec.symmetric, axis)
    if spec.observer == "mse":
        return MSEObserver(spec, axis=axis)
    if spec.observer == "dual-clip":
        return DualClipObserver(spec, axis=axis)
    if axis is not None:
        raise ValueError("the entropy (KL) observer is per tensor only")
    return EntropyObserver(bits=spec.bits)


def observer_from_state(state: dict[str, Any]) -> Observer:
    """Rebuild an observer from ``state()`` (after a JSON or npz round trip)."""
    name = str(state["observer"])
    if name not in OBSERVER_TYPES:
        raise ValueError(f"unknown observer {name!r} in saved state")
    return OBSERVER_TYPES[name].from_state(state)


def _axis_from_state(state: dict[str, Any]) -> int | None:
    return int(state["axis"]) if "axis" in state else None
