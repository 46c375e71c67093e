"""Quantization targets (:class:`QuantSpec`) and calibrated parameters (:class:`QuantParams`).

Notation follows notes/algorithms.md §0: a uniform affine quantizer with scale s > 0, integer zero
point z and integer range [qmin, qmax] maps q = clamp(round(x/s) + z), x̂ = (q − z)·s.

Integer ranges (§0, §19 trap 19; onnxruntime quant_utils.py ``ONNX_INT_TYPE_*RANGE``):

====================  ==========================  ==================
type                  plain / symmetric            ``reduce_range``
====================  ==========================  ==================
uint8                 [0, 255]                     [0, 127]
int8                  [−128, 127] / [−127, 127]    [−64, 64]
uint16                [0, 65535]                   [0, 32767]
int16                 [−32768, 32767] / ±32767     [−16384, 16384]
uint4                 [0, 15]                      [0, 7]
int4                  [−8, 7] / [−7, 7]            [−4, 3]
====================  ==========================  ==================

A symmetric signed type uses the restricted range ±(2^(b−1) − 1), so its grid is kΔ with
|k| ≤ 2^(b−1) − 1 (the grid of the closed-form MSE clips in §12). ORT restricts int8 and int16 the
same way; it has no restricted int4 entry, so our symmetric int4 ([−7, 7]) is one code narrower than
ORT's quantizer tool ([−8, 7]). Unsigned symmetric types keep the full range with z at the midpoint
(uint8: 128, uint4: 8, uint16: 32768). ``reduce_range`` takes precedence over ``symmetric``,
as in ORT. These ranges shape the *scale*; QuantizeLinear itself saturates to the type's full range
(see :func:`qcompiler.quant.uniform.quantize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

GranularityKind = Literal["per-tensor", "per-channel", "per-group"]

OBSERVERS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse", "dual-clip")

TYPE_RANGES: dict[ir.DataType, tuple[int, int]] = {
    ir.DataType.UINT8: (0, 255),
    ir.DataType.INT8: (-128, 127),
    ir.DataType.UINT16: (0, 65535),
    ir.DataType.INT16: (-32768, 32767),
    ir.DataType.UINT4: (0, 15),
    ir.DataType.INT4: (-8, 7),
}
"""The full range of each supported integer type: what QuantizeLinear saturates to."""

CODE_TYPES: dict[np.dtype[Any], ir.DataType] = {np.dtype(t.numpy()): t for t in TYPE_RANGES}
"""The integer type of codes and zero points of each numpy dtype (int8, ml_dtypes int4, ...)."""

REDUCED_RANGES: dict[ir.DataType, tuple[int, int]] = {
    ir.DataType.UINT8: (0, 127),
    ir.DataType.INT8: (-64, 64),
    ir.DataType.UINT16: (0, 32767),
    ir.DataType.INT16: (-16384, 16384),
    ir.DataType.UINT4: (0, 7),
    ir.DataType.INT4: (-4, 3),
}
"""ORT's ``reduce_range`` ranges (int8 really ends at +64; §19 trap 19)."""


def quant_range(
    dtype: ir.DataType, symmetric: bool, reduce_range: bool = False, grid_bits: int | None = None
) -> tuple[int, int]:
    """The integer range [qmin, qmax] that the scale is computed for (table in the module doc).

    ``grid_bits`` narrows it to a b-bit grid stored in ``dtype`` (6-bit codes in uint8):
    [0, 2^b − 1] unsigned, [−2^(b−1), 2^(b−1) − 1] signed (±(2^(b−1) − 1) when symmetric).
    """
    if dtype not in TYPE_RANGES:
        supported = ", ".join(t.name for t in TYPE_RANGES)
        raise ValueError(f"unsupported quantized type {dtype.name}; expected one of {supported}")
    if grid_bits is not None:
        if not 2 <= grid_bits <= dtype.bitwidth or reduce_range:
            raise ValueError(
                f"grid_bits must be in [2, {dtype.bitwidth}] for {dtype.name}, without reduce_range"
            )
        signed = dtype.is_signed()
        qmin, qmax = (-(2 ** (grid_bits - 1)), 2 ** (grid_bits - 1) - 1) if signed else (
            0, 2**grid_bits - 1
        )  # fmt: skip
        return (-qmax, qmax) if symmetric and signed else (qmin, qmax)
    if reduce_range:
        return REDUCED_RANGES[dtype]
    qmin, qmax = TYPE_RANGES[dtype]
    if symmetric and dtype.is_signed():
        return -qmax, qmax
    return qmin, qmax


@dataclass(frozen=True)
class Granularity:
    """Which values share one (s, z): the whole tensor, each slice along ``axis``, or groups of
    ``group_size`` consecutive elements along ``axis`` (QuantizeLinear-21 ``block_size``)."""

    kind: GranularityKind
    axis: int | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("per-tensor", "per-channel", "per-group"):
            raise ValueError(f"unknown granularity {self.kind!r}")
        if self.kind == "per-tensor" and (self.axis is not None or self.group_size is not None):
            raise ValueError("per-tensor granularity takes no axis or group size")
        if self.kind == "per-channel" and (self.axis is None or self.group_size is not None):
            raise ValueError("per-channel granularity needs an axis and no group size")
        if self.kind == "per-group" and (
            self.axis is None or self.group_size is None or self.group_size < 1
        ):
            raise ValueError("per-group granularity needs an axis and a group size ≥ 1")


