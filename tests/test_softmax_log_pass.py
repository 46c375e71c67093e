"""quantize-softmax on small attention graphs: codes and values against numpy, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from qcompiler.backends.reference import log_matmul
from qcompiler.ir.edit import expose_outputs
from qcompiler.passes.canonicalize import InferShapes
from qcompiler.passes.manager import PassManager
from qcompiler.passes.quantize.softmax_log import (
    SIMULATED_NOTE,
    QuantizeSoftmaxOutputs,
    codes_name,
    uniform_spec,
)
from qcompiler.passes.verify import normwise_error
from qcompiler.quant.logquant import LogQuantizer
from qcompiler.quant.spec import QuantizerKind
from qcompiler.quant.uniform import compute_params, fake_quantize
from tests.graphs import build, op_types, outputs, snapshot

SHAPE = "2, 4, 32, 16"
ATTENTION = f"""
<ir_version: 10, opset_import: ["" : 21]>
attention (float[{SHAPE}] q, float[{SHAPE}] k, float[{SHAPE}] v) => (float[{SHAPE}] out) {{
    [transpose_k] kt = Transpose <perm = [0, 1, 3, 2]> (k)
    [scores] s = MatMul(q, kt)
    [softmax] probs = Softmax <axis = -1> (s)
    [av] out = MatMul(probs, v)
}}
"""

RNG = np.random.default_rng(0)
V_ZERO_POINT = 128
V_SCALE = 1 / 16
V_CODES = RNG.integers(0, 256, (2, 4, 32, 16), dtype=np.uint8)
FEEDS = {
    "q": RNG.standard_normal((2, 4, 32, 16)).astype(np.float32),
    "k": RNG.standard_normal((2, 4, 32, 16)).astype(np.float32),
    # V on a uint8 grid (exact in float32), so the shift form can take its codes
    "v": ((V_CODES.astype(np.float32) - V_ZERO_POINT) * V_SCALE).astype(np.float32),
}
LOG_KINDS = ["log-sqrt2", "log2"]


def quantized(
    kind: str, bits: int = 4, scale: float = 1.0
) -> tuple[ir.Model, QuantizeSoftmaxOutputs]:
    model = typed(ATTENTION)
    quantize = QuantizeSoftmaxOutputs(kind, bits, scale)
    assert PassManager([quantize]).run(model).modified
    return model, quantize


def typed(text: str) -> ir.Model:
    """The graph with inferred value types, as canonicalize leaves it."""
    model = build(text)
    InferShapes()(model)
    return model


def run_exposed(model: ir.Model, names: list[str]) -> dict[str, np.ndarray]:
    """Graph outputs plus the named intermediates, by name."""
    expose_outputs(model, names)
    values = outputs(model, FEEDS)
    return {str(v.name): a for v, a in zip(model.graph.outputs, values, strict=True)}


@pytest.mark.parametrize("kind", LOG_KINDS)
def test_log_simulation_codes_and_values_equal_numpy_bit_for_bit(kind: str) -> None:
    model, quantize = quantized(kind)
    assert quantize.log.counters == {"sites_quantized": 1}
    assert quantize.log.notes == [SIMULATED_NOTE[QuantizerKind(kind)]]
    assert quantize.log.notes[0].startswith(f"simulated: ONNX Runtime has no {kind} kernel")
    assert op_types(model) == [
        "Transpose", "MatMul", "Softmax", "Unsqueeze", "Less", "Cast", "ReduceSum", "Gather",
        "MatMul",
    ]  # fmt: skip
    result = run_exposed(model, ["probs", codes_name("probs"), "probs_log_dequantized"])
    probs, codes = result["probs"], result[codes_name("probs")]
    quantizer = LogQuantizer(QuantizerKind(kind), 4)
    assert codes.dtype == np.int32
    assert np.array_equal(codes, quantizer.reference_codes(probs))
    assert np.array_equal(codes, quantizer.threshold_codes(probs))
    assert len(np.unique(codes)) == 16  # every 4-bit code occurs, underflow (Z = 15) included
    dequantized = quantizer.dequantize(codes).astype(np.float32)
    assert np.array_equal(result["probs_log_dequantized"], dequantized)
    # the A·V output is the numpy float32 matmul of the same values: measured identical (0) here;
    # another BLAS may sum in another order, which moves float32 results by ~1e-7 normwise
    assert normwise_error(result["out"], dequantized @ FEEDS["v"]) <= 1e-6
    float_out = outputs(typed(ATTENTION), FEEDS)[0]
    # it is a quantization: measured normwise 0.10 (log√2) and 0.19 (log2) from the float A·V
    assert normwise_error(result["out"], float_out) > 0.05


@pytest.mark.parametrize("kind", LOG_KINDS)
def test_shift_form_on_the_codes_from_ort_matches_the_simulated_av(kind: str) -> None:
    model, _ = quantized(kind)
    result = run_exposed(model, [codes_name("probs")])
    quantizer = LogQuantizer(QuantizerKind(kind), 4)
    shift = log_matmul(result[codes_name("probs")], quantizer, V_CODES, V_SCALE, V_ZERO_POINT)
    # ORT multiplies float32 levels and sums in float32; measured normwise 3.6e-8 (log√2: the
    # float32 √2 levels round, ~6e-8 relative) and 0 (log2: powers of two times multiples of
    # 1/16 are exact in float32) against the exact float64 shift form
    assert normwise_error(result["out"], shift) <= 1e-6


def test_uniform_kind_equals_the_numpy_uniform_quantizer() -> None:
    scale = 0.5  # below the largest probabilities, so the Min clip matters
    model, quantize = quantized("uniform", bits=4, scale=scale)
    assert quantize.log.counters == {"sites_quantized": 1}
    assert op_types(model)[3:6] == ["Min", "QuantizeLinear", "DequantizeLinear"]
    result = run_exposed(model, ["probs", "probs_uniform_dequantized"])
    probs = result["probs"]
    spec = uniform_spec(4)
    params = compute_params(0.0, scale, spec)
    assert params.scale == np.float32(scale / 15) and params.zero_point == 0
    expected = fake_quantize(probs, params, spec)
    assert np.array_equal(result["probs_uniform_dequantized"], expected)
    clipped = probs > scale
    assert clipped.any() and np.all(expected[clipped] == expected.max())
    assert len(np.unique(expected)) == 16  # the whole 4-bit grid is used


NAN_GUARDED = f"""
<ir_version: 10, opset_import: ["" : 21]>
attention (float[{SHAPE}] q, float[{SHAPE}] k, float[{SHAPE}] v) => (float[{SHAPE}] out)
    <float zero = {{0.0}}> {{
    [transpose_k] kt = Transpose <perm = [0, 1, 3, 2]> (k)
    [scores] s = MatMul(q, kt)
    [softmax] probs = Softmax <axis = -1> (s)
    [isnan] nan = IsNaN(probs)
    [guard] guarded = Where(nan, zero, probs)
    [av] out = MatMul(guarded, v)
}}
"""


def test_the_nan_guard_after_softmax_is_kept_and_its_output_quantized() -> None:
    """torch exports SDPA's softmax as Where(IsNaN(p), 0, p) → MatMul (MiniLM)."""
    model = typed(NAN_GUARDED)
    quantize = QuantizeSoftmaxOutputs("log-sqrt2")
    assert PassManager([quantize]).run(model).modified
    assert quantize.log.counters == {"sites_quantized": 1}
    assert op_types(model)[3:6] == ["IsNaN", "Where", "Unsqueeze"]
    result = run_exposed(model, ["probs", codes_name("guarded")])
    quantizer = LogQuantizer(QuantizerKind.LOG_SQRT2, 4)
    assert np.array_equal(result[codes_name("guarded")], quantizer.reference_codes(result["probs"]))
    assert PassManager([QuantizeSoftmaxOutputs("log-sqrt2")]).run(model).modified is False


