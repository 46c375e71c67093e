"""Small read-only queries on onnx_ir graphs shared by passes, analyses and inspect."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

ONNX_DOMAINS = frozenset({"", "ai.onnx"})


def onnx_opset(model: ir.Model) -> int:
    """The default-domain opset the model imports (0 when it imports none)."""
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


def all_nodes(model: ir.Model) -> list[ir.Node]:
    """Every node of the main graph and its subgraphs (If/Loop bodies)."""
    return list(ir.traversal.RecursiveGraphIterator(model.graph))


def op_histogram(model: ir.Model) -> Counter[str]:
    """Node count per op, keyed ``op_type`` (default domain) or ``domain::op_type``."""
    return Counter(op_key(node) for node in all_nodes(model))


def op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}::{node.op_type}"


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's tensor if it is an initializer or the output of a Constant node, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ONNX_DOMAINS:
        attribute = producer.attributes.get("value")
        if attribute is not None and isinstance(attribute.value, ir.TensorProtocol):
            return attribute.value.numpy()
    return None


def is_scalar_close(value: ir.Value | None, target: float, rtol: float = 1e-6) -> bool:
    """Whether ``value`` is a constant holding one element equal to ``target`` within ``rtol``."""
    array = constant_array(value)
    return (
        array is not None and array.size == 1 and bool(np.isclose(array.item(), target, rtol=rtol))
    )


def int_attribute(node: ir.Node, name: str, default: int) -> int:
    """An integer attribute's value, or ``default`` when the node omits it."""
    attribute = node.attributes.get(name)
    return default if attribute is None else int(attribute.as_int())
