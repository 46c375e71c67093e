"""plan-channelwise and reparameterize on small graphs: every site kind of §1–2, run in ORT."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.ir.edit import expose_outputs
from qcompiler.passes.canonicalize.shape_inference import InferShapes
from qcompiler.passes.manager import PassManager
from qcompiler.passes.materialize import MaterializeQDQ
from qcompiler.passes.quantize.calibrate_activations import CalibrateActivations
from qcompiler.passes.quantize.plan_linear import PlanLinearQuantization
from qcompiler.passes.repq.plan_channelwise import PlanChannelwiseActivations
from qcompiler.passes.repq.reparameterize import ReparameterizeChannels
from qcompiler.quant.plan import QuantPlan
from qcompiler.quant.recipe import Recipe, load_recipe, recipe_from_dict
from qcompiler.quant.spec import per_channel
from qcompiler.quant.uniform import quantize
from tests.graphs import build, max_normwise_error, op_types, outputs, snapshot

RNG = np.random.default_rng(3)
C, OUT = 8, 6


def numbers(array: np.ndarray) -> str:
    return ", ".join(f"{v:.8g}" for v in array.ravel())


def const(name: str, array: np.ndarray) -> str:
    dims = ", ".join(str(d) for d in array.shape)
    return f"float[{dims}] {name} = {{{numbers(array)}}}"


GAMMA = np.exp(RNG.uniform(-2, 2, C)).astype(np.float32)  # outlier channels after the norm
BETA = RNG.uniform(-3, 3, C).astype(np.float32)
WQ, WK, W1 = (RNG.standard_normal((C, n)).astype(np.float32) for n in (OUT, OUT, C))
WT = RNG.standard_normal((OUT, C)).astype(np.float32)
BQ, BT = RNG.standard_normal(OUT).astype(np.float32), RNG.standard_normal(OUT).astype(np.float32)
B1 = RNG.standard_normal((1, 1, C)).astype(np.float32)
HEADER = '<ir_version: 10, opset_import: ["" : 21]>'
NORM = "[norm] y = LayerNormalization <axis = -1> (x, gamma, beta)"

PRE_NORM = f"""{HEADER}
g (float[N, T, {C}] x) => (float[N, T, {OUT}] q, float[N, T, {OUT}] k)
    <{const("gamma", GAMMA)}, {const("beta", BETA)}, {const("wq", WQ)}, {const("bq", BQ)},
     {const("wk", WK)}> {{
    {NORM}
    [q_proj] q0 = MatMul(y, wq)
    [q_bias] q = Add(bq, q0)
    [k_proj] k = MatMul(y, wk)
}}"""

POST_NORM = f"""{HEADER}
g (float[N, T, {C}] x) => (float[N, T, {C}] z, float[N, T, {C}] y)
    <{const("gamma", GAMMA)}, {const("beta", BETA)}, {const("w1", W1)}, {const("b1", B1)},
     {const("gamma2", GAMMA)}> {{
    {NORM}
    [fc] h0 = MatMul(y, w1)
    [fc_bias] h = Add(h0, b1)
    [residual] r = Add(y, h)
    [norm2] z = LayerNormalization <axis = -1> (r, gamma2)
}}"""

GELU_GEMM = f"""{HEADER}
g (float[N, {C}] x) => (float[N, {OUT}] out)
    <{const("w1", W1)}, {const("wt", WT)}, {const("bt", BT)}> {{
    [fc1] h = MatMul(x, w1)
    [gelu] a = Gelu(h)
    [fc2] out = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (a, wt, bt)
}}"""

SHARED_WEIGHT = f"""{HEADER}
g (float[N, T, {C}] x) => (float[N, T, {OUT}] q, float[N, T, {OUT}] k)
    <{const("gamma", GAMMA)}, {const("beta", BETA)}, {const("wq", WQ)}> {{
    {NORM}
    [q_proj] q = MatMul(y, wq)
    [k_proj] k = MatMul(x, wq)
}}"""


def repq_recipe(lowering: str = "reparameterize") -> Recipe:
    data = load_recipe("w8a8").to_json()
    data["channelwise"] = {"producers": ["LayerNormalization", "Gelu"], "lowering": lowering}
    return recipe_from_dict(data, "test")


def feeds_for(model: ir.Model, samples: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = model.graph.inputs[0]
    shape = [samples if not isinstance(d, int) else d for d in x.shape]
    shape = [4 if i == 1 and len(shape) == 3 else d for i, d in enumerate(shape)]
    return {"x": (rng.standard_normal(shape) * 2).astype(np.float32)}


def reparameterized(text: str, lowering: str = "reparameterize") -> tuple[ir.Model, QuantPlan]:
    """The graph after plan-linear → plan-channelwise → calibrate → reparameterize."""
    model = build(text)
    recipe = repq_recipe(lowering)
    assert recipe.channelwise is not None
    plan = QuantPlan("test", "static")
    passes = [
        PlanLinearQuantization(recipe, plan),
        PlanChannelwiseActivations(recipe.channelwise, plan),
        CalibrateActivations(plan, feeds_for(model, 64, seed=1), batch_size=16),
        ReparameterizeChannels(plan),
    ]
    PassManager(passes, verify_each=True, verify_feeds=feeds_for(model)).run(model)
    return model, plan


@pytest.mark.parametrize("text", [PRE_NORM, POST_NORM, GELU_GEMM], ids=["pre", "post", "gelu"])
def test_reparameterized_float_graph_computes_the_same_function(text: str) -> None:
    model, plan = reparameterized(text)
    feeds = feeds_for(model, seed=9)
    assert plan.channelwise and all(s.reparameterized for s in plan.channelwise.values())
    error = max_normwise_error(outputs(build(text), feeds), outputs(model, feeds))
    assert error <= 1e-6  # measured ≤ 2e-7; float32 rounding of the folded constants


def test_pre_norm_fold_adds_no_op_and_changes_only_gamma_beta_weights_and_biases() -> None:
    model, plan = reparameterized(PRE_NORM)
    added = Counter(op_types(model)) - Counter(op_types(build(PRE_NORM)))
    assert added == Counter({"Add": 1})  # k_proj had no bias: − (s⊙r2)·W needs one
    site = plan.channelwise["y"]
    assert (site.folded_into, site.float_ops_added, site.reparameterized) == (
        "LayerNormalization",
        0,
        "y",
    )
    norm = next(n for n in model.graph if n.name == "norm")
    assert norm.attributes["axis"].as_int() == -1 and "epsilon" not in norm.attributes  # trap 5
    assert {d.activation for d in plan.quantized()} == {"y"}
    assert all(d.activations and d.activations.granularity.kind == "per-tensor" for d in
               plan.quantized())  # fmt: skip
    assert plan.activation_params["y"].axis is None
    k_proj = next(n for n in model.graph if n.name == "k_proj")
    assert k_proj.outputs[0].name == "k_unbiased"  # a bias Add was appended for − (s⊙r2)·W
    assert "k" in {v.name for v in model.graph.outputs}


def test_post_norm_restores_the_residual_with_one_mul_and_the_projection_bias() -> None:
    model, plan = reparameterized(POST_NORM)
    site = plan.channelwise["y"]
    assert site.folded_into == "LayerNormalization"
    # The residual reads r1⊙ỹ (the − s⊙r2 went into b1); the graph output y needs the full
    # restore: Mul + Add, and keeps its name.
    assert site.float_ops_added == 2
    assert site.reparameterized == "y_reparameterized"
    assert [v.name for v in model.graph.outputs] == ["z", "y"]
    residual = next(n for n in model.graph if n.name == "residual")
    mul = residual.inputs[0].producer() if residual.inputs[0] else None
    assert mul is not None and mul.op_type == "Mul"


def test_explicit_affine_for_a_gelu_and_gemm_bias_scaled_by_alpha_over_beta() -> None:
    model, plan = reparameterized(GELU_GEMM)
    site = plan.channelwise["a"]
    assert (site.folded_into, site.float_ops_added) == ("explicit-affine", 2)
    fc2 = next(n for n in model.graph if n.name == "fc2")
    assert fc2.inputs[0] is not None and fc2.inputs[0].name == "a_reparameterized"


def test_folded_per_tensor_codes_match_per_channel_codes_of_the_original() -> None:
    """Per-tensor codes of ỹ (folded graph) vs per-channel codes of y (original graph), both
    from ORT float32 values: equal but for float32 near-ties (§19 trap 2)."""
    folded, plan = reparameterized(PRE_NORM)
    feeds = feeds_for(folded, 256, seed=5)
    site = plan.channelwise["y"]
    spec = plan.quantized()[0].activations
    assert spec is not None and site.channel is not None
    per_tensor = quantize(value_of(folded, "y", feeds), plan.activation_params["y"], spec)
    channel_spec = dataclasses.replace(spec, granularity=per_channel(-1))
    original = value_of(build(PRE_NORM), "y", feeds)
    per_channel_codes = quantize(original, site.channel, channel_spec)
    differing = np.abs(per_tensor.astype(np.int64) - per_channel_codes.astype(np.int64))
    assert differing.max() <= 1 and np.count_nonzero(differing) <= 1e-3 * differing.size


def value_of(model: ir.Model, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 value ``name`` computed by ORT."""
    exposed = expose_outputs(model, [name])
    return outputs(exposed, feeds)[-1]


