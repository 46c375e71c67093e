"""Linear layers: MatMul / Gemm with a constant 2-D weight, their layout and their bias.

Quantization plans, RepQ folds and inspect all act on the same sites, so the matching lives
here once (notes/algorithms.md §1, matching rules):

- ``MatMul(x, W)`` with W a constant 2-D tensor, layout ``[in,out]``;
- ``Gemm(x, W[, C])`` with ``transA=0``, W constant and 2-D (``[in,out]``, or ``[out,in]`` with
  ``transB=1``) and C absent or constant.

"Constant" means an initializer that is not a graph input; canonicalization lifts Constant nodes
into initializers, so run it first. A MatMul's **bias** is ``Add(MatMul, b)`` or
``Add(b, MatMul)`` with b constant and ``out`` elements along its last axis (``[out]``,
``[1, 1, out]``) when that Add is the MatMul output's only reader; a Gemm's is C (read
``alpha``/``beta`` from the node). A weight or bias is **shared** when anything besides its
layer reads it (another node or a graph output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import onnx_ir as ir

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes, int_attribute
from qcompiler.passes.manager import Analysis, AnalysisManager

WeightLayout = Literal["[in,out]", "[out,in]"]


@dataclass(frozen=True)
class LinearLayer:
    """A MatMul or Gemm computing x·W (+ b) with a constant 2-D weight W."""

    node: str
    op_type: Literal["MatMul", "Gemm"]
    weight: str
    weight_shape: tuple[int, int]
    layout: WeightLayout
    weight_shared: bool
    bias: str | None
    """The constant bias: Gemm's C, or the b of the Add after a MatMul."""
    bias_node: str | None
    """The Add that applies a MatMul's bias (None for Gemm and for a MatMul without bias)."""
    bias_shared: bool
    activation: str
    """The activation input x (input A)."""
    output: str
    """The value holding x·W + b: the bias Add's output, else the layer's own output."""

    @property
    def weight_axis(self) -> int:
        """The weight's output-channel axis: 1 for ``[in,out]``, 0 for ``[out,in]``."""
        return 1 if self.layout == "[in,out]" else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "weight": self.weight,
            "weight_shape": list(self.weight_shape),
            "layout": self.layout,
            "weight_shared": self.weight_shared,
            "bias": self.bias,
            "bias_node": self.bias_node,
            "bias_shared": self.bias_shared,
            "activation": self.activation,
            "output": self.output,
        }


class LinearLayers(Analysis[tuple[LinearLayer, ...]]):
    """Every linear layer of the main graph, in graph order."""

    @classmethod
    def compute(cls, model: ir.Model, analyses: AnalysisManager) -> tuple[LinearLayer, ...]:
        return tuple(
            layer
            for node in all_nodes(model)
            if isinstance(layer := match_linear(node), LinearLayer)
        )


def match_linear(node: ir.Node) -> LinearLayer | str:
    """``node`` as a linear layer, or the reason it is not one ('' for ops that are not linear)."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in ("MatMul", "Gemm"):
        return ""
    if node.inputs[0] is None or node.inputs[0].name is None:
        return "has no activation input"
    return _matmul(node) if node.op_type == "MatMul" else _gemm(node)


def _matmul(node: ir.Node) -> LinearLayer | str:
    reason = _weight_problem(node)
    if reason:
        return reason
    weight = node.inputs[1]
    assert weight is not None
    shape = constant_shape(weight)
    assert shape is not None and len(shape) == 2
    bias_add, bias = _bias_add(node.outputs[0], shape[1]) or (None, None)
    return LinearLayer(
        node=node.name or "",
        op_type="MatMul",
        weight=weight.name or "",
        weight_shape=(shape[0], shape[1]),
        layout="[in,out]",
        weight_shared=is_shared(weight, node),
        bias=bias.name if bias is not None else None,
        bias_node=bias_add.name if bias_add is not None else None,
        bias_shared=bias_add is not None and bias is not None and is_shared(bias, bias_add),
        activation=_activation(node),
        output=(bias_add or node).outputs[0].name or "",
    )


def _gemm(node: ir.Node) -> LinearLayer | str:
    reason = _weight_problem(node)
    if not reason and int_attribute(node, "transA", 0) != 0:
        reason = "has transA=1"
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if not reason and bias is not None and constant_shape(bias) is None:
        reason = "has a non-constant C"
    if reason:
        return reason
    weight = node.inputs[1]
    shape = constant_shape(weight)
    assert weight is not None and shape is not None and len(shape) == 2
    transposed = int_attribute(node, "transB", 0) != 0
    return LinearLayer(
        node=node.name or "",
        op_type="Gemm",
        weight=weight.name or "",
        weight_shape=(shape[0], shape[1]),
        layout="[out,in]" if transposed else "[in,out]",
        weight_shared=is_shared(weight, node),
        bias=bias.name if bias is not None else None,
        bias_node=None,
        bias_shared=bias is not None and is_shared(bias, node),
        activation=_activation(node),
        output=node.outputs[0].name or "",
    )


def _activation(node: ir.Node) -> str:
    value = node.inputs[0]
    assert value is not None and value.name is not None
    return value.name


def _weight_problem(node: ir.Node) -> str:
    """Why the MatMul/Gemm's weight (input B) is not a constant 2-D tensor; '' when it is."""
    shape = constant_shape(node.inputs[1])
    if shape is None:
        return "has a non-constant weight"
    if len(shape) != 2:
        return f"weight is not 2-D (shape {list(shape)})"
    return ""


def _bias_add(output: ir.Value, out_features: int) -> tuple[ir.Node, ir.Value] | None:
    """The Add applying a constant per-output bias to a MatMul ``output``, with its bias."""
    consumers = output.consumers()
    if output.is_graph_output() or len(consumers) != 1:
        return None
    add = consumers[0]
    if add.op_type != "Add" or add.domain not in ONNX_DOMAINS or len(add.inputs) != 2:
        return None
    bias = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
    shape = constant_shape(bias)
    if bias is None or shape is None or not _is_per_output(shape, out_features):
        return None
    return add, bias


def _is_per_output(shape: tuple[int, ...], out_features: int) -> bool:
    """Whether a bias of ``shape`` holds one value per output feature (``[out]``, ``[1,1,out]``)."""
    return bool(shape) and shape[-1] == out_features and all(d == 1 for d in shape[:-1])


def constant_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` if it is an initializer that is not a graph input, else None.

    Reads only the tensor's shape, so external data stays on disk.
    """
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return tuple(value.const_value.shape.numpy())


def is_shared(value: ir.Value, owner: ir.Node) -> bool:
    """Whether anything besides ``owner`` reads ``value`` (another node or a graph output)."""
    return value.is_graph_output() or any(node is not owner for node in value.consumers())
