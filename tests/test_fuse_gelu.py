"""fuse-gelu: ½·x·(1 + erf(x/√2)) in its exported forms → Gelu-20."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.passes.canonicalize import FuseGelu
from qcompiler.passes.manager import EXACT_TOLERANCE, PassFailure, PassManager
from tests.graphs import build, max_normwise_error, op_types, outputs, snapshot

ARGUMENTS = {"div": "Div(x, c)", "mul": "Mul(x, c)"}
CONSTANTS = {"div": 1.4142135381698608, "mul": 0.7071067690849304}
COMBINATIONS = {
    "(x*h)*half": "xh = Mul(x, h)\n y = Mul(xh, half)",
    "(half*x)*h": "xh = Mul(half, x)\n y = Mul(xh, h)",
    "x*(h*half)": "hh = Mul(h, half)\n y = Mul(x, hh)",
    "(h*x)*half": "xh = Mul(h, x)\n y = Mul(half, xh)",
}


def gelu_graph(argument: str, combination: str, half: float = 0.5, opset: int = 20) -> str:
    return f"""
<ir_version: 10, opset_import: ["" : {opset}]>
g (float[N, 7] x) => (float[N, 7] y) <float c = {{{CONSTANTS[argument]}}}, float one = {{1.0}},
                                      float half = {{{half}}}> {{
    s = {ARGUMENTS[argument]}
    e = Erf(s)
    h = Add(e, one)
    {COMBINATIONS[combination]}
}}
"""


FEEDS = {"x": np.linspace(-6, 6, 4 * 7, dtype=np.float32).reshape(4, 7)}


@pytest.mark.parametrize("argument", sorted(ARGUMENTS))
@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_fuses_every_exported_form(argument: str, combination: str) -> None:
    model = build(gelu_graph(argument, combination))
    before = outputs(model, FEEDS)
    fuse = FuseGelu()
    assert fuse(model).modified
    assert fuse.log.counters == {"Gelu_fused": 1}
    assert op_types(model) == ["Gelu"]
    assert model.graph.node(0).attributes["approximate"].as_string() == "none"
    # observed ≤ 2.3e-9 normwise over the 8 forms
    assert max_normwise_error(before, outputs(model, FEEDS)) <= EXACT_TOLERANCE


def test_wrong_constant_is_left_alone_with_the_reason_logged() -> None:
    model = build(gelu_graph("div", "(x*h)*half", half=0.49))
    picture = snapshot(model)
    fuse = FuseGelu()
    assert fuse(model).modified is False
    assert snapshot(model) == picture
    assert any("not a constant 0.5" in s.reason for s in fuse.log.skips)


def test_tanh_approximation_is_a_different_function_and_is_not_matched() -> None:
    model = build(gelu_graph("div", "(x*h)*half").replace("Erf(s)", "Tanh(s)"))
    picture = snapshot(model)
    assert FuseGelu()(model).modified is False
    assert snapshot(model) == picture


def test_is_idempotent() -> None:
    model = build(gelu_graph("mul", "x*(h*half)"))
    FuseGelu()(model)
    picture = snapshot(model)
    assert FuseGelu()(model).modified is False
    assert snapshot(model) == picture


def test_precondition_needs_opset_20() -> None:
    model = build(gelu_graph("div", "(x*h)*half", opset=18))
    with pytest.raises(PassFailure, match=r"fuse-gelu needs ONNX opset ≥ 20 \(Gelu\)"):
        PassManager([FuseGelu()])(model)


@settings(max_examples=10, deadline=None)
@given(scale=st.floats(0.01, 50.0), seed=st.integers(0, 2**16))
def test_exact_for_random_input_ranges(scale: float, seed: int) -> None:
    model = build(gelu_graph("div", "(half*x)*h"))
    x = {"x": (np.random.default_rng(seed).standard_normal((5, 7)) * scale).astype(np.float32)}
    before = outputs(model, x)
    FuseGelu()(model)
    # observed ≤ 6.3e-8 for scales 0.01 to 50
    assert max_normwise_error(before, outputs(model, x)) <= EXACT_TOLERANCE
