"""Materialize the plan: insert QuantizeLinear / DequantizeLinear for every quantized layer.

Matches: the plan's quantized linear decisions (plan-linear wrote them; calibration added the
activation parameters of static recipes).
Does, per layer (names derive from the tensor, so they are stable across runs):
- weight W → an integer initializer ``W_quantized`` with ``W_scale`` / ``W_zero_point`` and
  ``DequantizeLinear(axis = output-channel axis)`` feeding the layer. Weight parameters come
  from W itself, per output channel: its [min, max] (notes/algorithms.md §0), or the range the
  weight spec's observer clips to (``mse``: least expected quantization error).
  A layer whose activation is quantized per channel has no integer kernel (ORT would fuse the
  per-axis activation DQ into MatMulIntegerToFloat anyway and fail at run time, measured with
  ORT 1.32), so its weight is stored dequantized: the same values, as a float simulation.
  The float W stays only if something else still reads it.
- activation x, static → ``QuantizeLinear → DequantizeLinear`` with the calibrated parameters
  (per tensor; per channel along the last axis for a ``per-channel`` channelwise recipe, which
  ORT runs as a float simulation), inserted once after x's producer and read by the quantized
  layers only; other readers of x keep the float value.
- activation x, dynamic → ``DynamicQuantizeLinear → DequantizeLinear`` (uint8, scale and zero
  point from each batch's range at run time).
The layer's output stays float: DQ(x)·DQ(W) → MatMul is what ONNX Runtime fuses into
MatMulIntegerToFloat (measured, backends/ort/fusibility.py checks it per model).
Semantics: LOSSY (this is the quantization; its error is measured, not bounded).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir.edit import add_initializer
from qcompiler.passes.manager import NodeError, Pass, Semantics
from qcompiler.quant.observers import make_observer
from qcompiler.quant.plan import LinearDecision, QuantPlan
from qcompiler.quant.spec import QuantParams, QuantSpec
from qcompiler.quant.uniform import compute_params, dequantize, quantize


class MaterializeQDQ(Pass):
    name = "materialize"
    semantics = Semantics.LOSSY

    def __init__(self, plan: QuantPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = {node.name: node for node in graph}
        activations: dict[str, ir.Value] = {}
        weights: dict[str, ir.Value] = {}
        for decision in self.plan.quantized():
            node = nodes.get(decision.node)
            if node is None:
                raise RuntimeError(f"plan names node '{decision.node}', which the graph lacks")
            if decision.activation not in activations:
                activations[decision.activation] = self._quantize_activation(graph, node, decision)
            if decision.weight not in weights:
                weights[decision.weight] = self._quantize_weight(graph, node, decision)
            node.replace_input_with(0, activations[decision.activation])
            node.replace_input_with(1, weights[decision.weight])
            self.log.count("layers_quantized")
        self.log.count("activations_quantized", len(activations))
        self.log.count("weights_quantized", len(weights))
        return ir.passes.PassResult(model, modified=bool(self.plan.quantized()))

    def _quantize_activation(
        self, graph: ir.Graph, node: ir.Node, decision: LinearDecision
    ) -> ir.Value:
        """Q→DQ (or DynamicQ→DQ) after the activation's producer; returns the DQ output."""
        x = node.inputs[0]
        assert x is not None
        if decision.activations is None:
            new_nodes = _dynamic_qdq(x)
        else:
            params = self.plan.activation_params.get(decision.activation)
            if params is None:
                raise NodeError(node, f"no calibrated parameters for '{decision.activation}'")
            new_nodes = _static_qdq(graph, x, params, decision.activations)
        producer = x.producer()
        if producer is None:
            graph.insert_before(graph[0], new_nodes)
        else:
            graph.insert_after(producer, new_nodes)
        return new_nodes[-1].outputs[0]

    def _quantize_weight(
        self, graph: ir.Graph, node: ir.Node, decision: LinearDecision
    ) -> ir.Value:
        """The integer weight and its DequantizeLinear before ``node``; returns the DQ output."""
        weight = node.inputs[1]
        assert weight is not None and weight.const_value is not None and decision.weights
        w = weight.const_value.numpy()
        params = weight_params(w, decision.weights, decision.weight_axis)
        codes = quantize(w, params, decision.weights)
        stem = decision.weight
        if decision.simulated:
            simulated = dequantize(codes, params, decision.weights).astype(w.dtype)
            return add_initializer(graph, quantized_weight_name(stem), simulated)
        quantized = add_initializer(
            graph, quantized_weight_name(stem), codes, decision.weights.dtype
        )
        scale = add_initializer(graph, f"{stem}_scale", params.scale, ir.DataType.FLOAT)
        zero = add_initializer(
            graph, f"{stem}_zero_point", params.zero_point, decision.weights.dtype
        )
        dq = ir.node(
            "DequantizeLinear",
            [quantized, scale, zero],
            attributes={"axis": decision.weight_axis},
            name=f"{stem}_DequantizeLinear",
        )
        dq.outputs[0].name = f"{stem}_dequantized"
        graph.insert_before(node, dq)
        return dq.outputs[0]


