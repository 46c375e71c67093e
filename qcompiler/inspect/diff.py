"""``diff_models``: what changed between two IR models, e.g. before and after a pipeline.

``qcompiler inspect A.onnx B.onnx`` answers "what did this pass pipeline do to my graph" with
plain facts, for people (:mod:`qcompiler.inspect.diff_render`) and tools (``--json``, schema
``qcompiler.inspect-diff/1``, docs/schemas.md):

- model properties (IR version, producer, graph name), opset imports and ``metadata_props``
  whose values differ;
- the op histogram's deltas;
- nodes added and removed, matched by name (an unnamed node is named after its first output,
  ``<output>``; a repeated name gets ``#2``, ``#3`` in graph order); for a name on both sides,
  a changed op type, input or output names, or attributes;
- initializers added, removed or changed: dtype and shape first, then (same dtype and shape)
  a sha256 of the bytes; two external tensors stored at the same file range are equal unread;
- graph inputs and outputs added, removed or with another dtype or shape;
- the Q/DQ state of each side: QuantizeLinear / DequantizeLinear counts and the initializers a
  DequantizeLinear dequantizes, by dtype.

Nodes and initializers of subgraphs (If / Loop bodies) count too. Every list is sorted by name
and every map by key, so the same two models always give the same JSON.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import onnx_ir as ir

from qcompiler.inspect.summary import QDQ_OPS, shape_json
from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes, op_histogram, op_key

SCHEMA = "qcompiler.inspect-diff/1"

Json = dict[str, Any]


class _JsonItem(Protocol):
    def to_json(self) -> Json: ...


Item = TypeVar("Item", bound=_JsonItem)
Change = TypeVar("Change", bound=_JsonItem)
InfoReader = Callable[[ir.Value], "TensorInfo"]


@dataclass(frozen=True)
class ValueChange:
    """A keyed value that differs; ``None`` on the side where the key is absent."""

    before: Any
    after: Any

    def to_json(self) -> Json:
        return {"before": self.before, "after": self.after}


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of an initializer or a graph input/output."""

    name: str
    dtype: str | None
    shape: list[int | str | None] | None

    def to_json(self) -> Json:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass(frozen=True)
class TensorChange:
    """A tensor on both sides that differs in ``changed`` (``dtype``, ``shape``, ``values``)."""

    before: TensorInfo
    after: TensorInfo
    changed: tuple[str, ...]

    def to_json(self) -> Json:
        return {
            "name": self.after.name,
            "changed": list(self.changed),
            "before": {"dtype": self.before.dtype, "shape": self.before.shape},
            "after": {"dtype": self.after.dtype, "shape": self.after.shape},
        }


@dataclass(frozen=True)
class NodeInfo:
    """A node added or removed: its match name, op (``domain::op`` outside ONNX) and values."""

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def to_json(self) -> Json:
        return {
            "name": self.name,
            "op": self.op,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
        }


@dataclass(frozen=True)
class NodeChange:
    """A node on both sides; each field is None when unchanged, ``attributes`` lists changes."""

    name: str
    op: str
    """The op after the change."""
    op_type: ValueChange | None
    inputs: ValueChange | None
    outputs: ValueChange | None
    attributes: dict[str, ValueChange]

    def to_json(self) -> Json:
        return {
            "name": self.name,
            "op": self.op,
            "op_type": _optional_json(self.op_type),
            "inputs": _optional_json(self.inputs),
            "outputs": _optional_json(self.outputs),
            "attributes": _changes_json(self.attributes),
        }


