"""The uniform quantizer: ranges, (s, z) and Q/DQ against ONNX Runtime (algorithms.md §0, §19)."""

from __future__ import annotations

import json
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from qcompiler.quant.spec import (
    PER_TENSOR,
    TYPE_RANGES,
    Granularity,
    QuantizerKind,
    QuantParams,
    QuantSpec,
    per_channel,
    per_group,
)
from qcompiler.quant.uniform import (
    compute_params,
    dequantize,
    fake_quantize,
    quant_range,
    quantize,
)

INT_TYPES = [
    ir.DataType.UINT8,
    ir.DataType.INT8,
    ir.DataType.UINT16,
    ir.DataType.INT16,
    ir.DataType.UINT4,
    ir.DataType.INT4,
]


# --- ranges and specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "symmetric", "reduce_range", "expected"),
    [
        (ir.DataType.UINT8, False, False, (0, 255)),
        (ir.DataType.UINT8, True, False, (0, 255)),
        (ir.DataType.INT8, False, False, (-128, 127)),
        (ir.DataType.INT8, True, False, (-127, 127)),
        (ir.DataType.UINT8, False, True, (0, 127)),
        (ir.DataType.INT8, False, True, (-64, 64)),
        (ir.DataType.INT8, True, True, (-64, 64)),
        (ir.DataType.INT16, True, False, (-32767, 32767)),
        (ir.DataType.UINT16, False, False, (0, 65535)),
        (ir.DataType.INT4, False, False, (-8, 7)),
        (ir.DataType.INT4, True, False, (-7, 7)),
        (ir.DataType.UINT4, True, False, (0, 15)),
        (ir.DataType.UINT4, False, True, (0, 7)),
    ],
)
def test_quant_range_follows_the_notes(
    dtype: ir.DataType, symmetric: bool, reduce_range: bool, expected: tuple[int, int]
) -> None:
    assert quant_range(dtype, symmetric, reduce_range) == expected
    spec = QuantSpec(dtype, symmetric, reduce_range=reduce_range)
    assert (spec.qmin, spec.qmax) == expected


