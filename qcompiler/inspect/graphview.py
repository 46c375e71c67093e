"""The graph as a picture: a networkx view of the IR, written as DOT or as one HTML file.

``qcompiler inspect --dot/--html`` lets a user see where the linears, norms and Q/DQ ops sit
without installing anything: the DOT text is written here (no pydot/graphviz needed to write it),
and the HTML file is self-contained (summary tables plus an inline SVG; no network, no scripts,
no external CSS), so it can be mailed or attached to an issue.

:func:`graph_of` maps the main graph to a :class:`networkx.DiGraph`: one node per op (attributes
``op_type``, ``name``, ``module``, ``category``, ``title``) plus one per graph input and output
(category ``io``), and one edge per producer → consumer pair, labelled with the tensors (name and
shape) it carries. Initializers are not nodes; they are listed in their consumer's ``title``.
The SVG lays ops out by topological generation (one row each), ordered within a row by the mean
position of their predecessors so that chains stay straight; hovering shows names and shapes.
Files are written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import onnx_ir as ir

from qcompiler.inspect.render import SectionTable, report_tables, shape_text
from qcompiler.inspect.summary import shape_json
from qcompiler.ir.graph import op_key
from qcompiler.ir.provenance import module_name

CATEGORY_COLORS = {
    "linear": "#9ec5e8",
    "norm": "#a8dba0",
    "activation": "#f7d38b",
    "qdq": "#f2a3a3",
    "io": "#d9d9d9",
    "other": "#f2f2f2",
}
_CATEGORY_OPS = {
    "linear": frozenset(
        {
            "MatMul",
            "Gemm",
            "Conv",
            "ConvTranspose",
            "MatMulNBits",
            "MatMulInteger",
            "ConvInteger",
            "QLinearMatMul",
            "QLinearConv",
            "QGemm",
            "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat",
            "FusedMatMul",
        }
    ),
    "norm": frozenset(
        {
            "LayerNormalization",
            "RMSNormalization",
            "BatchNormalization",
            "InstanceNormalization",
            "GroupNormalization",
            "SkipLayerNormalization",
            "SimplifiedLayerNormalization",
            "SkipSimplifiedLayerNormalization",
        }
    ),
    "activation": frozenset(
        {
            "Relu",
            "LeakyRelu",
            "PRelu",
            "Elu",
            "Selu",
            "Celu",
            "Gelu",
            "FastGelu",
            "BiasGelu",
            "Erf",
            "Sigmoid",
            "HardSigmoid",
            "HardSwish",
            "Tanh",
            "Softplus",
            "Softsign",
            "Mish",
            "Softmax",
            "LogSoftmax",
        }
    ),
    "qdq": frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}),
}

NODE_WIDTH, NODE_HEIGHT = 160, 38
COLUMN_STEP, ROW_STEP, MARGIN = 180, 74, 20
_SVG_TEXT = 'text-anchor="middle" font-family="sans-serif"'


def op_category(op_type: str) -> str:
    """``linear``, ``norm``, ``activation``, ``qdq`` or ``other``: the colour group of an op."""
    for category, ops in _CATEGORY_OPS.items():
        if op_type in ops:
            return category
    return "other"


# ---- the networkx view -------------------------------------------------------------------------


@dataclass
class _Keys:
    """DiGraph node keys of the IR's nodes and of the graph-input and graph-output nodes."""

    nodes: dict[int, str] = field(default_factory=dict)
    inputs: dict[int, str] = field(default_factory=dict)
    outputs: dict[int, str] = field(default_factory=dict)


def graph_of(model: ir.Model) -> nx.DiGraph:
    """The main graph as a DiGraph: ops and graph inputs/outputs as nodes, tensors on edges."""
    graph = nx.DiGraph(name=model.graph.name or "model")
    keys = _Keys()
    for value in model.graph.inputs:
        keys.inputs[id(value)] = _add_io_node(graph, value, "input")
    for node in model.graph:
        key = _unique_key(graph, node.name or f"{node.op_type}#{len(graph)}")
        keys.nodes[id(node)] = key
        graph.add_node(key, **_node_attributes(node))
    for value in model.graph.outputs:
        keys.outputs[id(value)] = _add_io_node(graph, value, "output")
    for value in _values(model):
        _add_value_edges(graph, keys, value)
    return graph