@dataclass(frozen=True)
class Section(Generic[Item, Change]):
    """Named things added, removed and changed, each sorted by name."""

    added: tuple[Item, ...]
    removed: tuple[Item, ...]
    changed: tuple[Change, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> Json:
        return {
            "added": [item.to_json() for item in self.added],
            "removed": [item.to_json() for item in self.removed],
            "changed": [change.to_json() for change in self.changed],
        }


@dataclass(frozen=True)
class QdqSummary:
    """Q/DQ node counts and the initializers DequantizeLinear nodes read as data, by dtype."""

    quantize: int
    dequantize: int
    quantized_initializers: dict[str, int]

    def to_json(self) -> Json:
        return {
            "QuantizeLinear": self.quantize,
            "DequantizeLinear": self.dequantize,
            "quantized_initializers": dict(self.quantized_initializers),
        }


@dataclass(frozen=True)
class Side:
    """One of the two models: where it came from and its size."""

    source: str
    nodes: int
    initializers: int
    quantization: QdqSummary

    def to_json(self) -> Json:
        return {"source": self.source, "nodes": self.nodes, "initializers": self.initializers}


@dataclass(frozen=True)
class GraphDiff:
    """Everything that differs between two models (see the module docstring)."""

    before: Side
    after: Side
    model: dict[str, ValueChange]
    opset_imports: dict[str, ValueChange]
    metadata_props: dict[str, ValueChange]
    ops: dict[str, ValueChange]
    nodes: Section[NodeInfo, NodeChange]
    initializers: Section[TensorInfo, TensorChange]
    inputs: Section[TensorInfo, TensorChange]
    outputs: Section[TensorInfo, TensorChange]

    @property
    def changed(self) -> bool:
        """Whether any section reports a difference."""
        maps = (self.model, self.opset_imports, self.metadata_props, self.ops)
        sections = (self.nodes, self.initializers, self.inputs, self.outputs)
        quantization = self.before.quantization != self.after.quantization
        return any(maps) or any(sections) or quantization

    def to_json(self) -> Json:
        return {
            "schema": SCHEMA,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "changed": self.changed,
            "model": _changes_json(self.model),
            "opset_imports": _changes_json(self.opset_imports),
            "metadata_props": _changes_json(self.metadata_props),
            "ops": {
                op: {**change.to_json(), "delta": change.after - change.before}
                for op, change in self.ops.items()
            },
            "nodes": self.nodes.to_json(),
            "initializers": self.initializers.to_json(),
            "inputs": self.inputs.to_json(),
            "outputs": self.outputs.to_json(),
            "quantization": {
                "before": self.before.quantization.to_json(),
                "after": self.after.quantization.to_json(),
            },
        }


def diff_models(
    before: ir.Model, after: ir.Model, *, sources: tuple[str, str] = ("before", "after")
) -> GraphDiff:
    """What differs from ``before`` to ``after``; ``sources`` label the two sides."""
    before_initializers, after_initializers = _initializers(before), _initializers(after)
    return GraphDiff(
        before=_side(before, sources[0], before_initializers),
        after=_side(after, sources[1], after_initializers),
        model=_map_changes(_model_properties(before), _model_properties(after)),
        opset_imports=_map_changes(before.opset_imports, after.opset_imports),
        metadata_props=_map_changes(before.metadata_props, after.metadata_props),
        ops=_map_changes(op_histogram(before), op_histogram(after), absent=0),
        nodes=_node_section(_nodes_by_name(before), _nodes_by_name(after)),
        initializers=_tensor_section(before_initializers, after_initializers, _initializer_info),
        inputs=_value_section(before.graph.inputs, after.graph.inputs),
        outputs=_value_section(before.graph.outputs, after.graph.outputs),
    )


# ---- maps of scalars ---------------------------------------------------------------------------


def _model_properties(model: ir.Model) -> dict[str, Any]:
    return {
        "ir_version": model.ir_version,
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "graph_name": model.graph.name,
    }


def _map_changes(
    before: Mapping[str, Any], after: Mapping[str, Any], absent: Any = None
) -> dict[str, ValueChange]:
    """Per key (sorted) whose value differs, both values; ``absent`` stands for a missing key."""
    changes = {}
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, absent), after.get(key, absent)
        if old != new:
            changes[key] = ValueChange(old, new)
    return changes


def _changes_json(changes: Mapping[str, ValueChange]) -> Json:
    return {key: change.to_json() for key, change in changes.items()}


def _optional_json(change: ValueChange | None) -> Json | None:
    return None if change is None else change.to_json()


# ---- nodes -------------------------------------------------------------------------------------


def _nodes_by_name(model: ir.Model) -> dict[str, ir.Node]:
    """Every node keyed by its match name (see the module docstring), in graph order."""
    nodes: dict[str, ir.Node] = {}
    for node in all_nodes(model):
        base = node.name or _unnamed(node)
        key, occurrence = base, 1
        while key in nodes:
            occurrence += 1
            key = f"{base}#{occurrence}"
        nodes[key] = node
    return nodes


