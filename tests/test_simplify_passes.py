"""The EXACT clean-up passes: explicit attributes, constants, folding, identities, DCE, shapes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from qcompiler.passes.canonicalize import (
    EliminateDeadCode,
    EliminateIdentities,
    FoldConstants,
    InferShapes,
    LiftConstantsToInitializers,
    MakeDefaultAttributesExplicit,
    NameNodesAndValues,
    simplification,
)
from qcompiler.passes.manager import EXACT_TOLERANCE, Pass
from tests.graphs import build, max_normwise_error, op_types, outputs, snapshot

FEEDS = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}

CONSTANT_WEIGHT = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 4] x) => (float[N, 3] y) {
    w = Constant <value = float[3, 4] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> ()
    perm = Constant <value_ints = [1, 0]> ()
    wt = Transpose <perm = [1, 0]> (w)
    i = Identity(x)
    y = MatMul(i, wt)
    unused = Neg(x)
}
"""

DEFAULTS_OMITTED = """
<ir_version: 10, opset_import: ["" : 21, "custom.domain" : 1]>
g (float[N, 4] x) => (float[N, 1] y, float[N, 4] z) <int64[1] axes = {-1}> {
    y = ReduceMean(x, axes)
    z = custom.domain.Frobnicate(x)
}
"""


def run_twice_asserting_idempotence(pass_type: type[Pass], model: ir.Model) -> None:
    picture = snapshot(model)
    assert pass_type()(model).modified is False
    assert snapshot(model) == picture


def test_explicit_attributes_writes_defaults_and_leaves_unknown_domains() -> None:
    model = build(DEFAULTS_OMITTED)
    explicit = MakeDefaultAttributesExplicit()
    assert explicit(model).modified
    reduce_mean = model.graph.node(0)
    assert reduce_mean.attributes["keepdims"].as_int() == 1
    assert reduce_mean.attributes["noop_with_empty_axes"].as_int() == 0
    assert dict(model.graph.node(1).attributes) == {}
    assert explicit.log.counters == {"attributes_added": 2}
    run_twice_asserting_idempotence(MakeDefaultAttributesExplicit, model)


def test_explicit_attributes_keeps_inference_batch_norm_in_onnx_ir_form() -> None:
    model = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 2, 3] x) => (float[N, 2, 3] y) <float[2] s = {1, 1}, float[2] b = {0, 0},
                                            float[2] m = {0, 0}, float[2] v = {1, 1}> {
    y = BatchNormalization(x, s, b, m, v)
}
""")
    MakeDefaultAttributesExplicit()(model)
    assert "training_mode" not in model.graph.node(0).attributes
    assert "epsilon" in model.graph.node(0).attributes
    # the dead-code pass, which drops training_mode = 0, then has nothing to undo
    assert EliminateDeadCode()(model).modified is False


def test_lift_constants_moves_constant_weights_to_initializers() -> None:
    model = build(CONSTANT_WEIGHT)
    before = outputs(model, FEEDS)
    lift = LiftConstantsToInitializers()
    assert lift(model).modified
    assert "Constant" not in op_types(model)
    assert lift.log.counters == {"nodes_removed": 2}
    assert model.graph.initializers["w"].const_value is not None
    assert max_normwise_error(before, outputs(model, FEEDS)) == 0.0
    run_twice_asserting_idempotence(LiftConstantsToInitializers, model)


def test_fold_constants_folds_weight_transposes_but_not_activations() -> None:
    model = build(CONSTANT_WEIGHT)
    before = outputs(model, FEEDS)
    LiftConstantsToInitializers()(model)
    assert FoldConstants()(model).modified
    assert "Transpose" not in op_types(model)
    assert "MatMul" in op_types(model)  # depends on x: not constant
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    folded = matmul.inputs[1]
    assert folded is not None and folded.const_value is not None
    assert folded.const_value.numpy().shape == (4, 3)
    assert max_normwise_error(before, outputs(model, FEEDS)) <= EXACT_TOLERANCE
    run_twice_asserting_idempotence(FoldConstants, model)


def test_fold_constants_leaves_random_ops_alone() -> None:
    model = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 4] x) => (float[N, 4] y) {
    r = RandomNormal <shape = [4]> ()
    y = Add(x, r)
}
""")
    picture = snapshot(model)
    assert FoldConstants()(model).modified is False
    assert snapshot(model) == picture


def test_identity_elimination_keeps_an_identity_between_graph_input_and_output() -> None:
    model = build(CONSTANT_WEIGHT)
    assert EliminateIdentities()(model).modified
    assert "Identity" not in op_types(model)
    passthrough = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 4] x) => (float[N, 4] y) { y = Identity(x) }