def _unique_key(graph: nx.DiGraph, name: str) -> str:
    key, suffix = name, 1
    while key in graph:
        suffix += 1
        key = f"{name}#{suffix}"
    return key


def _add_io_node(graph: nx.DiGraph, value: ir.Value, kind: str) -> str:
    key = _unique_key(graph, f"{kind}:{value.name}")
    title = f"graph {kind} {value.name}\n{_value_text(value)}"
    graph.add_node(key, op_type=kind, name=value.name, module=None, category="io", title=title)
    return key


def _node_attributes(node: ir.Node) -> dict[str, Any]:
    module = module_name(node)
    lines = [f"{op_key(node)}  {node.name or '(unnamed)'}"]
    if module:
        lines.append(f"module: {module}")
    lines += ["inputs:", *(f"  {_value_text(v)}" for v in node.inputs if v is not None)]
    lines += ["outputs:", *(f"  {_value_text(v)}" for v in node.outputs)]
    return {
        "op_type": op_key(node),
        "name": node.name or "",
        "module": module,
        "category": op_category(node.op_type),
        "title": "\n".join(lines),
    }


def _value_text(value: ir.Value) -> str:
    dtype = value.dtype.name if value.dtype is not None else "?"
    constant = " (constant)" if value.const_value is not None else ""
    return f"{value.name} {dtype} {shape_text(shape_json(value.shape))}{constant}"


def _values(model: ir.Model) -> Iterable[ir.Value]:
    yield from model.graph.inputs
    for node in model.graph:
        yield from node.outputs


def _add_value_edges(graph: nx.DiGraph, keys: _Keys, value: ir.Value) -> None:
    """Edges from the value's producer (or its graph-input node) to each reader."""
    producer = value.producer()
    source = keys.nodes.get(id(producer)) if producer is not None else keys.inputs.get(id(value))
    if source is None:
        return
    readers = [keys.nodes.get(id(node)) for node in value.consumers()]
    readers.append(keys.outputs.get(id(value)))
    label = f"{value.name} {shape_text(shape_json(value.shape))}"
    for target in dict.fromkeys(r for r in readers if r is not None):
        if graph.has_edge(source, target):
            graph.edges[source, target]["tensors"].append(label)
        else:
            graph.add_edge(source, target, tensors=[label])


# ---- DOT ---------------------------------------------------------------------------------------