def _unnamed(node: ir.Node) -> str:
    return f"<{_name(node.outputs[0])}>" if node.outputs else f"<{op_key(node)}>"


def _node_section(
    before: dict[str, ir.Node], after: dict[str, ir.Node]
) -> Section[NodeInfo, NodeChange]:
    changes = (
        _node_change(name, before[name], after[name])
        for name in sorted(before.keys() & after.keys())
    )
    return Section(
        added=tuple(_node_info(name, after[name]) for name in sorted(after.keys() - before.keys())),
        removed=tuple(
            _node_info(name, before[name]) for name in sorted(before.keys() - after.keys())
        ),
        changed=tuple(change for change in changes if change is not None),
    )


def _node_info(name: str, node: ir.Node) -> NodeInfo:
    return NodeInfo(name, op_key(node), _input_names(node), _output_names(node))


def _input_names(node: ir.Node) -> tuple[str, ...]:
    """Input value names; an omitted optional input is ``""`` as in ONNX."""
    return tuple(_name(value) for value in node.inputs)


def _output_names(node: ir.Node) -> tuple[str, ...]:
    return tuple(_name(value) for value in node.outputs)


def _name(value: ir.Value | None) -> str:
    return value.name or "" if value is not None else ""


def _node_change(name: str, before: ir.Node, after: ir.Node) -> NodeChange | None:
    """The differences of one node matched by name, or None when there are none."""
    op_type = _value_change(op_key(before), op_key(after))
    inputs = _value_change(list(_input_names(before)), list(_input_names(after)))
    outputs = _value_change(list(_output_names(before)), list(_output_names(after)))
    attributes = _map_changes(_attributes(before), _attributes(after))
    if op_type is None and inputs is None and outputs is None and not attributes:
        return None
    return NodeChange(name, op_key(after), op_type, inputs, outputs, attributes)


def _value_change(before: Any, after: Any) -> ValueChange | None:
    return None if before == after else ValueChange(before, after)


def _attributes(node: ir.Node) -> dict[str, Any]:
    return {name: _attribute_json(attribute) for name, attribute in node.attributes.items()}


def _attribute_json(attribute: ir.Attr) -> Any:
    """An attribute's value as JSON: scalars and lists as is, tensors by dtype, shape and hash."""
    if attribute.is_ref():
        return {"ref": attribute.ref_attr_name}
    kind, value = attribute.type, attribute.value
    if kind is ir.AttributeType.TENSOR:
        return _tensor_json(value)
    if kind is ir.AttributeType.TENSORS:
        return [_tensor_json(tensor) for tensor in value]
    if kind is ir.AttributeType.GRAPH:
        return _graph_json(value)
    if kind is ir.AttributeType.GRAPHS:
        return [_graph_json(graph) for graph in value]
    if kind in (ir.AttributeType.FLOATS, ir.AttributeType.INTS, ir.AttributeType.STRINGS):
        return list(value)
    if kind in (ir.AttributeType.FLOAT, ir.AttributeType.INT, ir.AttributeType.STRING):
        return value
    return str(value)


def _tensor_json(tensor: ir.TensorProtocol) -> Json:
    return {
        "dtype": tensor.dtype.name,
        "shape": list(tensor.shape.numpy()),
        "sha256": _content_hash(tensor),
    }


def _graph_json(graph: ir.Graph) -> Json:
    """A subgraph by name and size; its nodes are diffed with the others."""
    return {"graph": graph.name, "nodes": len(graph)}


# ---- initializers and graph inputs / outputs ---------------------------------------------------


def _initializers(model: ir.Model) -> dict[str, ir.Value]:
    """The initializers of the main graph and its subgraphs, by name (the first one wins)."""
    values: dict[str, ir.Value] = {}
    for graph in model.graphs():
        for name, value in graph.initializers.items():
            values.setdefault(name, value)
    return values


def _initializer_info(value: ir.Value) -> TensorInfo:
    tensor = value.const_value
    if tensor is None:
        return _value_info(value)
    return TensorInfo(_name(value), tensor.dtype.name, list(tensor.shape.numpy()))


