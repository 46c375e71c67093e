"""The uniform affine quantizer: (s, z) from a range, and QuantizeLinear/DequantizeLinear in numpy.

Math (notes/algorithms.md §0):

- **Asymmetric.** Widen the range to include 0 (rmin ← min(rmin, 0), rmax ← max(rmax, 0)) so that 0
  is exact, then s = (rmax − rmin)/(qmax − qmin), z = clamp(round(qmin − rmin/s), qmin, qmax).
- **Symmetric.** absmax = max(|rmin|, |rmax|), s = 2·absmax/(qmax − qmin),
  z = round((qmin + qmax)/2): 0 for the restricted signed ranges, 128 for uint8, 8 for uint4.
- **Degenerate** (§12): s < finfo(float32).tiny (an all-zero range, or one so small that s
  underflows) → s = 1 and z = the zero point of a zero range (0 asymmetric, the midpoint
  symmetric), flagged ``degenerate``. ORT's ``compute_scale_zp`` does the same except that it puts
  z = 0 for symmetric uint8 too; the midpoint keeps every channel of a symmetric tensor on one z,
  which ORT's per-channel QLinearConv requires. A constant c gives [min(c, 0), max(c, 0)], so c
  lands on a grid point.
- s and z are computed like ORT's ``compute_scale_zp``: the range in float32, its width and
  qmin − rmin/s in float64, round-half-even, s stored as float32. Non-degenerate (s, z) equal ORT's
  bit for bit.

Quantization is what ONNX Runtime's CPU QuantizeLinear computes, bit for bit (§0, §19 trap 20):
q = clamp(rint(x / s) + z) with x / s a **float32 division** (a reciprocal multiply disagrees near
ties), rint rounding half to even, and saturation to the *type's* full range (QuantizeLinear knows
nothing of restricted or reduced ranges; values inside the calibrated range never reach those
codes). Dequantization is (q − z) in int32, converted to float32, times s. Per-channel parameters
broadcast along ``params.axis``.
"""

from __future__ import annotations

import numpy as np

from qcompiler.quant.spec import (
    QuantizerKind,
    QuantParams,
    QuantSpec,
    quant_range,
)

__all__ = [
    "compute_params",
    "dequantize",
    "fake_quantize",
    "quant_range",
    "quantize",
    "scale_and_zero_point",
]

FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def scale_and_zero_point(
    rmin: np.ndarray, rmax: np.ndarray, qmin: int, qmax: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Unrounded float64 s (0 for a zero range) and z (integral float64) for float32 ranges.

    Elementwise over any shape; no degenerate handling (see :func:`compute_params`).
    """
    rmin = np.minimum(rmin, np.float32(0))
    rmax = np.maximum(rmax, np.float32(0))
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale = (rmax.astype(np.float64) - rmin.astype(np.float64)) / float(qmax - qmin)
    if symmetric:
        return scale, np.full(scale.shape, np.rint((qmin + qmax) / 2.0))
    offset = np.divide(rmin, scale, out=np.zeros_like(scale), where=scale > 0)
    return scale, np.clip(np.rint(qmin - offset), qmin, qmax)


def zero_range_zero_point(spec: QuantSpec) -> int:
    """The zero point of a degenerate range: the grid's midpoint if symmetric, else 0."""
    return int(np.rint((spec.qmin + spec.qmax) / 2.0)) if spec.symmetric else 0


def compute_params(
    rmin: np.ndarray | float, rmax: np.ndarray | float, spec: QuantSpec
) -> QuantParams:
    """(s, z) for the range [rmin, rmax]: scalars per tensor, (C,) arrays per channel."""
    _require_uniform(spec)
    lo = np.asarray(rmin, dtype=np.float32)
    hi = np.asarray(rmax, dtype=np.float32)
    axis = _params_axis(spec, lo.shape, hi.shape)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"the range must be finite, got [{lo}, {hi}]")
    if np.any(lo > hi):
        raise ValueError(f"the range must have rmin ≤ rmax, got [{lo}, {hi}]")
    scale, zero_point = scale_and_zero_point(lo, hi, spec.qmin, spec.qmax, spec.symmetric)
    degenerate = scale < FLOAT32_TINY
    scale = np.where(degenerate, 1.0, scale)
    zero_point = np.where(degenerate, zero_range_zero_point(spec), zero_point)
    return QuantParams(
        scale=scale.astype(np.float32),
        zero_point=zero_point.astype(np.int64).astype(spec.dtype.numpy()),
        axis=axis,
        degenerate=bool(np.any(degenerate)),
    )