def test_spec_bits() -> None:
    assert [QuantSpec(t, True).bits for t in INT_TYPES] == [8, 8, 16, 16, 4, 4]


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(ir.DataType.INT8, True),
        QuantSpec(ir.DataType.UINT8, False, observer="percentile", percentile=99.99),
        QuantSpec(ir.DataType.INT4, True, per_group(0, 32), reduce_range=True),
        QuantSpec(ir.DataType.INT8, True, per_channel(-1), QuantizerKind.LOG2, observer="mse"),
    ],
)
def test_spec_json_round_trip(spec: QuantSpec) -> None:
    assert QuantSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": ir.DataType.FLOAT, "symmetric": True}, "unsupported quantized type FLOAT"),
        ({"dtype": ir.DataType.INT8, "symmetric": True, "observer": "max"}, "unknown observer"),
        ({"dtype": ir.DataType.INT8, "symmetric": True, "percentile": 0.0}, "percentile"),
    ],
)
def test_spec_rejects_bad_fields(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


def test_granularity_needs_its_fields() -> None:
    assert Granularity("per-tensor") == PER_TENSOR
    assert per_channel(1) == Granularity("per-channel", axis=1)
    with pytest.raises(ValueError, match="needs an axis"):
        Granularity("per-channel")
    with pytest.raises(ValueError, match="group size"):
        Granularity("per-group", axis=0)


@pytest.mark.parametrize("dtype", INT_TYPES)
def test_params_json_round_trip_is_exact(dtype: ir.DataType) -> None:
    spec = QuantSpec(dtype, False, per_channel(0))
    rmin = np.array([-1.3, 0.2, -7e-3], dtype=np.float32)
    params = compute_params(rmin, np.array([2.1, 0.9, 0.0], np.float32), spec)
    back = QuantParams.from_json(json.loads(json.dumps(params.to_json())))
    assert back.scale.tobytes() == params.scale.tobytes()
    assert back.zero_point.dtype == params.zero_point.dtype == dtype.numpy()
    assert np.array_equal(back.zero_point.astype(np.int64), params.zero_point.astype(np.int64))
    assert (back.axis, back.degenerate) == (0, False)
    scalar = compute_params(-1.0, 3.0, QuantSpec(dtype, True))
    assert QuantParams.from_json(scalar.to_json()).scale.shape == ()


# --- (s, z) -------------------------------------------------------------------------------------

ORT_TYPES = {
    ir.DataType.UINT8: TensorProto.UINT8,
    ir.DataType.INT8: TensorProto.INT8,
    ir.DataType.UINT16: TensorProto.UINT16,
    ir.DataType.INT16: TensorProto.INT16,
    ir.DataType.UINT4: TensorProto.UINT4,
    ir.DataType.INT4: TensorProto.INT4,
}


@pytest.mark.parametrize(
    ("dtype", "symmetric", "reduce_range"),
    [
        (dtype, symmetric, reduce_range)
        for dtype in INT_TYPES
        for symmetric in (False, True)
        for reduce_range in (False, True)
        if (dtype, symmetric, reduce_range) != (ir.DataType.INT4, True, False)
    ],
)
def test_params_equal_ort_compute_scale_zp(
    dtype: ir.DataType, symmetric: bool, reduce_range: bool
) -> None:
    """Bit-equal (s, z) to ORT's quant_utils on 200 random ranges per type and mode."""
    spec = QuantSpec(dtype, symmetric, reduce_range=reduce_range)
    qmin, qmax = get_qmin_qmax_for_qType(ORT_TYPES[dtype], reduce_range, symmetric)
    assert (spec.qmin, spec.qmax) == (int(qmin), int(qmax))
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo, hi = np.sort(rng.normal(size=2) * 10.0 ** rng.integers(-4, 4)).astype(np.float32)
        ort_zero_point, ort_scale = compute_scale_zp(lo, hi, qmin, qmax, symmetric)
        params = compute_params(lo, hi, spec)
        assert params.scale.tobytes() == np.asarray(ort_scale, np.float32).tobytes()
        assert int(params.zero_point) == int(ort_zero_point)


def test_symmetric_int4_is_restricted_unlike_orts_tool() -> None:
    """By design: every signed symmetric grid is ±(2^(b−1) − 1); ORT's tool has no int4 entry."""
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT4, False, True)
    assert (int(qmin), int(qmax)) == (-8, 7)
    assert quant_range(ir.DataType.INT4, symmetric=True) == (-7, 7)


@pytest.mark.parametrize(
    ("dtype", "zero_point"),
    [
        (ir.DataType.INT8, 0),
        (ir.DataType.UINT8, 128),
        (ir.DataType.INT16, 0),
        (ir.DataType.UINT16, 32768),
        (ir.DataType.INT4, 0),
        (ir.DataType.UINT4, 8),
    ],
)
def test_symmetric_zero_point_is_the_midpoint(dtype: ir.DataType, zero_point: int) -> None:
    params = compute_params(-0.5, 2.0, QuantSpec(dtype, True))
    assert int(params.zero_point) == zero_point
    assert not params.degenerate


@pytest.mark.parametrize(
    ("spec", "zero_point"),
    [
        (QuantSpec(ir.DataType.INT8, True), 0),
        (QuantSpec(ir.DataType.UINT8, True), 128),
        (QuantSpec(ir.DataType.UINT8, False), 0),
        (QuantSpec(ir.DataType.INT8, False), 0),
        (QuantSpec(ir.DataType.UINT4, True), 8),
    ],
)
def test_zero_range_gives_scale_one_and_the_specs_zero_point(
    spec: QuantSpec, zero_point: int
) -> None:
    params = compute_params(0.0, 0.0, spec)
    assert (float(params.scale), int(params.zero_point), params.degenerate) == (
        1.0,
        zero_point,
        True,
    )
    assert float(fake_quantize(np.zeros(3, np.float32), params, spec)[0]) == 0.0