def test_shared_weight_site_stays_per_tensor_with_a_logged_reason() -> None:
    model = build(SHARED_WEIGHT)
    recipe = repq_recipe()
    assert recipe.channelwise is not None
    plan = QuantPlan("test", "static")
    PlanLinearQuantization(recipe, plan)(model)
    planner = PlanChannelwiseActivations(recipe.channelwise, plan)
    assert planner(model).modified is False
    assert not plan.channelwise
    assert [(s.site, s.reason) for s in planner.log.skips] == [
        ("norm", "y stays per tensor: the weight wq of q_proj is shared")
    ]


def test_reparameterize_is_idempotent_and_needs_calibrated_sites() -> None:
    model, plan = reparameterized(PRE_NORM)
    picture = snapshot(model)
    assert ReparameterizeChannels(plan)(model).modified is False
    assert snapshot(model) == picture
    untouched = build(PRE_NORM)
    before = snapshot(untouched)
    empty = QuantPlan("test", "static")  # planned, never calibrated: nothing to fold
    assert ReparameterizeChannels(empty)(untouched).modified is False
    assert snapshot(untouched) == before


def test_per_channel_lowering_materializes_a_simulation_ort_can_run() -> None:
    model, plan = reparameterized(PRE_NORM, lowering="per-channel")
    assert all(d.simulated for d in plan.quantized())
    MaterializeQDQ(plan)(model)
    feeds = feeds_for(model, seed=9)
    error = max_normwise_error(outputs(build(PRE_NORM), feeds), outputs(model, feeds))
    assert 0 < error < 0.05


