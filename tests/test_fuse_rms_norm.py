"""fuse-rms-norm: x / √(mean(x²) + ε) · γ → RMSNormalization-23."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.passes.canonicalize import FuseRmsNorm
from qcompiler.passes.manager import EXACT_TOLERANCE, PassFailure, PassManager
from tests.graphs import build, max_normwise_error, op_types, outputs, snapshot


def rms_norm_graph(opset: int = 23, epsilon: float = 1e-5, gamma_first: bool = False) -> str:
    gamma = ", ".join(f"{v:.5f}" for v in np.random.default_rng(0).normal(1.0, 0.2, 16))
    scale = "Mul(gamma, normed)" if gamma_first else "Mul(normed, gamma)"
    return f"""
<ir_version: 10, opset_import: ["" : {opset}]>
g (float[N, 3, 16] x) => (float[N, 3, 16] y) <float[16] gamma = {{{gamma}}}, float two = {{2.0}},
                                             float eps = {{{epsilon}}}, int64[1] axes = {{-1}}> {{
    sq = Pow(x, two)
    ms = ReduceMean <keepdims = 1, noop_with_empty_axes = 0> (sq, axes)
    ms_eps = Add(ms, eps)
    rms = Sqrt(ms_eps)
    inv = Reciprocal(rms)
    normed = Mul(x, inv)
    y = {scale}
}}
"""


FEEDS = {"x": np.random.default_rng(2).normal(0, 3, (2, 3, 16)).astype(np.float32)}


@pytest.mark.parametrize("gamma_first", [False, True])
def test_fuses_the_llama_export_form(gamma_first: bool) -> None:
    model = build(rms_norm_graph(gamma_first=gamma_first))
    before = outputs(model, FEEDS)
    fuse = FuseRmsNorm()
    assert fuse(model).modified
    assert fuse.log.counters == {"RMSNormalization_fused": 1}
    assert op_types(model) == ["RMSNormalization"]
    # observed 4.6e-8 normwise
    assert max_normwise_error(before, outputs(model, FEEDS)) <= EXACT_TOLERANCE
    picture = snapshot(model)
    assert FuseRmsNorm()(model).modified is False
    assert snapshot(model) == picture


def test_a_mean_over_the_wrong_axis_is_not_fused() -> None:
    model = build(rms_norm_graph().replace("axes = {-1}", "axes = {1}"))
    picture = snapshot(model)
    assert FuseRmsNorm()(model).modified is False
    assert snapshot(model) == picture


def test_precondition_needs_opset_23() -> None:
    model = build(rms_norm_graph(opset=21))
    with pytest.raises(PassFailure, match=r"fuse-rms-norm needs ONNX opset ≥ 23"):
        PassManager([FuseRmsNorm()])(model)