QUANTIZED_SUFFIX = "_quantized"


def quantized_weight_name(weight: str) -> str:
    """The integer initializer materialize stores for float weight ``weight``."""
    return weight + QUANTIZED_SUFFIX


def float_weight_name(quantized: str) -> str:
    """The float weight a quantized initializer came from (inverse of quantized_weight_name)."""
    return quantized.removesuffix(QUANTIZED_SUFFIX)


def weight_params(w: np.ndarray, spec: QuantSpec, axis: int) -> QuantParams:
    """Per-output-channel parameters from the weight itself, with the spec's observer: its
    range (``minmax``), or a clipped range (``mse``, ``dual-clip``, ``percentile``) found on
    the histogram of each output channel."""
    if spec.observer == "minmax":
        other = 1 - axis
        return compute_params(w.min(axis=other), w.max(axis=other), spec)
    observer = make_observer(spec, axis=axis)
    observer.update(w)
    return compute_params(*observer.range(), spec)


def _static_qdq(
    graph: ir.Graph, x: ir.Value, params: QuantParams, spec: QuantSpec
) -> list[ir.Node]:
    stem = x.name
    scale = add_initializer(graph, f"{stem}_scale", params.scale, ir.DataType.FLOAT)
    zero = add_initializer(graph, f"{stem}_zero_point", params.zero_point, spec.dtype)
    axis = {} if params.axis is None else {"axis": params.axis}
    clip = _grid_clip(graph, x, params, spec)
    source = clip[-1].outputs[0] if clip else x
    q = ir.node(
        "QuantizeLinear", [source, scale, zero], attributes=axis, name=f"{stem}_QuantizeLinear"
    )
    q.outputs[0].name = f"{stem}_quantized"
    dq = ir.node(
        "DequantizeLinear",
        [q.outputs[0], scale, zero],
        attributes=axis,
        name=f"{stem}_DequantizeLinear",
    )
    dq.outputs[0].name = f"{stem}_dequantized"
    return [*clip, q, dq]


def _grid_clip(graph: ir.Graph, x: ir.Value, params: QuantParams, spec: QuantSpec) -> list[ir.Node]:
    """Max/Min to the grid's float range [(qmin − z)·s, (qmax − z)·s] when the grid is narrower
    than the stored type (QuantizeLinear saturates only at the type's bounds)."""
    if spec.grid_bits is None:
        return []
    if params.axis not in (None, -1):
        raise ValueError("per-channel activation parameters are along the last axis")
    zero = params.zero_point.astype(np.float64)
    nodes: list[ir.Node] = []
    value = x
    for op, code in (("Max", spec.qmin), ("Min", spec.qmax)):
        bound = ((code - zero) * params.scale).astype(np.float32)  # () or (C,): last axis
        constant = add_initializer(graph, f"{x.name}_grid_{op}", bound)
        node = ir.node(op, [value, constant], name=f"{x.name}_grid_{op}")
        node.outputs[0].name = f"{x.name}_grid_{op.lower()}"
        nodes.append(node)
        value = node.outputs[0]
    return nodes


def _dynamic_qdq(x: ir.Value) -> list[ir.Node]:
    stem = x.name
    q = ir.node("DynamicQuantizeLinear", [x], num_outputs=3, name=f"{stem}_DynamicQuantizeLinear")
    for value, suffix in zip(q.outputs, ("quantized", "scale", "zero_point"), strict=True):
        value.name = f"{stem}_{suffix}"
    dq = ir.node("DequantizeLinear", list(q.outputs), name=f"{stem}_DequantizeLinear")
    dq.outputs[0].name = f"{stem}_dequantized"
    return [q, dq]