PER_TENSOR = Granularity("per-tensor")


def per_channel(axis: int) -> Granularity:
    """One (s, z) per slice along ``axis`` (negative axes count from the end)."""
    return Granularity("per-channel", axis=axis)


def per_group(axis: int, size: int) -> Granularity:
    """One (s, z) per ``size`` consecutive elements along ``axis``."""
    return Granularity("per-group", axis=axis, group_size=size)


class QuantizerKind(str, Enum):  # noqa: UP042 (StrEnum needs Python 3.11; we support 3.10)
    """The quantizer's grid: uniform (§0), log2 or log√2 (§3; not implemented yet)."""

    UNIFORM = "uniform"
    LOG2 = "log2"
    LOG_SQRT2 = "log-sqrt2"


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: the integer type, the grid and the observer that calibrates it.

    ``percentile`` is used by the percentile observer only: the share (in %) of |x| kept inside the
    range when symmetric, else the central share of x (§12).
    """

    dtype: ir.DataType
    symmetric: bool
    granularity: Granularity = PER_TENSOR
    kind: QuantizerKind = QuantizerKind.UNIFORM
    reduce_range: bool = False
    observer: str = "minmax"
    percentile: float = 99.999
    grid_bits: int | None = None
    """A grid narrower than the storage type (6-bit codes in uint8); None: the type's width."""

    def __post_init__(self) -> None:
        quant_range(self.dtype, self.symmetric, self.reduce_range, self.grid_bits)
        if self.observer not in OBSERVERS:
            raise ValueError(f"unknown observer {self.observer!r}; expected one of {OBSERVERS}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")

    @property
    def bits(self) -> int:
        return self.grid_bits or int(self.dtype.bitwidth)

    @property
    def qmin(self) -> int:
        return quant_range(self.dtype, self.symmetric, self.reduce_range, self.grid_bits)[0]

    @property
    def qmax(self) -> int:
        return quant_range(self.dtype, self.symmetric, self.reduce_range, self.grid_bits)[1]

    @property
    def saturation_range(self) -> tuple[int, int]:
        """The codes a quantizer of this spec can emit: the grid when narrowed, else the type's
        full range (QuantizeLinear saturates there, §0)."""
        return (self.qmin, self.qmax) if self.grid_bits else TYPE_RANGES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype.name,
            "symmetric": self.symmetric,
            "granularity": {
                "kind": self.granularity.kind,
                "axis": self.granularity.axis,
                "group_size": self.granularity.group_size,
            },
            "kind": self.kind.value,
            "reduce_range": self.reduce_range,
            "observer": self.observer,
            "percentile": self.percentile,
            "grid_bits": self.grid_bits,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QuantSpec:
        granularity = d["granularity"]
        return cls(
            dtype=ir.DataType[d["dtype"]],
            symmetric=bool(d["symmetric"]),
            granularity=Granularity(
                granularity["kind"], granularity["axis"], granularity["group_size"]
            ),
            kind=QuantizerKind(d["kind"]),
            reduce_range=bool(d["reduce_range"]),
            observer=str(d["observer"]),
            percentile=float(d["percentile"]),
            grid_bits=d.get("grid_bits"),
        )


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Calibrated (s, z): shape () per tensor, (C,) per channel along ``axis``.

    ``scale`` is float32 and positive; ``zero_point`` has the quantized type's numpy dtype
    (``spec.dtype.numpy()``: int8, uint8, ml_dtypes int4, ...). ``degenerate`` is True when a range
    (any channel's) was empty, all zeros or so small that s underflowed, and s was replaced by 1.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    degenerate: bool = False

    def __post_init__(self) -> None:
        if self.scale.dtype != np.float32:
            raise ValueError(f"scale must be float32, got {self.scale.dtype}")
        if self.zero_point.dtype not in CODE_TYPES:
            raise ValueError(f"zero point has unsupported dtype {self.zero_point.dtype}")
        if self.scale.shape != self.zero_point.shape or self.scale.ndim > 1:
            raise ValueError(
                f"scale {self.scale.shape} and zero point {self.zero_point.shape} must share "
                "shape () or (C,)"
            )
        if (self.axis is None) != (self.scale.ndim == 0):
            raise ValueError("per-tensor parameters have no axis; per-channel ones need one")
        if not (np.all(np.isfinite(self.scale)) and np.all(self.scale > 0)):
            raise ValueError("scales must be finite and positive")

    @property
    def dtype(self) -> ir.DataType:
        """The quantized type, read from the zero point's dtype."""
        return CODE_TYPES[self.zero_point.dtype]

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale.tolist(),
            "zero_point": self.zero_point.astype(np.int64).tolist(),
            "dtype": self.dtype.name,
            "axis": self.axis,
            "degenerate": self.degenerate,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QuantParams:
        dtype = ir.DataType[d["dtype"]]
        return cls(
            scale=np.asarray(d["scale"], dtype=np.float32),
            zero_point=np.asarray(d["zero_point"], dtype=np.int64).astype(dtype.numpy()),
            axis=None if d["axis"] is None else int(d["axis"]),
            degenerate=bool(d["degenerate"]),
        )