def test_underflowing_scale_is_degenerate() -> None:
    params = compute_params(0.0, 1e-40, QuantSpec(ir.DataType.UINT8, False))
    assert (float(params.scale), params.degenerate) == (1.0, True)


def test_one_dead_channel_flags_the_tensor_and_keeps_one_zero_point() -> None:
    spec = QuantSpec(ir.DataType.UINT8, True, per_channel(1))
    params = compute_params(np.array([-1.0, 0.0, -2.0]), np.array([1.0, 0.0, 0.5]), spec)
    assert params.degenerate
    assert params.scale.tolist() == pytest.approx([2 / 255, 1.0, 4 / 255])
    assert params.zero_point.tolist() == [128, 128, 128]


@pytest.mark.parametrize("constant", [3.7, -2.0, 1e-3, -123.25])
@pytest.mark.parametrize("dtype", [ir.DataType.UINT8, ir.DataType.INT8])
def test_constant_lands_on_the_grid(constant: float, dtype: ir.DataType) -> None:
    """[c, c] widens to [min(c, 0), max(c, 0)], so c and 0 are grid points (c up to float32
    rounding of s: observed relative error ≤ 6e-8, allowed 2.4e-7)."""
    spec = QuantSpec(dtype, False)
    params = compute_params(constant, constant, spec)
    values = fake_quantize(np.array([constant, 0.0], np.float32), params, spec)
    assert values[1] == 0.0
    assert abs(values[0] - constant) <= 4 * np.finfo(np.float32).eps * abs(constant)