def test_plan_channelwise_picks_only_the_listed_producers_and_is_idempotent() -> None:
    model = build(GELU_GEMM)
    recipe = repq_recipe()
    assert recipe.channelwise is not None
    only_norms = dataclasses.replace(recipe.channelwise, producers=("LayerNormalization",))
    plan = QuantPlan("test", "static")
    PlanLinearQuantization(recipe, plan)(model)
    PlanChannelwiseActivations(only_norms, plan)(model)
    assert not plan.channelwise  # the Gelu output is not a listed producer: stays per tensor
    PlanChannelwiseActivations(recipe.channelwise, plan)(model)
    once = plan.to_json()
    PlanChannelwiseActivations(recipe.channelwise, plan)(model)
    assert plan.to_json() == once and list(plan.channelwise) == ["a"]
    assert plan.linear["fc1"].activations is not None
    assert plan.linear["fc1"].activations.granularity.kind == "per-tensor"  # reads x, a graph input


def random_norm_linear_graph(seed: int, channels: int, out: int, post_norm: bool) -> ir.Model:
    """A float64 LayerNormalization → MatMul + bias graph with outlier channels; ``post_norm``
    also adds the norm output back (a residual) and returns it, as BERT's blocks do."""
    rng = np.random.default_rng(seed)
    gamma = np.exp(rng.uniform(-2, 2, channels))
    beta, w = rng.uniform(-2, 2, channels), rng.standard_normal((channels, out))
    bias = rng.standard_normal((1, 1, out))
    nodes = [
        onnx.helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, name="norm"),
        onnx.helper.make_node("MatMul", ["y", "w"], ["h0"], name="fc"),
        onnx.helper.make_node("Add", ["h0", "bias"], ["h"], name="fc_bias"),
    ]
    outputs = [onnx.helper.make_tensor_value_info("h", onnx.TensorProto.DOUBLE, ["N", "T", out])]
    if post_norm:
        nodes.append(onnx.helper.make_node("Add", ["y", "x"], ["r"], name="residual"))
        outputs.append(
            onnx.helper.make_tensor_value_info("r", onnx.TensorProto.DOUBLE, ["N", "T", channels])
        )
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, ["N", "T", channels])],
        outputs,
        [
            onnx.numpy_helper.from_array(a, n)
            for a, n in ((gamma, "g"), (beta, "b"), (w, "w"), (bias, "bias"))
        ],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    proto.ir_version = 10
    return ir.from_proto(proto)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    channels=st.integers(2, 24),
    out=st.integers(1, 8),
    post_norm=st.booleans(),
)
def test_random_norm_linear_graphs_fold_exactly_in_float64(
    seed: int, channels: int, out: int, post_norm: bool
) -> None:
    """The whole pass on float64 graphs, run by onnx.reference (§19 trap 13: float64 checks go
    through the reference, not ORT): outputs equal to 1e-12 and per-tensor codes of ỹ equal
    the per-channel codes of y (measured: ≤ 3.4e-16 normwise and 0 mismatches)."""
    model = random_norm_linear_graph(seed, channels, out, post_norm)
    original = ir.to_proto(model)
    rng = np.random.default_rng(seed + 1)
    calibration = {"x": rng.standard_normal((32, 4, channels))}
    recipe = repq_recipe()
    assert recipe.channelwise is not None
    plan = QuantPlan("test", "static")
    for step in (
        InferShapes(),  # as compile's canonicalization does: the fold reads the element types
        PlanLinearQuantization(recipe, plan),
        PlanChannelwiseActivations(recipe.channelwise, plan),
        CalibrateActivations(plan, calibration, batch_size=8),
        ReparameterizeChannels(plan),
    ):
        step(model)
    site = plan.channelwise["y"]
    assert site.channel is not None and site.reparameterized
    x = {"x": rng.standard_normal((3, 5, channels))}
    expose = onnx.helper.make_tensor_value_info
    before = onnx.reference.ReferenceEvaluator(original).run(None, x)
    folded_proto = ir.to_proto(model)
    folded_proto.graph.output.append(expose(site.reparameterized, onnx.TensorProto.DOUBLE, None))
    after = onnx.reference.ReferenceEvaluator(folded_proto).run(None, x)
    for a, b in zip(before, after, strict=False):
        assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(a)
    original.graph.output.append(expose("y", onnx.TensorProto.DOUBLE, None))
    y = onnx.reference.ReferenceEvaluator(original).run(["y"], x)[0]
    channel_codes = np.clip(
        np.rint(y / site.channel.scale.astype(np.float64)) + site.channel.zero_point, 0, 255
    )
    target = plan.activation_params[site.reparameterized]
    folded_codes = np.clip(
        np.rint(after[-1] / np.float64(target.scale)) + target.zero_point, 0, 255
    )
    assert np.array_equal(channel_codes, folded_codes)