def _value_info(value: ir.Value) -> TensorInfo:
    dtype = value.dtype.name if value.dtype is not None else None
    return TensorInfo(_name(value), dtype, shape_json(value.shape))


def _value_section(
    before: Sequence[ir.Value], after: Sequence[ir.Value]
) -> Section[TensorInfo, TensorChange]:
    return _tensor_section(_by_name(before), _by_name(after), _value_info)


def _by_name(values: Iterable[ir.Value]) -> dict[str, ir.Value]:
    return {_name(value): value for value in values}


def _tensor_section(
    before: dict[str, ir.Value], after: dict[str, ir.Value], info: InfoReader
) -> Section[TensorInfo, TensorChange]:
    """Added, removed and changed values; ``info`` reads a value's dtype and shape."""
    changes = (
        _tensor_change(before[name], after[name], info)
        for name in sorted(before.keys() & after.keys())
    )
    return Section(
        added=tuple(info(after[name]) for name in sorted(after.keys() - before.keys())),
        removed=tuple(info(before[name]) for name in sorted(before.keys() - after.keys())),
        changed=tuple(change for change in changes if change is not None),
    )


def _tensor_change(before: ir.Value, after: ir.Value, info: InfoReader) -> TensorChange | None:
    """What differs: dtype and shape, or (only when both match) the stored values."""
    old, new = info(before), info(after)
    changed = tuple(
        field
        for field, differs in (("dtype", old.dtype != new.dtype), ("shape", old.shape != new.shape))
        if differs
    )
    if not changed and _values_differ(before.const_value, after.const_value):
        changed = ("values",)
    return TensorChange(old, new, changed) if changed else None


def _values_differ(before: ir.TensorProtocol | None, after: ir.TensorProtocol | None) -> bool:
    """Whether two tensors of the same dtype and shape hold different bytes."""
    if before is None or after is None:
        return (before is None) != (after is None)
    if _same_storage(before, after):
        return False
    return _content_hash(before) != _content_hash(after)


def _same_storage(before: ir.TensorProtocol, after: ir.TensorProtocol) -> bool:
    """Both tensors are the same object, or the same byte range of the same external file."""
    if before is after:
        return True
    if isinstance(before, ir.ExternalTensor) and isinstance(after, ir.ExternalTensor):
        return (before.path, before.offset, before.length) == (
            after.path,
            after.offset,
            after.length,
        )
    return False


def _content_hash(tensor: ir.TensorProtocol) -> str:
    """sha256 of the tensor's bytes (of its strings, length-prefixed, for STRING tensors)."""
    digest = hashlib.sha256()
    if tensor.dtype is ir.DataType.STRING:
        for item in tensor.numpy().ravel().tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            digest.update(len(data).to_bytes(8, "little") + data)
    else:
        digest.update(tensor.tobytes())
    return digest.hexdigest()


# ---- sides and their Q/DQ state ----------------------------------------------------------------


def _side(model: ir.Model, source: str, initializers: dict[str, ir.Value]) -> Side:
    return Side(source, len(all_nodes(model)), len(initializers), _qdq_summary(model))


def _qdq_summary(model: ir.Model) -> QdqSummary:
    qdq = [node for node in all_nodes(model) if _is_qdq(node)]
    counts = Counter(node.op_type for node in qdq)
    dtypes = dict(entry for node in qdq if (entry := _dequantized_initializer(node)) is not None)
    return QdqSummary(
        quantize=counts["QuantizeLinear"],
        dequantize=counts["DequantizeLinear"],
        quantized_initializers=dict(sorted(Counter(dtypes.values()).items())),
    )


def _is_qdq(node: ir.Node) -> bool:
    """QuantizeLinear or DequantizeLinear, in the ONNX or the com.microsoft domain."""
    return node.op_type in QDQ_OPS and (
        node.domain in ONNX_DOMAINS or node.domain == "com.microsoft"
    )


def _dequantized_initializer(node: ir.Node) -> tuple[str, str] | None:
    """(name, dtype) of the initializer a DequantizeLinear reads as its data, if it reads one."""
    data = node.inputs[0] if node.op_type == "DequantizeLinear" and node.inputs else None
    if data is None or not data.is_initializer() or data.const_value is None:
        return None
    return _name(data), data.const_value.dtype.name