@pytest.mark.parametrize(
    ("rmin", "rmax", "message"),
    [(np.inf, 1.0, "finite"), (2.0, 1.0, "rmin ≤ rmax"), (np.zeros(2), np.ones(2), "shape")],
)
def test_compute_params_rejects_bad_ranges(rmin: Any, rmax: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_params(rmin, rmax, QuantSpec(ir.DataType.INT8, True))


def test_unimplemented_quantizers_say_so() -> None:
    with pytest.raises(NotImplementedError, match="log2"):
        compute_params(-1.0, 1.0, QuantSpec(ir.DataType.INT8, True, kind=QuantizerKind.LOG2))
    with pytest.raises(NotImplementedError, match="per-group"):
        compute_params(-1.0, 1.0, QuantSpec(ir.DataType.INT4, True, per_group(0, 32)))


# --- Q/DQ against ONNX Runtime --------------------------------------------------------------------


def _ort_model(params: QuantParams, x_shape: tuple[int, ...], codes_only: bool) -> bytes:
    """x → QuantizeLinear-21 → DequantizeLinear: with (1, 0) the output is the codes as floats
    (ORT's Python API cannot return int4), with (s, z) it is the fake-quantized value."""
    attrs: dict[str, Any] = {} if params.axis is None else {"axis": params.axis}
    ones = np.ones_like(params.scale)
    zeros = np.zeros_like(params.zero_point)
    initializers = [
        numpy_helper.from_array(params.scale, "s"),
        numpy_helper.from_array(params.zero_point, "z"),
        numpy_helper.from_array(ones if codes_only else params.scale, "s_out"),
        numpy_helper.from_array(zeros if codes_only else params.zero_point, "z_out"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "s_out", "z_out"], ["y"], **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_shape))],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _run_ort(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _tie_heavy_inputs(params: QuantParams, spec: QuantSpec, rows: int) -> np.ndarray:
    """Per channel (columns): x = (k + ½)·s for every k that reaches the type's range and one past
    it, the float32 neighbours of each, random values in range, and values far outside."""
    scale = np.atleast_1d(params.scale)
    zero_points = np.atleast_1d(params.zero_point.astype(np.int64))
    lo_type, hi_type = TYPE_RANGES[spec.dtype]
    steps = np.arange(lo_type - zero_points.max() - 2, hi_type - zero_points.min() + 2)
    steps = steps.astype(np.float32)
    ties = (steps[:, None] + np.float32(0.5)) * scale[None, :]
    rng = np.random.default_rng(1)
    span = float(hi_type - lo_type) * scale[None, :]
    parts = [
        ties,
        np.nextafter(ties, np.float32(np.inf)),
        np.nextafter(ties, np.float32(-np.inf)),
        (rng.uniform(-0.6, 0.6, size=(rows, len(scale))) * span).astype(np.float32),
        np.array([[1e30], [-1e30], [0.0], [-0.0]], np.float32) * np.ones_like(scale),
    ]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("dtype", INT_TYPES)
@pytest.mark.parametrize("granularity", [PER_TENSOR, per_channel(1)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_and_dequantize_are_bit_exact_with_ort(
    dtype: ir.DataType, granularity: Granularity, symmetric: bool
) -> None:
    """0 mismatches on exact ties (k + ½)·s, their float32 neighbours, random and saturating
    values, with unfriendly scales (QuantizeLinear-21, ORT CPU)."""
    spec = QuantSpec(dtype, symmetric, granularity)
    if granularity.kind == "per-channel":
        params = compute_params(
            np.array([-0.37, -1.9, 0.0], np.float32), np.array([1.13, 0.71, 2.3], np.float32), spec
        )
    else:
        params = compute_params(np.array(-0.8137, np.float32), np.array(2.291, np.float32), spec)
    x = _tie_heavy_inputs(params, spec, rows=2000)
    if granularity.kind == "per-tensor":
        x = x[:, :1]
    codes = quantize(x, params, spec)
    assert codes.dtype == dtype.numpy()
    ort_codes = _run_ort(_ort_model(params, x.shape, codes_only=True), x)
    assert np.array_equal(codes.astype(np.float32), ort_codes)
    ort_values = _run_ort(_ort_model(params, x.shape, codes_only=False), x)
    assert fake_quantize(x, params, spec).tobytes() == ort_values.tobytes()


def test_ties_separate_division_from_reciprocal_multiply() -> None:
    """The tie-heavy inputs catch a reciprocal-multiply quantizer (trap 20): rint(x·(1/s))
    differs from ORT's rint(x/s) on 71 of these 781 uint8 inputs (observed)."""
    spec = QuantSpec(ir.DataType.UINT8, False)
    params = compute_params(np.array(-0.8137, np.float32), np.array(2.291, np.float32), spec)
    x = _tie_heavy_inputs(params, spec, rows=0)[:, :1]
    reciprocal = np.rint(x * (np.float32(1) / params.scale)) + np.float32(params.zero_point)
    reciprocal_codes = np.clip(reciprocal, 0, 255)
    ort_codes = _run_ort(_ort_model(params, x.shape, codes_only=True), x)
    assert np.count_nonzero(reciprocal_codes != ort_codes) > 0
    assert np.array_equal(quantize(x, params, spec).astype(np.float32), ort_codes)


def test_quantize_saturates_to_the_type_not_the_restricted_range() -> None:
    """QuantizeLinear clamps to [−128, 127]; the restricted [−127, 127] only shapes s."""
    spec = QuantSpec(ir.DataType.INT8, True)
    params = compute_params(-1.0, 1.0, spec)
    codes = quantize(np.array([-5.0, -1.0, 1.0, 5.0], np.float32), params, spec)
    assert codes.tolist() == [-128, -127, 127, 127]


# --- per-channel broadcasting ---------------------------------------------------------------------


@pytest.mark.parametrize("axis", [1, -1])
def test_per_channel_equals_per_tensor_on_each_slice(axis: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 5, 6)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)
    if axis == 1:
        x = x[:, :, :5]
    other = tuple(i for i in range(3) if i != axis % 3)
    spec = QuantSpec(ir.DataType.INT8, False, per_channel(axis))
    params = compute_params(x.min(axis=other), x.max(axis=other), spec)
    codes = quantize(x, params, spec)
    for c in range(x.shape[axis]):
        slice_spec = QuantSpec(ir.DataType.INT8, False)
        slice_params = QuantParams(params.scale[c], params.zero_point[c], None)
        expected = quantize(np.take(x, c, axis=axis), slice_params, slice_spec)
        assert np.array_equal(np.take(codes, c, axis=axis), expected)


def test_per_channel_parameters_must_match_the_axis() -> None:
    spec = QuantSpec(ir.DataType.INT8, True, per_channel(0))
    params = compute_params(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), spec)
    with pytest.raises(ValueError, match="2 per-channel parameters for axis 0"):
        quantize(np.zeros((3, 2), np.float32), params, spec)


def test_codes_must_have_the_specs_type() -> None:
    spec = QuantSpec(ir.DataType.INT8, True)
    params = compute_params(-1.0, 1.0, spec)
    with pytest.raises(ValueError, match="dtype"):
        dequantize(np.zeros(3, np.int32), params, spec)
    with pytest.raises(ValueError, match="parameters are for INT8"):
        quantize(np.zeros(3, np.float32), params, QuantSpec(ir.DataType.UINT8, True))


# --- properties -----------------------------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    bounds=st.tuples(finite, finite),
    dtype=st.sampled_from(INT_TYPES),
    symmetric=st.booleans(),
    reduce_range=st.booleans(),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20),
)
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(
    bounds: tuple[float, float],
    dtype: ir.DataType,
    symmetric: bool,
    reduce_range: bool,
    fractions: list[float],
) -> None:
    """|x − DQ(Q(x))| ≤ s/2 for x in [min(rmin, 0), max(rmax, 0)], up to float32 rounding."""
    rmin, rmax = min(bounds), max(bounds)
    spec = QuantSpec(dtype, symmetric, reduce_range=reduce_range)
    params = compute_params(rmin, rmax, spec)
    low, high = min(rmin, 0.0), max(rmax, 0.0)
    x = np.array([low + f * (high - low) for f in fractions], np.float32)
    x = np.clip(x, np.float32(low), np.float32(high))
    error = np.abs(fake_quantize(x, params, spec) - x)
    slack = 4 * np.spacing(np.float32(max(abs(low), abs(high), 1e-30)))
    assert np.all(error <= float(params.scale) / 2 + slack)


@settings(max_examples=100, deadline=None)
@given(
    bounds=st.tuples(finite, finite),
    dtype=st.sampled_from(INT_TYPES),
    symmetric=st.booleans(),
    x=st.lists(st.floats(-1e5, 1e5, width=32), min_size=2, max_size=30),
)
def test_quantize_is_monotone_and_zero_is_exact(
    bounds: tuple[float, float], dtype: ir.DataType, symmetric: bool, x: list[float]
) -> None:
    spec = QuantSpec(dtype, symmetric)
    params = compute_params(min(bounds), max(bounds), spec)
    values = np.sort(np.array([*x, 0.0], np.float32))
    codes = quantize(values, params, spec).astype(np.int64)
    assert np.all(np.diff(codes) >= 0)
    assert fake_quantize(np.zeros(1, np.float32), params, spec)[0] == 0.0


def test_int4_codes_use_ml_dtypes() -> None:
    spec = QuantSpec(ir.DataType.INT4, False)
    params = compute_params(-1.0, 1.0, spec)
    assert params.zero_point.dtype == np.dtype(ml_dtypes.int4)
    assert quantize(np.array([-2.0, 2.0], np.float32), params, spec).tolist() == [-8, 7]
