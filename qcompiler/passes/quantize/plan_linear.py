"""Plan the quantization of linear layers from a recipe (no graph change).

Matches: every MatMul / Gemm node. Linear layers (constant 2-D weight; see
passes/analyses/linear.py) get the recipe's decision: quantize with its weight and activation
specs, or stay float with the rule that said so. The weight's per-channel axis is set to the
layer's output-channel axis (1 for [in,out], 0 for Gemm transB=1; §19 trap 6). MatMuls whose
weight is computed (attention's Q·Kᵀ and A·V) are logged as skips: this plan quantizes weights.
A layer whose activation is already planned with a different spec (two overrides disagreeing on
a shared input) stays float, logged.
Semantics: EXACT (writes the plan only; ``modified`` is always False).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes
from qcompiler.passes.analyses.linear import LinearLayer, LinearLayers, match_linear
from qcompiler.passes.manager import Pass, Semantics
from qcompiler.quant.plan import LinearDecision, QuantPlan
from qcompiler.quant.recipe import Recipe
from qcompiler.quant.spec import QuantSpec, per_channel


class PlanLinearQuantization(Pass):
    name = "plan-linear"
    semantics = Semantics.EXACT
    required_analyses = (LinearLayers,)

    def __init__(self, recipe: Recipe, plan: QuantPlan) -> None:
        super().__init__()
        self.recipe = recipe
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for layer in self.analysis(LinearLayers, model):
            decision = self._decide(layer)
            self.plan.linear[layer.node] = decision
            self.log.count("layers_quantized" if decision.quantize else "layers_float")
            if not decision.quantize:
                self.log.skip(layer.node, decision.reason)
        self._log_unmatched_matmuls(model)
        return ir.passes.PassResult(model, modified=False)

    def _decide(self, layer: LinearLayer) -> LinearDecision:
        choice = self.recipe.choose(layer.node, layer.op_type)
        decision = LinearDecision(
            node=layer.node,
            op_type=layer.op_type,
            activation=layer.activation,
            weight=layer.weight,
            weight_axis=layer.weight_axis,
            quantize=choice.quantize,
            reason=choice.rule,
            weights=_on_axis(choice.weights, layer.weight_axis),
            activations=choice.activations,
        )
        planned = self.plan.calibration_requests().get(layer.activation)
        if decision.quantize and planned is not None and planned != decision.activations:
            decision.skip(f"activation {layer.activation} is planned with another spec")
        return decision

    def _log_unmatched_matmuls(self, model: ir.Model) -> None:
        for node in all_nodes(model):
            if node.op_type in self.recipe.op_types and node.domain in ONNX_DOMAINS:
                reason = match_linear(node)
                if isinstance(reason, str) and reason:
                    self.log.skip(node, f"not a linear layer: {node.op_type} {reason}")


def _on_axis(spec: QuantSpec | None, axis: int) -> QuantSpec | None:
    """A per-channel weight spec bound to the layer's output-channel axis."""
    if spec is None or spec.granularity.kind != "per-channel":
        return spec
    return dataclasses.replace(spec, granularity=per_channel(axis))
