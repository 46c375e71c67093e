"""Which quantized layers ONNX Runtime really runs as integer kernels: measured, not guessed.

ORT's CPU optimizer rewrites Q/DQ patterns into integer kernels (notes/algorithms.md §11):
DQ(x)·DQ(W) → MatMul becomes MatMulIntegerToFloat (or QLinearMatMul with an output Q), the
dynamic form becomes DynamicQuantizeMatMul, Gemm becomes QGemm, Conv QLinearConv. Whether a
given layer fuses depends on blockers (a graph output, a non-Q consumer, mismatched scales, §19
trap 17), so this module builds the session with ``optimized_model_filepath``, reads the graph
ORT will execute, and finds the kernel that consumes each quantized weight. A weight that still
goes through a DequantizeLinear there is an accuracy **simulation** in float, and is reported as
such with the reason.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from qcompiler.backends.ort.session import make_session

INTEGER_KERNELS = frozenset(
    {
        "MatMulIntegerToFloat",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "QGemm",
        "QLinearConv",
        "ConvInteger",
        "MatMulNBits",
    }
)


@dataclass(frozen=True)
class LayerKernel:
    """What ORT runs for one quantized weight."""

    weight: str
    kernel: str
    """The optimized graph's op reading the quantized weight (e.g. MatMulIntegerToFloat)."""
    integer: bool
    reason: str
    """Why it stays simulated; empty when it runs as an integer kernel."""

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> LayerKernel:
        return cls(
            str(entry["weight"]), str(entry["kernel"]), bool(entry["integer"]), str(entry["reason"])
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "kernel": self.kernel,
            "integer": self.integer,
            "reason": self.reason,
        }


def optimized_graph(model: ir.Model, threads: int = 1) -> onnx.ModelProto:
    """The graph ORT executes after its CPU optimizations (ORT_ENABLE_ALL)."""
    with tempfile.TemporaryDirectory(prefix="qcompiler-ort-") as folder:
        path = Path(folder) / "optimized.onnx"
        make_session(model, threads=threads, optimized_model_path=path)
        return onnx.load(path)


def layer_kernels(model: ir.Model, quantized_weights: Iterable[str]) -> list[LayerKernel]:
    """For each quantized weight initializer, the kernel ORT runs on it and why."""
    graph = OptimizedGraph(optimized_graph(model).graph)
    return [_kernel(weight, graph) for weight in quantized_weights]


class OptimizedGraph:
    """Readers and producers of every value in ORT's optimized graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
            for name in node.output:
                self.producers[name] = node
        self.outputs = {o.name for o in graph.output}

    def first_reader(self, name: str) -> onnx.NodeProto | None:
        return next(iter(self.readers.get(name, [])), None)


def _kernel(weight: str, graph: OptimizedGraph) -> LayerKernel:
    node = graph.first_reader(weight)
    if node is None:
        return LayerKernel(
            weight, "none", False, "ORT folded the weight's DequantizeLinear back to float"
        )
    if node.op_type in INTEGER_KERNELS:
        return LayerKernel(weight, node.op_type, True, "")
    if node.op_type != "DequantizeLinear":
        return LayerKernel(weight, node.op_type, False, _why_float(node, graph))
    consumer = graph.first_reader(node.output[0])
    if consumer is None:
        return LayerKernel(weight, "none", False, "the dequantized weight has no reader")
    return LayerKernel(weight, consumer.op_type, False, _why_not_fused(consumer, graph))


def _why_float(reader: onnx.NodeProto, graph: OptimizedGraph) -> str:
    """Why a layer reads a weight that is not integer (materialize stored it dequantized)."""
    producer = graph.producers.get(reader.input[0]) if reader.input else None
    if producer is not None and _per_axis(producer):
        return "per-channel activation scales have no integer kernel: a float simulation"
    return f"read by {reader.op_type}"


def _per_axis(node: onnx.NodeProto) -> bool:
    return node.op_type == "DequantizeLinear" and any(a.name == "axis" for a in node.attribute)


def _why_not_fused(consumer: onnx.NodeProto, graph: OptimizedGraph) -> str:
    """The blocker ORT's QDQ selectors check for (qdq_selectors.cc), as far as it can be seen."""
    if any(name in graph.outputs for name in consumer.output):
        return f"{consumer.op_type} produces a graph output"
    if consumer.op_type == "Gemm" and len(consumer.input) > 2 and consumer.input[2]:
        bias = graph.producers.get(consumer.input[2])
        if bias is None or bias.op_type != "DequantizeLinear":
            return (
                "ORT made a float Gemm of the 2-D MatMul and its bias Add; QGemm needs an int32 "
                "bias (DequantizeLinear with scale s_x·s_w)"
            )
    producer = graph.producers.get(consumer.input[0]) if consumer.input else None
    if producer is None or producer.op_type != "DequantizeLinear":
        return f"the {consumer.op_type}'s activation input is not quantized"
    return f"ORT did not fuse this {consumer.op_type} (unsupported types or attributes)"
