"""fuse-layer-norm: decomposed LayerNorm → LayerNormalization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.passes.canonicalize import FuseLayerNorm, MakeDefaultAttributesExplicit
from qcompiler.passes.manager import EXACT_TOLERANCE, PassFailure, PassManager
from tests.graphs import build, max_normwise_error, op_types, outputs, snapshot


def decomposed_layer_norm(
    d: int = 8, square: str = "Pow(diff, two)", epsilon: str = "eps", opset: int = 18
) -> str:
    return f"""
<ir_version: 10, opset_import: ["" : {opset}]>
g (float[N, 5, {d}] x) => (float[N, 5, {d}] y) <float[{d}] gamma, float[{d}] beta,
                                     float eps = {{1e-6}}, float two = {{2.0}},
                                     int64[1] axes = {{-1}}> {{
    mean = ReduceMean <keepdims = 1> (x, axes)
    diff = Sub(x, mean)
    sq = {square}
    var = ReduceMean <keepdims = 1> (sq, axes)
    var_eps = Add(var, {epsilon})
    std = Sqrt(var_eps)
    normed = Div(diff, std)
    scaled = Mul(normed, gamma)
    y = Add(scaled, beta)
}}
"""


def with_weights(text: str, d: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    gamma = ", ".join(f"{v:.6f}" for v in rng.normal(1.0, 0.3, d))
    beta = ", ".join(f"{v:.6f}" for v in rng.normal(0.0, 0.3, d))
    return text.replace(f"float[{d}] gamma,", f"float[{d}] gamma = {{{gamma}}},").replace(
        f"float[{d}] beta,", f"float[{d}] beta = {{{beta}}},"
    )


def feeds(d: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).normal(0.5, 2.0, (3, 5, d)).astype(np.float32)
    return {"x": x}


@pytest.mark.parametrize("square", ["Pow(diff, two)", "Mul(diff, diff)"])
def test_fuses_decomposed_layer_norm_with_bias(square: str) -> None:
    model = build(with_weights(decomposed_layer_norm(square=square), 8))
    before = outputs(model, feeds())
    result = FuseLayerNorm()(model)
    assert result.modified
    assert op_types(model).count("LayerNormalization") == 1
    node = next(n for n in model.graph if n.op_type == "LayerNormalization")
    assert len(node.inputs) == 3  # bias folded in
    assert node.attributes["epsilon"].as_float() == pytest.approx(1e-6)
    # observed 8.5e-8 normwise (float32 rounding of a different evaluation order)
    assert max_normwise_error(before, outputs(model, feeds())) <= EXACT_TOLERANCE


def test_counts_fused_ops_and_is_idempotent() -> None:
    model = build(with_weights(decomposed_layer_norm(), 8))
    fuse = FuseLayerNorm()
    fuse(model)
    assert fuse.log.counters == {"LayerNormalization_fused": 1}
    picture = snapshot(model)
    again = FuseLayerNorm()
    assert again(model).modified is False
    assert snapshot(model) == picture


def test_non_constant_epsilon_is_left_alone_and_the_reason_logged() -> None:
    text = decomposed_layer_norm(epsilon="var").replace(
        "float[N, 5, 8] x)", "float[N, 5, 8] x, float eps_in)"
    )
    model = build(with_weights(text.replace("Add(var, var)", "Add(var, eps_in)"), 8))
    picture = snapshot(model)
    fuse = FuseLayerNorm()
    assert fuse(model).modified is False
    assert snapshot(model) == picture
    assert any("Epsilon is not a constant" in s.reason for s in fuse.log.skips)


def test_normalizing_over_another_axis_is_not_fused() -> None:
    model = build(with_weights(decomposed_layer_norm(), 8).replace("axes = {-1}", "axes = {1}"))
    picture = snapshot(model)
    assert FuseLayerNorm()(model).modified is False
    assert snapshot(model) == picture


def test_implicit_keepdims_needs_explicit_attributes_first() -> None:
    text = with_weights(decomposed_layer_norm(), 8).replace(
        "ReduceMean <keepdims = 1>", "ReduceMean"
    )
    model = build(text)
    assert FuseLayerNorm()(model).modified is False
    MakeDefaultAttributesExplicit()(model)
    assert FuseLayerNorm()(model).modified is True


def test_precondition_names_the_opset_it_needs() -> None:
    text = (
        with_weights(decomposed_layer_norm(opset=17), 8)
        .replace(
            "ReduceMean <keepdims = 1> (x, axes)", "ReduceMean <keepdims = 1, axes = [-1]> (x)"
        )
        .replace(
            "ReduceMean <keepdims = 1> (sq, axes)", "ReduceMean <keepdims = 1, axes = [-1]> (sq)"
        )
    )
    model = build(text)
    with pytest.raises(PassFailure, match=r"fuse-layer-norm needs ONNX opset ≥ 18.*opset 17"):
        PassManager([FuseLayerNorm()])(model)


@settings(max_examples=15, deadline=None)
@given(d=st.sampled_from([4, 16, 64, 384]), seed=st.integers(0, 2**16))
def test_fusion_is_exact_for_random_widths_and_weights(d: int, seed: int) -> None:
    model = build(with_weights(decomposed_layer_norm(d=d), d, seed))
    before = outputs(model, feeds(d, seed))
    assert FuseLayerNorm()(model).modified
    # observed ≤ 1.1e-7 over 20 such draws
    assert max_normwise_error(before, outputs(model, feeds(d, seed))) <= EXACT_TOLERANCE