def write_dot(graph: nx.DiGraph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` as Graphviz DOT text (nodes coloured by category, edges labelled)."""
    lines = [
        f"digraph {_dot_string(graph.graph.get('name', 'model'))} {{",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for key, data in graph.nodes(data=True):
        label = f"{data['op_type']}\n{data['name']}"
        color = CATEGORY_COLORS[data["category"]]
        lines.append(
            f"  {_dot_string(key)} [label={_dot_string(label)}, "
            f'fillcolor="{color}", tooltip={_dot_string(data["title"])}];'
        )
    for source, target, data in graph.edges(data=True):
        label = "\n".join(data["tensors"])
        lines.append(
            f"  {_dot_string(source)} -> {_dot_string(target)} [label={_dot_string(label)}];"
        )
    lines.append("}")
    return _write_text_atomic(path, "\n".join(lines) + "\n")


def _dot_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


# ---- HTML / SVG --------------------------------------------------------------------------------


def write_html(graph: nx.DiGraph, report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write one self-contained HTML file: the report's tables and an inline SVG of ``graph``."""
    source = html.escape(str(report["model"]["source"]))
    body = [f"<h1>qcompiler inspect: {source}</h1>"]
    body += [html_section(section) for section in report_tables(report)]
    body += ["<h2>Graph</h2>", _legend_html(), f'<div class="graph">{graph_svg(graph)}</div>']
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>qcompiler inspect: {source}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    return _write_text_atomic(path, page)


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
p.note { color: #777; }
.legend span { display: inline-block; padding: 2px 10px; margin-right: 6px;
  border: 1px solid #999; }
.graph { overflow: auto; border: 1px solid #ccc; max-height: 90vh; }
svg text { pointer-events: none; }
svg .edge:hover { stroke: #d33; stroke-width: 2.5; }
"""


def html_section(section: SectionTable) -> str:
    title = html.escape(section.title)
    if not section.rows:
        return f'<p class="note">{title}: {html.escape(section.note)}</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell_html(cell)}</td>" for cell in row) + "</tr>"
        for row in section.rows
    )
    return f"<h2>{title}</h2>\n<table><tr>{head}</tr>{rows}</table>"


def _cell_html(cell: str) -> str:
    return html.escape(cell).replace("\n", "<br>")


def _legend_html() -> str:
    swatches = "".join(
        f'<span style="background:{color}">{category}</span>'
        for category, color in CATEGORY_COLORS.items()
    )
    return f'<div class="legend">{swatches}</div>'


def layout(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Top-left-origin centre of each node: one row per topological generation.

    Within a row, nodes are ordered by the mean x of their predecessors (graph order breaks
    ties), then spaced evenly and centred on the widest row.
    """
    order = {key: index for index, key in enumerate(graph.nodes)}
    rows: list[list[str]] = []
    x_of: dict[str, float] = {}
    for generation in nx.topological_generations(graph):
        row = sorted(generation, key=lambda key: (_mean_x(graph, key, x_of), order[key]))
        for index, key in enumerate(row):
            x_of[key] = (index - (len(row) - 1) / 2) * COLUMN_STEP
        rows.append(row)
    left = min(x_of.values(), default=0.0) - NODE_WIDTH / 2 - MARGIN
    return {
        key: (x_of[key] - left, MARGIN + NODE_HEIGHT / 2 + depth * ROW_STEP)
        for depth, row in enumerate(rows)
        for key in row
    }


def _mean_x(graph: nx.DiGraph, key: str, x_of: dict[str, float]) -> float:
    """Mean x of the node's predecessors (0 for a node without any)."""
    xs = [x_of[predecessor] for predecessor in graph.predecessors(key)]
    return sum(xs) / len(xs) if xs else 0.0


def graph_svg(graph: nx.DiGraph) -> str:
    """An inline SVG of ``graph`` laid out by :func:`layout`, with hover titles."""
    positions = layout(graph)
    width = max((x for x, _ in positions.values()), default=0.0) + NODE_WIDTH / 2 + MARGIN
    height = max((y for _, y in positions.values()), default=0.0) + NODE_HEIGHT / 2 + MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}">'
    ]
    parts += [
        _svg_edge(positions[s], positions[t], d["tensors"]) for s, t, d in graph.edges(data=True)
    ]
    parts += [_svg_node(positions[key], data) for key, data in graph.nodes(data=True)]
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_edge(start: tuple[float, float], end: tuple[float, float], tensors: list[str]) -> str:
    (x1, y1), (x2, y2) = start, end
    y1, y2 = y1 + NODE_HEIGHT / 2, y2 - NODE_HEIGHT / 2
    bend = max((y2 - y1) / 2, 10.0)
    path = (
        f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}"
    )
    title = html.escape("\n".join(tensors))
    return (
        f'<path class="edge" d="{path}" fill="none" stroke="#888" stroke-width="1.2">'
        f"<title>{title}</title></path>"
    )


def _svg_node(centre: tuple[float, float], data: dict[str, Any]) -> str:
    x, y = centre
    left, top = x - NODE_WIDTH / 2, y - NODE_HEIGHT / 2
    color = CATEGORY_COLORS[data["category"]]
    return (
        f"<g><title>{html.escape(data['title'])}</title>"
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" '
        f'rx="5" fill="{color}" stroke="#555"/>'
        f'<text x="{x:.1f}" y="{y - 3:.1f}" {_SVG_TEXT} font-size="12" '
        f'font-weight="bold">{html.escape(_truncate(data["op_type"]))}</text>'
        f'<text x="{x:.1f}" y="{y + 12:.1f}" {_SVG_TEXT} font-size="9">'
        f"{html.escape(_truncate(data['name']))}</text></g>"
    )


def _truncate(text: str, limit: int = 26) -> str:
    """The end of a long name (its most specific part), so that it fits in a node box."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


# ---- files -------------------------------------------------------------------------------------


def _write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` so that ``path`` is never seen half-written.

    The file is staged in a temporary folder beside ``path`` (so it gets the usual permissions
    and ``os.replace`` stays on one file system) and then moved into place.
    """
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".qcompiler-") as staging:
        staged = Path(staging) / destination.name
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, destination)
    return destination
