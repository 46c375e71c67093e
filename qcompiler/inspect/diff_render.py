"""Rendering a :class:`~qcompiler.inspect.diff.GraphDiff` as rich tables for the terminal.

One table per section (model, op counts, nodes added / removed / changed, initializers, graph
inputs and outputs, Q/DQ); a section without differences is a one-line note. Long lists show
their first :data:`ROW_LIMIT` entries and a "… and N more" row; the JSON keeps every entry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qcompiler.inspect.diff import (
    GraphDiff,
    NodeChange,
    NodeInfo,
    QdqSummary,
    Section,
    TensorChange,
    TensorInfo,
    ValueChange,
)
from qcompiler.inspect.render import shape_text

ROW_LIMIT = 20
VALUE_WIDTH = 80
"""Longer values (metadata, input lists) are cut to this many characters in a cell."""

Row = tuple[str, ...]


def render_diff(diff: GraphDiff, console: Console) -> None:
    """Print every section of ``diff`` on ``console``: a table, or a one-line note if unchanged."""
    console.print(_table("Models", ("", "before", "after"), _sides_rows(diff)))
    if not diff.changed:
        console.print(Text("No differences.", style="bold"))
        return
    for title, columns, rows, note in _sections(diff):
        if rows:
            console.print(_table(title, columns, rows))
        else:
            console.print(Text(f"{title}: {note}", style="dim"))


def _sections(diff: GraphDiff) -> list[tuple[str, Row, list[Row], str]]:
    """(title, columns, rows, note when there are no rows) of each section, in display order."""
    before, after = diff.before.quantization, diff.after.quantization
    qdq_note = f"unchanged ({before.quantize} QuantizeLinear, {before.dequantize} DequantizeLinear)"
    node_columns = ("name", "op", "inputs", "outputs")
    changed_columns = ("name", "op", "change", "before", "after")
    io_columns = ("kind", "change", "name", "dtype", "shape")
    tensor_columns = io_columns[1:]
    return [
        ("Model properties", ("property", "before", "after"), _properties_rows(diff), "unchanged"),
        ("Op counts", ("op", "before", "after", "delta"), _ops_rows(diff.ops), "unchanged"),
        ("Nodes added", node_columns, _node_rows(diff.nodes.added), "none"),
        ("Nodes removed", node_columns, _node_rows(diff.nodes.removed), "none"),
        ("Nodes changed", changed_columns, _changed_node_rows(diff), "none"),
        ("Initializers", tensor_columns, _tensor_rows(diff.initializers), "unchanged"),
        ("Graph inputs and outputs", io_columns, _io_rows(diff), "unchanged"),
        ("Q/DQ", ("", "before", "after"), _qdq_rows(before, after), qdq_note),
    ]


def _table(title: str, columns: Row, rows: Sequence[Row]) -> Table:
    """A table whose columns of numbers (every non-empty cell) are right-aligned."""
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        cells = [row[index] for row in rows if row[index]]
        numeric = bool(cells) and all(_NUMBER.fullmatch(cell) for cell in cells)
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        # Text cells: names such as "[in,out]" must not be read as rich markup.
        table.add_row(*(Text(cell) for cell in row))
    return table


_NUMBER = re.compile(r"[+-]?[\d,]+")


def _bounded(rows: Sequence[Row], what: str) -> list[Row]:
    """The first :data:`ROW_LIMIT` rows, and one row saying how many more there are."""
    if len(rows) <= ROW_LIMIT:
        return list(rows)
    more = f"… and {len(rows) - ROW_LIMIT} more {what}"
    return [*rows[:ROW_LIMIT], (more, *("" for _ in rows[0][1:]))]


def _sides_rows(diff: GraphDiff) -> list[Row]:
    before, after = diff.before, diff.after
    return [
        ("source", before.source, after.source),
        ("nodes", f"{before.nodes:,}", f"{after.nodes:,}"),
        ("initializers", f"{before.initializers:,}", f"{after.initializers:,}"),
    ]


def _properties_rows(diff: GraphDiff) -> list[Row]:
    """Model properties, opset imports and metadata_props that differ."""
    groups = (
        ("", diff.model),
        ("opset ", {domain or "ai.onnx": c for domain, c in diff.opset_imports.items()}),
        ("metadata ", diff.metadata_props),
    )
    rows = [
        (prefix + key, _cell(change.before), _cell(change.after))
        for prefix, changes in groups
        for key, change in changes.items()
    ]
    return _bounded(rows, "properties")


def _ops_rows(ops: dict[str, ValueChange]) -> list[Row]:
    """Ops by the size of their change, largest first, then by name."""
    ordered = sorted(ops.items(), key=lambda item: (-abs(item[1].after - item[1].before), item[0]))
    rows = [(op, f"{c.before:,}", f"{c.after:,}", f"{c.after - c.before:+,}") for op, c in ordered]
    return _bounded(rows, "ops")


def _node_rows(nodes: Sequence[NodeInfo]) -> list[Row]:
    rows = [(node.name, node.op, _names(node.inputs), _names(node.outputs)) for node in nodes]
    return _bounded(rows, "nodes")


def _changed_node_rows(diff: GraphDiff) -> list[Row]:
    """One row per change of a node; the limit counts nodes, not rows."""
    changes = diff.nodes.changed
    rows = [row for change in changes[:ROW_LIMIT] for row in _node_change_rows(change)]
    if len(changes) > ROW_LIMIT:
        rows.append((f"… and {len(changes) - ROW_LIMIT} more nodes", "", "", "", ""))
    return rows


def _node_change_rows(change: NodeChange) -> list[Row]:
    fields = [
        ("op type", change.op_type),
        ("inputs", change.inputs),
        ("outputs", change.outputs),
        *((f"attribute {name}", value) for name, value in change.attributes.items()),
    ]
    return [
        (change.name, change.op, label, _cell(value.before), _cell(value.after))
        for label, value in fields
        if value is not None
    ]


def _tensor_rows(section: Section[TensorInfo, TensorChange]) -> list[Row]:
    rows: list[Row] = []
    for kind, infos in (("added", section.added), ("removed", section.removed)):
        entries = [(kind, i.name, i.dtype or "?", shape_text(i.shape)) for i in infos]
        rows += _bounded(entries, kind)
    changed = [
        (
            f"changed ({', '.join(c.changed)})",
            c.after.name,
            _transition(c.before.dtype or "?", c.after.dtype or "?"),
            _transition(shape_text(c.before.shape), shape_text(c.after.shape)),
        )
        for c in section.changed
    ]
    return rows + _bounded(changed, "changed")


def _io_rows(diff: GraphDiff) -> list[Row]:
    return [
        (kind, *row)
        for kind, section in (("input", diff.inputs), ("output", diff.outputs))
        for row in _tensor_rows(section)
    ]


def _qdq_rows(before: QdqSummary, after: QdqSummary) -> list[Row]:
    """Q/DQ counts and quantized initializers by dtype; empty when both sides agree."""
    if before == after:
        return []
    dtypes = sorted(before.quantized_initializers.keys() | after.quantized_initializers.keys())
    return [
        ("QuantizeLinear", f"{before.quantize:,}", f"{after.quantize:,}"),
        ("DequantizeLinear", f"{before.dequantize:,}", f"{after.dequantize:,}"),
        *(
            (
                f"quantized initializers {dtype}",
                f"{before.quantized_initializers.get(dtype, 0):,}",
                f"{after.quantized_initializers.get(dtype, 0):,}",
            )
            for dtype in dtypes
        ),
    ]


def _transition(before: str, after: str) -> str:
    return before if before == after else f"{before} → {after}"


def _names(names: Sequence[str]) -> str:
    return _cut(", ".join(name or '""' for name in names))


def _cell(value: Any) -> str:
    """A value in a cell: ``—`` when absent, floats to 7 digits (float32 attributes), lists of
    names joined, anything else as text."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.7g}"
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return _names(value)
    return _cut(str(value))


def _cut(text: str) -> str:
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"