""")
    picture = snapshot(passthrough)
    assert EliminateIdentities()(passthrough).modified is False
    assert snapshot(passthrough) == picture


def test_identity_copying_another_output_of_the_same_graph_is_kept() -> None:
    model = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 4] x) => (float[N, 4] state, float[N, 4] scanned) {
    state = Neg(x)
    scanned = Identity(state)
}
""")
    picture = snapshot(model)
    eliminate = EliminateIdentities()
    assert eliminate(model).modified is False
    assert snapshot(model) == picture
    assert [s.reason for s in eliminate.log.skips] == [
        "graph output copies another output of the same graph"
    ]


def test_identity_feeding_a_graph_output_hands_over_the_output_name() -> None:
    model = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 4] x) => (float[N, 4] y) {
    h = Neg(x)
    y = Identity(h)
}
""")
    before = outputs(model, FEEDS)
    assert EliminateIdentities()(model).modified
    assert op_types(model) == ["Neg"]
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert max_normwise_error(before, outputs(model, FEEDS)) == 0.0


def test_dead_code_removes_what_reaches_no_output() -> None:
    model = build(CONSTANT_WEIGHT)
    dce = EliminateDeadCode()
    assert dce(model).modified
    assert "Neg" not in op_types(model)
    assert "perm" not in {o.name for n in model.graph for o in n.outputs}
    assert dce.log.counters == {"nodes_removed": 2}
    run_twice_asserting_idempotence(EliminateDeadCode, model)


def test_shape_inference_annotates_intermediate_values() -> None:
    model = build(CONSTANT_WEIGHT)
    matmul = next(n for n in model.graph if n.op_type == "Transpose")
    assert matmul.outputs[0].shape is None
    assert InferShapes()(model).modified
    assert matmul.outputs[0].shape == ir.Shape([4, 3])
    run_twice_asserting_idempotence(InferShapes, model)


def test_simplification_reaches_a_fixed_point() -> None:
    model = build(CONSTANT_WEIGHT)
    before = outputs(model, FEEDS)
    simplify = simplification()
    assert simplify(model).modified
    assert op_types(model) == ["MatMul"]
    assert max_normwise_error(before, outputs(model, FEEDS)) <= EXACT_TOLERANCE
    picture = snapshot(model)
    assert simplification()(model).modified is False
    assert snapshot(model) == picture


@pytest.mark.parametrize(
    "pass_type", [LiftConstantsToInitializers, FoldConstants, EliminateDeadCode]
)
def test_custom_domain_nodes_survive_every_clean_up(pass_type: type[Pass]) -> None:
    model = build(DEFAULTS_OMITTED)
    pass_type()(model)
    assert "Frobnicate" in op_types(model)


def test_fold_constants_keeps_castlike_saturate_0_that_onnxscript_would_drop() -> None:
    model = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[3] x) => (float[3] z) <float8e4m3fn[1] like = {0}> {
    y = CastLike <saturate = 0> (x, like)
    z = Cast <to = 1> (y)
}
""")
    fold = FoldConstants()
    fold(model)
    castlike = model.graph.node(0)
    assert (castlike.op_type, castlike.domain) == ("CastLike", "")
    assert castlike.attributes["saturate"].as_int() == 0
    assert [s.reason.split(":")[0] for s in fold.log.skips] == ["CastLike with saturate=0"]
    # 1000 is beyond float8e4m3fn's range (max 448): NaN without saturation, not 448
    (z,) = outputs(model, {"x": np.array([1.0, 1000.0, -2.0], np.float32)})
    assert z[0] == 1.0 and np.isnan(z[1]) and z[2] == -2.0


def test_fold_constants_leaves_split_to_sequence_with_a_computed_split() -> None:
    model = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[6, 2] x, int64 split) => (seq(float) y) {
    y = SplitToSequence <axis = 0> (x, split)
}
""")
    fold = FoldConstants()
    assert fold(model).modified is False
    assert op_types(model) == ["SplitToSequence"] and model.graph.node(0).domain == ""
    assert "SplitToSequence with a computed split" in fold.log.skips[0].reason


def test_unnamed_nodes_get_unique_names_and_the_interface_keeps_its_own() -> None:
    model = build("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 4] x) => (float[N, 4] y) {
    a = Neg(x)
    b = Neg(a)
    y = Neg(b)
}
""")
    assert [node.name for node in model.graph] == ["", "", ""]
    assert NameNodesAndValues()(model).modified
    names = [node.name for node in model.graph]
    assert len(set(names)) == 3 and all(names)
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["y"]
    run_twice_asserting_idempotence(NameNodesAndValues, model)
