"""Building and running small test graphs (ONNX text → IR → ORT)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from qcompiler.backends.ort.session import run_model
from qcompiler.passes.verify import normwise_error


def build(text: str) -> ir.Model:
    """Parse ONNX text into an IR model (checked by the ONNX checker first)."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def outputs(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    result = run_model(model, feeds, optimize=False)
    return [result[v.name] for v in model.graph.outputs if v.name is not None]


def max_normwise_error(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    return max(normwise_error(a, b) for a, b in zip(after, before, strict=True))


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def snapshot(model: ir.Model) -> bytes:
    """A byte-exact picture of the model, to assert that a pass left it unchanged."""
    return ir.to_proto(model).SerializeToString(deterministic=True)
