"""A content fingerprint of a model's computation: the key of every cached analysis.

Calibration statistics (and other expensive analyses) are only valid for the graph they were
computed on (notes/algorithms.md §19 trap 30): after a fold the same tensor name holds different
values. :func:`graph_fingerprint` hashes everything that decides what the graph computes, in a
deterministic order, with sha256:

- the opset imports, the graph's inputs and outputs (names, element types, shapes);
- every node in graph order: domain, op type, overload, input and output value names, and its
  attributes sorted by name (tensor attributes by bytes, subgraphs recursively);
- every initializer: name, element type, shape and bytes;
- the model's functions, sorted by identifier.

Doc strings, metadata and the inferred types of intermediate values are left out: they do not
change what the graph computes. Node order is kept, so two orderings of the same graph give two
fingerprints (a spurious cache miss, never a wrong hit). Every field is length-prefixed, so no
two different graphs serialize to the same byte stream. Hashing the 90 MB MiniLM takes about a
tenth of a second (initializer bytes dominate).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import onnx_ir as ir

# Bumped when the serialization below changes, so old cache entries stop matching.
_FORMAT = "qcompiler.graph_fingerprint/1"


def graph_fingerprint(model: ir.Model) -> str:
    """The sha256 hex digest of ``model``'s computation (see the module docstring)."""
    hasher = _Hasher()
    hasher.text(_FORMAT)
    for domain, version in sorted(model.opset_imports.items()):
        hasher.text(domain)
        hasher.integer(version)
    _hash_graph(hasher, model.graph)
    for identifier in sorted(model.functions):
        function = model.functions[identifier]
        hasher.text("::".join(identifier))
        hasher.texts(function.attributes)
        _hash_graph(hasher, function)
    return hasher.hexdigest()


class _Hasher:
    """sha256 fed with length-prefixed fields."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def blob(self, data: bytes | memoryview) -> None:
        self._sha.update(struct.pack("<Q", len(data)))
        self._sha.update(data)

    def text(self, value: str | None) -> None:
        self.blob(b"\xff" if value is None else value.encode("utf-8"))

    def texts(self, values: Iterable[object]) -> None:
        items = [str(v) for v in values]
        self.integer(len(items))
        for item in items:
            self.text(item)

    def integer(self, value: int) -> None:
        self.text(str(value))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _hash_graph(hasher: _Hasher, graph: ir.Graph | ir.Function) -> None:
    """Inputs, outputs, initializers and nodes of ``graph`` (or a function body)."""
    for values in (graph.inputs, graph.outputs):
        hasher.integer(len(values))
        for value in values:
            hasher.text(value.name)
            hasher.text(str(value.type))
            hasher.text(str(value.shape))
    if isinstance(graph, ir.Graph):
        for name in sorted(graph.initializers):
            tensor = graph.initializers[name].const_value
            hasher.text(name)
            if tensor is not None:
                _hash_tensor(hasher, tensor)
    for node in graph:
        _hash_node(hasher, node)


def _hash_node(hasher: _Hasher, node: ir.Node) -> None:
    hasher.text(node.domain)
    hasher.text(node.op_type)
    hasher.text(node.overload)
    hasher.texts(v.name if v is not None else "" for v in node.inputs)
    hasher.texts(v.name for v in node.outputs)
    hasher.integer(len(node.attributes))
    for name in sorted(node.attributes):
        _hash_attribute(hasher, node.attributes[name])


def _hash_attribute(hasher: _Hasher, attribute: ir.Attr) -> None:
    hasher.text(attribute.name)
    hasher.text(attribute.type.name)
    if attribute.is_ref():
        hasher.text(attribute.ref_attr_name)
        return
    kind, value = attribute.type, attribute.value
    if kind is ir.AttributeType.TENSOR:
        _hash_tensor(hasher, value)
    elif kind is ir.AttributeType.TENSORS:
        for tensor in value:
            _hash_tensor(hasher, tensor)
    elif kind is ir.AttributeType.GRAPH:
        _hash_graph(hasher, value)
    elif kind is ir.AttributeType.GRAPHS:
        for graph in value:
            _hash_graph(hasher, graph)
    elif kind in (ir.AttributeType.FLOAT, ir.AttributeType.FLOATS):
        # repr of a Python float round-trips exactly.
        hasher.texts(value if kind is ir.AttributeType.FLOATS else [value])
    else:
        hasher.text(repr(value))


def _hash_tensor(hasher: _Hasher, tensor: ir.TensorProtocol) -> None:
    hasher.text(tensor.dtype.name)
    hasher.text(str(tensor.shape))
    if tensor.dtype is ir.DataType.STRING:
        hasher.texts(tensor.numpy().ravel().tolist())
    else:
        hasher.blob(tensor.tobytes())