SKIPPED = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[4, 8] x, float[8, 4] w) => (float[4, 8] p_out, float[4, 8] added, float[4, 4] y) {
    [softmax_out] p_out = Softmax <axis = -1> (x)
    [mm_out] y0 = MatMul(p_out, w)
    [softmax_add] p_add = Softmax <axis = -1> (x)
    [add] added = Add(p_add, x)
    [softmax_b] p_b = Softmax <axis = 0> (w)
    [mm_b] y1 = MatMul(x, p_b)
    [sum] y = Add(y0, y1)
}
"""


def test_softmax_outputs_that_are_not_attention_probabilities_are_skipped() -> None:
    model = typed(SKIPPED)
    picture = snapshot(model)
    quantize = QuantizeSoftmaxOutputs()
    assert PassManager([quantize]).run(model).modified is False
    assert snapshot(model) == picture
    assert {(s.site, s.reason) for s in quantize.log.skips} == {
        ("softmax_out", "softmax output is a graph output"),
        ("softmax_add", "read by Add input 0, not a MatMul's input A"),
        ("softmax_b", "read by MatMul input 1, not a MatMul's input A"),
    }
    assert not quantize.log.counters


def test_an_untyped_softmax_output_is_skipped() -> None:
    model = build(ATTENTION)  # no shape inference: the Softmax output has no type
    quantize = QuantizeSoftmaxOutputs()
    assert PassManager([quantize]).run(model).modified is False
    assert [s.reason for s in quantize.log.skips] == [
        "softmax output has no type (run shape inference first)"
    ]


@pytest.mark.parametrize("kind", [*LOG_KINDS, "uniform"])
def test_a_second_run_finds_the_site_quantized_and_changes_nothing(kind: str) -> None:
    model, _ = quantized(kind)
    picture = snapshot(model)
    again = QuantizeSoftmaxOutputs(kind)
    assert PassManager([again]).run(model).modified is False
    assert snapshot(model) == picture
    assert again.log.counters == {"sites_already_quantized": 1}
    assert not again.log.skips


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError, match="'log10' is not a valid QuantizerKind"):
        QuantizeSoftmaxOutputs("log10")
    with pytest.raises(ValueError, match="bits must be in"):
        QuantizeSoftmaxOutputs("log-sqrt2", bits=9)
    with pytest.raises(ValueError, match="grid_bits must be in"):
        QuantizeSoftmaxOutputs("uniform", bits=1)
    with pytest.raises(ValueError, match="finite and positive"):
        QuantizeSoftmaxOutputs("uniform", scale=-1.0)
