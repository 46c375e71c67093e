"""``inspect_model``: a JSON-ready summary of an IR model, for people and for tools.

Users look at a model before compiling it (what ops, how many parameters, which linears a
recipe will hit, which norm sites RepQ can fold, whether it is already quantized); tools read
the same facts from ``qcompiler inspect --json``. So the report is plain data (dicts, lists,
strings, numbers, None) under a versioned ``"schema"``; the rich tables and the HTML view are
renderings of it.

Sections: ``model`` (source, IR version, opsets, producer, graph inputs/outputs with symbolic
dims), ``ops`` (histogram), ``parameters`` (initializer elements and bytes by dtype),
``largest_tensors``, ``layers`` (MatMul/Gemm/Conv with a constant weight, possibly behind a
DequantizeLinear), ``norm_linear`` (:mod:`qcompiler.passes.analyses.norm_linear`),
``quantization`` (quantization ops and, per integer tensor, dtype, bits, granularity and
symmetry) and ``unknown_domains`` (ops outside the domains qcompiler knows; inspect still works).

Only shapes and dtypes of weights are read, so external data stays on disk; zero points are
read to decide symmetry (they are small).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompiler.ir.graph import (
    ONNX_DOMAINS,
    all_nodes,
    constant_array,
    int_attribute,
    op_histogram,
    op_key,
)
from qcompiler.ir.provenance import module_name
from qcompiler.passes.analyses.norm_linear import find_norm_sites

SCHEMA = "qcompiler.inspect/1"
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
LARGEST_TENSORS = 10

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
QUANT_OPS = QDQ_OPS | {
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
    "QAttention",
}
"""Quantization ops besides the ``QLinear*`` family (default and com.microsoft domains)."""

Json = dict[str, Any]


def inspect_model(model: ir.Model, *, source: str) -> Json:
    """The inspection report of ``model``; ``source`` says where it came from (path, example)."""
    return {
        "schema": SCHEMA,
        "model": _model_info(model, source),
        "ops": dict(sorted(op_histogram(model).items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": _parameters(model),
        "largest_tensors": [_tensor_entry(v) for v in _largest(_initializers(model))],
        "layers": [layer for node in all_nodes(model) if (layer := _layer(node)) is not None],
        "norm_linear": find_norm_sites(model).to_json(),
        "quantization": _quantization(model),
        "unknown_domains": _unknown_domains(model),
    }


# ---- model -------------------------------------------------------------------------------------


def _model_info(model: ir.Model, source: str) -> Json:
    return {
        "source": source,
        "ir_version": model.ir_version,
        "opset_imports": dict(sorted(model.opset_imports.items())),
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "graph_name": model.graph.name,
        "nodes": len(model.graph),
        "inputs": [_value_entry(v) for v in model.graph.inputs],
        "outputs": [_value_entry(v) for v in model.graph.outputs],
    }


def _value_entry(value: ir.Value) -> Json:
    return {
        "name": value.name,
        "dtype": value.dtype.name if value.dtype is not None else None,
        "shape": shape_json(value.shape),
    }


def shape_json(shape: ir.Shape | None) -> list[int | str | None] | None:
    """A shape as JSON: ints for static dims, names for symbolic ones, None when unnamed."""
    if shape is None:
        return None
    return [dim if isinstance(dim, int) else dim.value for dim in shape]


# ---- parameters --------------------------------------------------------------------------------


def _initializers(model: ir.Model) -> list[ir.Value]:
    """The initializers of the main graph and of every subgraph."""
    return [
        value
        for graph in model.graphs()
        for value in graph.initializers.values()
        if value.const_value is not None
    ]


def _parameters(model: ir.Model) -> Json:
    elements: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    initializers = _initializers(model)
    for value in initializers:
        tensor = value.const_value
        assert tensor is not None
        elements[tensor.dtype.name] += tensor.size
        nbytes[tensor.dtype.name] += tensor.nbytes
    return {
        "count": sum(elements.values()),
        "bytes": sum(nbytes.values()),
        "initializers": len(initializers),
        "by_dtype": {
            dtype: {"count": elements[dtype], "bytes": nbytes[dtype]}
            for dtype in sorted(elements, key=lambda d: (-nbytes[d], d))
        },
    }


def _largest(values: list[ir.Value]) -> list[ir.Value]:
    def size_then_name(value: ir.Value) -> tuple[int, str]:
        assert value.const_value is not None
        return -value.const_value.nbytes, value.name or ""

    return sorted(values, key=size_then_name)[:LARGEST_TENSORS]


def _tensor_entry(value: ir.Value) -> Json:
    tensor = value.const_value
    assert tensor is not None
    return {
        "name": value.name,
        "dtype": tensor.dtype.name,
        "shape": list(tensor.shape.numpy()),
        "count": tensor.size,
        "bytes": tensor.nbytes,
    }


# ---- layers ------------------------------------------------------------------------------------

_CONV_LAYOUT = "[out,in/groups,*kernel]"


def _layer(node: ir.Node) -> Json | None:
    """A MatMul/Gemm/Conv whose weight is constant (or a DequantizeLinear of a constant)."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in ("MatMul", "Gemm", "Conv"):
        return None
    weight = _stored_weight(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None or weight.const_value is None:
        return None
    return {
        "node": node.name,
        "op_type": node.op_type,
        "module": module_name(node),
        "weight": weight.name,
        "weight_dtype": weight.const_value.dtype.name,
        "weight_shape": list(weight.const_value.shape.numpy()),
        "layout": _layout(node),
    }


def _stored_weight(value: ir.Value | None) -> ir.Value | None:
    """The initializer a weight input holds: itself, or what a DequantizeLinear dequantizes."""
    if value is None or value.is_graph_input():
        return None
    if value.const_value is not None:
        return value
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.inputs:
        return _stored_weight(producer.inputs[0])
    return None


def _layout(node: ir.Node) -> str:
    if node.op_type == "Conv":
        return _CONV_LAYOUT
    if node.op_type == "Gemm" and int_attribute(node, "transB", 0):
        return "[out,in]"
    return "[in,out]"


# ---- quantization ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Operand:
    """Where a quantization op keeps one integer tensor and its parameters.

    ``tensor`` is an input index, or ``-1 - k`` for output k; ``axis`` is the axis a 1-D scale
    runs along (the op's convention; negative counts from the end).
    """

    tensor: int
    scale: int | None
    zero_point: int | None
    axis: int


_UNARY = (_Operand(0, 1, 2, 1), _Operand(-1, 3, 4, 1))
_BINARY = (_Operand(0, 1, 2, 1), _Operand(3, 4, 5, 1), _Operand(-1, 6, 7, 1))
_OPERANDS: dict[str, tuple[_Operand, ...]] = {
    "QLinearMatMul": (_Operand(0, 1, 2, -2), _Operand(3, 4, 5, -1), _Operand(-1, 6, 7, -1)),
    "QLinearConv": (_Operand(0, 1, 2, 1), _Operand(3, 4, 5, 0), _Operand(-1, 6, 7, 1)),
    "MatMulInteger": (_Operand(0, None, 2, -2), _Operand(1, None, 3, -1)),
    "ConvInteger": (_Operand(0, None, 2, 1), _Operand(1, None, 3, 0)),
    "com.microsoft::DynamicQuantizeMatMul": (_Operand(1, 2, 3, -1),),
    "com.microsoft::MatMulIntegerToFloat": (_Operand(0, 2, 4, -2), _Operand(1, 3, 5, -1)),
    "com.microsoft::QLinearAdd": _BINARY,
    "com.microsoft::QLinearMul": _BINARY,
    "com.microsoft::QLinearSoftmax": _UNARY,
    "com.microsoft::QLinearSigmoid": _UNARY,
    "com.microsoft::QLinearLeakyRelu": _UNARY,
    "com.microsoft::QLinearAveragePool": _UNARY,
    "com.microsoft::QLinearGlobalAveragePool": _UNARY,
}
"""Integer operands of the fused quantized ops (ONNX and ORT contrib signatures)."""


def is_quantization_op(node: ir.Node) -> bool:
    """Q/DQ, dynamic and integer ops, ``QLinear*`` and ORT's quantized contrib ops."""
    if node.domain not in ONNX_DOMAINS and node.domain != "com.microsoft":
        return False
    return node.op_type in QUANT_OPS or node.op_type.startswith("QLinear")


def _quantization(model: ir.Model) -> Json:
    nodes = [node for node in all_nodes(model) if is_quantization_op(node)]
    tensors: dict[str, Json] = {}
    for node in nodes:
        for entry in _quantized_tensors(node):
            tensors.setdefault(entry["tensor"], entry)
    return {
        "ops": dict(sorted(Counter(op_key(n) for n in nodes).items())),
        "tensors": list(tensors.values()),
    }


def _quantized_tensors(node: ir.Node) -> Iterator[Json]:
    """One entry per integer tensor ``node`` produces or reads."""
    if node.op_type in QDQ_OPS:
        yield _qdq_entry(node)
    elif node.op_type == "DynamicQuantizeLinear":
        yield _entry(node, node.outputs[0], ir.DataType.UINT8, ("per-tensor", None, None), None)
    elif node.op_type == "MatMulNBits":
        yield _matmul_nbits_entry(node)
    else:
        for operand in _operands(node):
            entry = _operand_entry(node, operand)
            if entry is not None:
                yield entry


def _entry(
    node: ir.Node,
    tensor: ir.Value,
    dtype: ir.DataType,
    granularity: tuple[str, int | None, int | None],
    symmetric: bool | None,
) -> Json:
    kind, axis, block_size = granularity
    return {
        "tensor": tensor.name,
        "op": op_key(node),
        "node": node.name,
        "dtype": dtype.name,
        "bits": dtype.bitwidth,
        "granularity": kind,
        "axis": axis,
        "block_size": block_size,
        "symmetric": symmetric,
        "constant": tensor.const_value is not None,
    }


def _qdq_entry(node: ir.Node) -> Json:
    """QuantizeLinear: the integer output; DequantizeLinear: the integer input."""
    quantize = node.op_type == "QuantizeLinear"
    integer = node.outputs[0] if quantize else node.inputs[0]
    assert integer is not None
    zero_point = _input(node, 2)
    dtype = _qdq_dtype(node, integer, zero_point, quantize)
    axis = int_attribute(node, "axis", 1)
    block_size = int_attribute(node, "block_size", 0)
    granularity = _granularity(_input(node, 1), axis, block_size, integer)
    return _entry(node, integer, dtype, granularity, _is_symmetric(zero_point, dtype))


def _qdq_dtype(
    node: ir.Node, integer: ir.Value, zero_point: ir.Value | None, quantize: bool
) -> ir.DataType:
    """The integer type: the zero point's, else Q's ``output_dtype`` or uint8, else DQ's input."""
    if zero_point is not None and zero_point.dtype is not None:
        return zero_point.dtype
    if not quantize and integer.dtype is not None:
        return integer.dtype
    output_dtype = int_attribute(node, "output_dtype", 0)
    return ir.DataType(output_dtype) if output_dtype else ir.DataType.UINT8


def _granularity(
    scale: ir.Value | None, axis: int, block_size: int, tensor: ir.Value
) -> tuple[str, int | None, int | None]:
    """(kind, axis, block_size) from a scale's shape; axis normalized by the tensor's rank."""
    if block_size > 0:
        return "blocked", _normalized_axis(axis, tensor), block_size
    size = _static_size(scale)
    if size is None:
        return "unknown", None, None
    if size == 1:
        return "per-tensor", None, None
    return "per-axis", _normalized_axis(axis, tensor), None


def _matmul_nbits_entry(node: ir.Node) -> Json:
    """MatMulNBits' packed weight: W [K, N] in ``block_size`` blocks along K (axis 0)."""
    bits = int_attribute(node, "bits", 4)
    weight = node.inputs[1]
    assert weight is not None
    dtype = ir.DataType[f"UINT{bits}"]
    granularity = ("blocked", 0, int_attribute(node, "block_size", 0))
    zero_point = _input(node, 3)
    if zero_point is None:
        symmetric: bool | None = True  # absent zero points mean 2^(bits-1), the midpoint
    else:
        symmetric = _packed_zero_points_symmetric(node, zero_point, bits)
    return _entry(node, weight, dtype, granularity, symmetric)


def _packed_zero_points_symmetric(node: ir.Node, zero_point: ir.Value, bits: int) -> bool | None:
    """Whether MatMulNBits zero points all equal 2^(bits-1); packed low bits first in uint8."""
    array = constant_array(zero_point)
    if array is None:
        return None
    midpoint = 1 << (bits - 1)
    if zero_point.dtype != ir.DataType.UINT8 or bits == 8:
        return bool(np.all(array == midpoint))
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = (array.astype(np.uint8)[:, None] >> shifts) & ((1 << bits) - 1)
    n = int_attribute(node, "N", 0)
    blocks = -(-int_attribute(node, "K", 0) // max(int_attribute(node, "block_size", 1), 1))
    codes = codes.reshape(n, -1)[:, :blocks] if n else codes
    return bool(np.all(codes == midpoint))


def _operands(node: ir.Node) -> tuple[_Operand, ...]:
    key = op_key(node)
    if key == "com.microsoft::QGemm":
        weight_axis = 0 if int_attribute(node, "transB", 0) else 1
        return (_Operand(0, 1, 2, 1), _Operand(3, 4, 5, weight_axis), _Operand(-1, 7, 8, 1))
    if key == "com.microsoft::QLinearConcat":
        inputs = range(2, len(node.inputs) - 2, 3)
        return (_Operand(-1, 0, 1, 1), *(_Operand(i, i + 1, i + 2, 1) for i in inputs))
    return _OPERANDS.get(key, ())


def _operand_entry(node: ir.Node, operand: _Operand) -> Json | None:
    tensor = (
        node.outputs[-1 - operand.tensor] if operand.tensor < 0 else _input(node, operand.tensor)
    )
    if tensor is None:
        return None
    zero_point = _input(node, operand.zero_point)
    dtype = tensor.dtype or (zero_point.dtype if zero_point is not None else None)
    if dtype is None:
        return None
    parameter = _input(node, operand.scale) if operand.scale is not None else zero_point
    if parameter is None:  # MatMulInteger/ConvInteger without zero point: one implicit 0
        granularity: tuple[str, int | None, int | None] = ("per-tensor", None, None)
    else:
        granularity = _granularity(parameter, operand.axis, 0, tensor)
    return _entry(node, tensor, dtype, granularity, _is_symmetric(zero_point, dtype))


def _is_symmetric(zero_point: ir.Value | None, dtype: ir.DataType) -> bool | None:
    """Whether every zero point sits at the middle of the range (0 signed, 2^(b-1) unsigned).

    None when the zero point is computed at run time.
    """
    midpoint = 0 if dtype.is_signed() or dtype.is_floating_point() else 1 << (dtype.bitwidth - 1)
    if zero_point is None:
        return midpoint == 0
    array = constant_array(zero_point)
    if array is None:
        return None
    return bool(np.all(np.asarray(array, dtype=np.float64) == midpoint))


def _unknown_domains(model: ir.Model) -> dict[str, dict[str, int]]:
    ops: dict[str, Counter[str]] = {}
    for node in all_nodes(model):
        if node.domain not in KNOWN_DOMAINS:
            ops.setdefault(node.domain, Counter())[node.op_type] += 1
    return {domain: dict(sorted(ops[domain].items())) for domain in sorted(ops)}


# ---- small helpers -----------------------------------------------------------------------------


def _input(node: ir.Node, index: int | None) -> ir.Value | None:
    if index is None or index >= len(node.inputs):
        return None
    return node.inputs[index]


def _static_size(value: ir.Value | None) -> int | None:
    """Number of elements of ``value`` when its shape is known and static."""
    if value is None:
        return None
    shape = value.const_value.shape if value.const_value is not None else value.shape
    dims = [dim for dim in shape if isinstance(dim, int)] if shape is not None else []
    if shape is None or len(dims) != len(shape):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _normalized_axis(axis: int, tensor: ir.Value) -> int:
    """``axis`` made non-negative with the tensor's rank (kept as is when the rank is unknown)."""
    shape = tensor.const_value.shape if tensor.const_value is not None else tensor.shape
    if axis >= 0 or shape is None:
        return axis
    return axis + len(shape)
