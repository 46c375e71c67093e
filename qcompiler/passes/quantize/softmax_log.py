"""Quantize attention probabilities: a log2, log√2 or uniform quantizer after Softmax.

Matches: Softmax nodes (default domain, main graph) whose float32 probabilities P are read only
as input A of MatMuls (the attention A·V). P is the Softmax output, or the output of the NaN
guard torch exports after scaled_dot_product_attention's softmax, Where(IsNaN(p), 0, p), when
that guard is the Softmax's only reader (MiniLM has it at every layer; a NaN, which a fully
masked row gives, becomes 0 before quantization either way). Skipped, with the reason logged:
P that is a graph output, is read by anything else (another op, a MatMul's input B), is unread,
or is not float32 or has no type (canonicalize infers the types first).
Does, per site: inserts between P and its MatMuls a float SIMULATION, in standard ONNX ops, whose
values are exactly the dequantized values of the quantizer (b bits, scale s):

- ``log-sqrt2`` / ``log2`` (qcompiler/quant/logquant.py, notes/algorithms.md §3): threshold
  coding, code = #{k : t_k > x} = ReduceSum(Cast(Less(Unsqueeze(x), T)), last axis), with T the
  Z = 2^b − 1 thresholds rounded up to float32 (so the float32 comparison is exact and the codes
  equal :meth:`LogQuantizer.threshold_codes` and, on float32 inputs, the float64 reference codes
  bit for bit), then Gather from the float32 level table s·2^(−k/d) with level[Z] = 0. The int32
  codes are the named value ``<P>_log_codes`` (read them by exposing it).
- ``uniform``: Min(x, s) → QuantizeLinear → DequantizeLinear, uint8 with zero point 0 and scale
  s/(2^b − 1) (the b-bit grid; QuantizeLinear saturates only at 255, hence the Min; Softmax
  outputs are ≥ 0, the grid's lower end).

ONNX Runtime has no log-quantizer kernel: the log kinds run as this float simulation (labelled
simulated). The integer shift-form A·V for them is in qcompiler/backends/reference/log_matmul.py.
Inserted nodes are named ``<P>_quantize_softmax_<op>``; a site whose readers are such nodes is
already quantized, so a second run changes nothing.
Semantics: LOSSY (this is the quantization; its error is measured, not bounded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from qcompiler.ir.edit import add_initializer
from qcompiler.ir.graph import ONNX_DOMAINS, constant_array, onnx_opset
from qcompiler.passes.manager import NodeError, Pass, Semantics
from qcompiler.quant.logquant import LOG_KINDS, LogQuantizer
from qcompiler.quant.spec import QuantizerKind, QuantSpec
from qcompiler.quant.uniform import compute_params

MARKER = "_quantize_softmax_"
"""Inserted node names are ``<P>`` + MARKER + op type (P: the probabilities quantized)."""

SIMULATED_NOTE: dict[QuantizerKind, str] = {
    **{
        kind: f"simulated: ONNX Runtime has no {kind.value} kernel, the softmax outputs are "
        "quantized by a float simulation (integer shift form: backends/reference/log_matmul.py)"
        for kind in LOG_KINDS
    },
    QuantizerKind.UNIFORM: "simulated: uniform Q/DQ of the softmax outputs, with V in float the "
    "A·V MatMul stays a float MatMul",
}
"""The label in the pass log: what ORT runs is a simulation, never an integer kernel."""

MIN_OPSET = 13
"""ReduceSum and Unsqueeze take their axes as inputs from opset 13."""


CODES_SUFFIX = "log_codes"


def codes_name(softmax_output: str) -> str:
    """The int32 value holding the log codes of a quantized Softmax output."""
    return f"{softmax_output}_{CODES_SUFFIX}"


class QuantizeSoftmaxOutputs(Pass):
    name = "quantize-softmax"
    semantics = Semantics.LOSSY

    def __init__(self, kind: str = "log-sqrt2", bits: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        self.kind = QuantizerKind(kind)
        self.bits = bits
        self.scale = scale
        if self.kind in LOG_KINDS:
            LogQuantizer(self.kind, bits, scale)  # validates bits and scale
        else:
            uniform_spec(bits)  # validates bits
            if not (np.isfinite(scale) and scale > 0):
                raise ValueError(f"the scale must be finite and positive, got {scale}")

    def requires(self, model: ir.Model) -> None:
        if onnx_opset(model) < MIN_OPSET:
            raise ir.passes.PreconditionError(
                f"quantize-softmax needs opset ≥ {MIN_OPSET}, the model has {onnx_opset(model)}"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type != "Softmax" or node.domain not in ONNX_DOMAINS:
                continue
            probs = probabilities(node)
            if is_quantized(probs):
                self.log.count("sites_already_quantized")
            elif (reason := skip_reason(probs)) is not None:
                self.log.skip(node, reason)
            else:
                self._quantize(graph, probs)
                self.log.count("sites_quantized")
                modified = True
        if modified:
            self.log.note(SIMULATED_NOTE[self.kind])
        return ir.passes.PassResult(model, modified=modified)

    def _quantize(self, graph: ir.Graph, probs: ir.Value) -> None:
        producer = probs.producer()
        assert producer is not None  # a Softmax or its NaN guard
        if not probs.name:
            raise NodeError(producer, "the probabilities have no name (run canonicalize first)")
        matmuls = [use.node for use in probs.uses()]
        nodes = (
            self._uniform_nodes(graph, probs)
            if self.kind is QuantizerKind.UNIFORM
            else self._log_nodes(graph, probs, LogQuantizer(self.kind, self.bits, self.scale))
        )
        graph.insert_after(producer, nodes)
        for matmul in matmuls:
            matmul.replace_input_with(0, nodes[-1].outputs[0])

    def _log_nodes(
        self, graph: ir.Graph, probs: ir.Value, quantizer: LogQuantizer
    ) -> list[ir.Node]:
        """Unsqueeze → Less → Cast → ReduceSum (the codes) → Gather (the levels)."""
        stem = str(probs.name)
        last = add_initializer(graph, f"{stem}_log_axis", np.array([-1], dtype=np.int64))
        thresholds = add_initializer(
            graph, f"{stem}_log_thresholds", quantizer.float32_thresholds()
        )
        levels = add_initializer(graph, f"{stem}_log_levels", quantizer.levels().astype(np.float32))
        unsqueeze = _node(stem, "Unsqueeze", [probs, last], "log_unsqueezed")
        below = _node(stem, "Less", [unsqueeze.outputs[0], thresholds], "log_below")
        counts = _node(stem, "Cast", [below.outputs[0]], "log_below_int", to=ir.DataType.INT32)
        codes = _node(stem, "ReduceSum", [counts.outputs[0], last], CODES_SUFFIX, keepdims=0)
        _like(codes.outputs[0], probs, ir.DataType.INT32)
        gather = _node(stem, "Gather", [levels, codes.outputs[0]], "log_dequantized", axis=0)
        _like(gather.outputs[0], probs, ir.DataType.FLOAT)
        return [unsqueeze, below, counts, codes, gather]

    def _uniform_nodes(self, graph: ir.Graph, probs: ir.Value) -> list[ir.Node]:
        """Min(x, s) → QuantizeLinear → DequantizeLinear on the uint8 b-bit grid, z = 0."""
        stem = str(probs.name)
        params = compute_params(0.0, self.scale, uniform_spec(self.bits))
        top = add_initializer(graph, f"{stem}_uniform_max", np.array(self.scale, np.float32))
        scale = add_initializer(graph, f"{stem}_uniform_scale", params.scale)
        zero = add_initializer(graph, f"{stem}_uniform_zero_point", params.zero_point)
        clip = _node(stem, "Min", [probs, top], "uniform_clipped")
        q = _node(stem, "QuantizeLinear", [clip.outputs[0], scale, zero], "uniform_quantized")
        dq = _node(stem, "DequantizeLinear", [q.outputs[0], scale, zero], "uniform_dequantized")
        _like(dq.outputs[0], probs, ir.DataType.FLOAT)
        return [clip, q, dq]


def uniform_spec(bits: int) -> QuantSpec:
    """The uniform softmax quantizer: uint8 codes on a b-bit grid, zero point 0."""
    return QuantSpec(ir.DataType.UINT8, symmetric=False, grid_bits=bits)


def probabilities(softmax: ir.Node) -> ir.Value:
    """The attention probabilities of a Softmax: the output of its NaN guard
    Where(IsNaN(p), 0, p) when that guard is its only reader, else its own output."""
    probs = softmax.outputs[0]
    readers = {use.node.op_type: use.node for use in probs.uses()}
    isnan, where = readers.get("IsNaN"), readers.get("Where")
    if len(probs.uses()) != 2 or isnan is None or where is None or probs.is_graph_output():
        return probs
    flag = isnan.outputs[0]
    zero = constant_array(where.inputs[1])
    guarded = (
        list(where.inputs) == [flag, where.inputs[1], probs]
        and len(flag.uses()) == 1
        and not flag.is_graph_output()
        and zero is not None
        and zero.size == 1
        and zero.item() == 0.0
    )
    return where.outputs[0] if guarded else probs


def is_quantized(probs: ir.Value) -> bool:
    """Whether every reader of this Softmax output is a node this pass inserted."""
    readers = [use.node for use in probs.uses()]
    return bool(readers) and all(
        (r.name or "").startswith(f"{probs.name}{MARKER}") for r in readers
    )


def skip_reason(probs: ir.Value) -> str | None:
    """Why these probabilities are not a site (None when they are one)."""
    if probs.is_graph_output():
        return "softmax output is a graph output"
    if not probs.uses():
        return "softmax output is not read"
    for use in probs.uses():
        if use.node.op_type != "MatMul" or use.idx != 0:
            return f"read by {use.node.op_type} input {use.idx}, not a MatMul's input A"
    if probs.dtype is None:
        return "softmax output has no type (run shape inference first)"
    if probs.dtype is not ir.DataType.FLOAT:
        return f"softmax output is {probs.dtype.name}; only float32 is simulated"
    return None


def _node(
    stem: str, op_type: str, inputs: list[ir.Value], output: str, **attributes: Any
) -> ir.Node:
    """An inserted node named ``<stem>_quantize_softmax_<op>`` with output ``<stem>_<output>``."""
    node = ir.node(op_type, inputs, attributes=attributes, name=f"{stem}{MARKER}{op_type}")
    node.outputs[0].name = f"{stem}_{output}"
    return node


def _like(value: ir.Value, template: ir.Value, dtype: ir.DataType) -> None:
    """Give ``value`` the shape of ``template`` (a copy) and ``dtype``."""
    value.type = ir.TensorType(dtype)
    value.shape = None if template.shape is None else ir.Shape(template.shape)
