"""Rendering an inspection report as tables: rich for the terminal, plain rows for HTML.

:func:`report_tables` turns the report into format-neutral :class:`SectionTable` rows (one table
per section, cells as text), so the terminal (:func:`render_inspection`) and the HTML view
(:mod:`qcompiler.inspect.graphview`) show the same columns. A section with nothing in it is a
one-line note instead of an empty table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

Json = dict[str, Any]


@dataclass(frozen=True)
class SectionTable:
    """One section of the report as text cells; ``note`` is shown instead when ``rows`` is empty."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str


def render_inspection(report: Json, console: Console) -> None:
    """Print every section of ``report`` on ``console``: a table, or a one-line note if empty."""
    for section in report_tables(report):
        if section.rows:
            console.print(_rich_table(section))
        else:
            console.print(Text(f"{section.title}: {section.note}", style="dim"))


def _rich_table(section: SectionTable) -> Table:
    table = Table(title=section.title, title_justify="left")
    for column in section.columns:
        table.add_column(column, justify="right" if column in _NUMERIC_COLUMNS else "left")
    for row in section.rows:
        # Text cells: names such as "[in,out]" must not be read as rich markup.
        table.add_row(*(Text(cell) for cell in row))
    return table


_NUMERIC_COLUMNS = frozenset({"count", "bytes", "bits", "nodes"})


def report_tables(report: Json) -> list[SectionTable]:
    """The report's sections, in display order."""
    quantization = report["quantization"]
    return [
        _model_table(report["model"]),
        _io_table(report["model"]),
        _ops_table(report["ops"]),
        _parameters_table(report["parameters"]),
        _largest_table(report["largest_tensors"]),
        _layers_table(report["layers"]),
        _norm_linear_table(report["norm_linear"]),
        _quant_ops_table(quantization["ops"]),
        _quant_tensors_table(quantization["tensors"]),
        _unknown_domains_table(report["unknown_domains"]),
    ]


def _model_table(model: Json) -> SectionTable:
    opsets = ", ".join(f"{domain or 'ai.onnx'} {v}" for domain, v in model["opset_imports"].items())
    producer = " ".join(p for p in (model["producer_name"], model["producer_version"]) if p)
    rows = (
        ("source", model["source"]),
        ("IR version", str(model["ir_version"])),
        ("opsets", opsets),
        ("producer", producer or "unknown"),
        ("graph", model["graph_name"] or ""),
        ("nodes", f"{model['nodes']:,}"),
    )
    return SectionTable("Model", ("property", "value"), rows, "")


def _io_table(model: Json) -> SectionTable:
    rows = tuple(
        (kind, value["name"], value["dtype"] or "?", shape_text(value["shape"]))
        for kind, key in (("input", "inputs"), ("output", "outputs"))
        for value in model[key]
    )
    return SectionTable(
        "Graph inputs and outputs", ("kind", "name", "dtype", "shape"), rows, "none"
    )


def _ops_table(ops: dict[str, int]) -> SectionTable:
    rows = tuple((op, f"{count:,}") for op, count in ops.items())
    return SectionTable("Ops", ("op", "count"), rows, "the graph has no nodes")


def _parameters_table(parameters: Json) -> SectionTable:
    rows = tuple(
        (dtype, f"{entry['count']:,}", byte_text(entry["bytes"]))
        for dtype, entry in parameters["by_dtype"].items()
    )
    if rows:
        total = (
            f"total ({parameters['initializers']:,} initializers)",
            f"{parameters['count']:,}",
            byte_text(parameters["bytes"]),
        )
        rows = (*rows, total)
    return SectionTable("Parameters", ("dtype", "count", "bytes"), rows, "no initializers")


def _largest_table(tensors: Sequence[Json]) -> SectionTable:
    rows = tuple(
        (t["name"], t["dtype"], shape_text(t["shape"]), f"{t['count']:,}", byte_text(t["bytes"]))
        for t in tensors
    )
    columns = ("name", "dtype", "shape", "count", "bytes")
    return SectionTable("Largest tensors", columns, rows, "no initializers")


def _layers_table(layers: Sequence[Json]) -> SectionTable:
    rows = tuple(
        (
            layer["node"] or "",
            layer["op_type"],
            layer["module"] or "",
            layer["weight"],
            layer["weight_dtype"],
            shape_text(layer["weight_shape"]),
            layer["layout"],
        )
        for layer in layers
    )
    columns = ("node", "op", "module", "weight", "dtype", "shape", "layout")
    return SectionTable(
        "Linear layers", columns, rows, "no MatMul/Gemm/Conv with a constant weight"
    )


def _norm_linear_table(groups: Json) -> SectionTable:
    rows = tuple(
        (
            site["output"],
            site["op_type"],
            site["module"] or "",
            site["kind"],
            "\n".join(_linear_text(c) for c in site["linear"]),
            "\n".join(_other_text(c) for c in site["other"]),
            "yes" if site["has_shared_weight"] else "",
        )
        for site in groups["sites"]
    )
    columns = ("norm output", "op", "module", "kind", "linear consumers", "other readers", "shared")
    note = "no LayerNormalization / RMSNormalization"
    return SectionTable("Norm → linear groups", columns, rows, note)


def _linear_text(consumer: Json) -> str:
    bias = " +bias" if consumer["bias"] else ""
    return f"{consumer['node']} {shape_text(consumer['weight_shape'])} {consumer['layout']}{bias}"


def _other_text(consumer: Json) -> str:
    return f"{consumer['node']}: {consumer['reason']}" if consumer["node"] else consumer["reason"]


def _quant_ops_table(ops: dict[str, int]) -> SectionTable:
    rows = tuple((op, f"{count:,}") for op, count in ops.items())
    note = "none (the graph is not quantized)"
    return SectionTable("Quantization ops", ("op", "count"), rows, note)


def _quant_tensors_table(tensors: Sequence[Json]) -> SectionTable:
    rows = tuple(
        (
            t["tensor"],
            t["op"],
            t["dtype"],
            str(t["bits"]),
            granularity_text(t),
            {True: "yes", False: "no", None: "dynamic"}[t["symmetric"]],
            "weight" if t["constant"] else "activation",
        )
        for t in tensors
    )
    columns = ("tensor", "op", "dtype", "bits", "granularity", "symmetric", "kind")
    return SectionTable("Quantized tensors", columns, rows, "none")


def _unknown_domains_table(domains: dict[str, dict[str, int]]) -> SectionTable:
    rows = tuple(
        (domain, ", ".join(f"{op} ×{count}" for op, count in ops.items()))
        for domain, ops in domains.items()
    )
    return SectionTable("Unknown op domains", ("domain", "ops"), rows, "none")


def granularity_text(tensor: Json) -> str:
    """``per-tensor``, ``per-axis(1)`` or ``blocked(0, 32)``."""
    kind = tensor["granularity"]
    if kind == "per-axis":
        return f"per-axis({tensor['axis']})"
    if kind == "blocked":
        return f"blocked({tensor['axis']}, {tensor['block_size']})"
    return str(kind)


def shape_text(shape: Sequence[int | str | None] | None) -> str:
    """``[batch, 3, 224, 224]``; ``?`` for an unknown shape or an unnamed dim."""
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def byte_text(n: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``92.6 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