def quantize(x: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """QuantizeLinear: codes of ``spec.dtype`` (numpy dtype ``spec.dtype.numpy()``), saturated
    to the spec's grid when it is narrower than the type (materialize clips before Q then)."""
    _require_uniform(spec)
    _require_same_type(params, spec)
    x32 = np.asarray(x, dtype=np.float32)
    scale = _along_axis(params.scale, params.axis, x32.shape)
    zero_point = _along_axis(params.zero_point.astype(np.int32), params.axis, x32.shape)
    type_min, type_max = spec.saturation_range
    lower = (type_min - zero_point).astype(np.float32)
    upper = (type_max - zero_point).astype(np.float32)
    steps = np.clip(np.rint(x32 / scale), lower, upper)
    return (steps.astype(np.int32) + zero_point).astype(spec.dtype.numpy())


def dequantize(codes: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """DequantizeLinear: float32 (q − z)·s."""
    _require_uniform(spec)
    _require_same_type(params, spec)
    if codes.dtype != spec.dtype.numpy():
        raise ValueError(f"codes have dtype {codes.dtype}, the spec needs {spec.dtype.name}")
    scale = _along_axis(params.scale, params.axis, codes.shape)
    zero_point = _along_axis(params.zero_point.astype(np.int32), params.axis, codes.shape)
    steps = (codes.astype(np.int32) - zero_point).astype(np.float32)
    return np.asarray(steps * scale, dtype=np.float32)


def fake_quantize(x: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """Q then DQ: the float32 values the quantized tensor stands for."""
    return dequantize(quantize(x, params, spec), params, spec)


def _require_uniform(spec: QuantSpec) -> None:
    if spec.kind is not QuantizerKind.UNIFORM:
        raise NotImplementedError(f"the {spec.kind.value} quantizer is not implemented yet")
    if spec.granularity.kind == "per-group":
        raise NotImplementedError("per-group (blocked) quantization is not implemented yet")


def _require_same_type(params: QuantParams, spec: QuantSpec) -> None:
    if params.dtype != spec.dtype:
        raise ValueError(f"parameters are for {params.dtype.name}, the spec is {spec.dtype.name}")


def _params_axis(
    spec: QuantSpec, min_shape: tuple[int, ...], max_shape: tuple[int, ...]
) -> int | None:
    """The parameters' axis, after checking the range's shape fits the granularity."""
    per_channel = spec.granularity.kind == "per-channel"
    expected = "(C,)" if per_channel else "()"
    if min_shape != max_shape or len(min_shape) != int(per_channel):
        raise ValueError(
            f"a {spec.granularity.kind} range needs rmin and rmax of shape {expected}, "
            f"got {min_shape} and {max_shape}"
        )
    return spec.granularity.axis


def _along_axis(values: np.ndarray, axis: int | None, shape: tuple[int, ...]) -> np.ndarray:
    """Reshape per-channel ``values`` to broadcast along ``axis`` of an array of ``shape``."""
    if axis is None:
        return values
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for shape {shape}")
    if shape[axis] != values.shape[0]:
        raise ValueError(
            f"{values.shape[0]} per-channel parameters for axis {axis} of shape {shape}"
        )
    target = [1] * len(shape)
    target[axis] = values.shape[0]
    return values.reshape(target)
