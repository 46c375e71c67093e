"""Plan per-channel calibration for the activations a recipe's ``[channelwise]`` names.

Matches: activation tensors of statically quantized linear layers (plan-linear's decisions) that
are produced by an op in ``recipe.channelwise.producers`` (e.g. LayerNormalization, Gelu), in
the main graph. Their spec becomes per-channel along the last axis (the hidden features), with
the ``[channelwise]`` observer if one is given, and the tensor is recorded as a
:class:`~qcompiler.quant.plan.ChannelSite` for the lowering (RepQ-ViT, notes/algorithms.md §1:
"complex quantizers during calibration, hardware quantizers at inference").
Skips (the tensor stays per tensor, logged): a reader's weight or bias is read by anything else
(folding it would change that reader too, §19 trap 7).
Semantics: EXACT (writes the plan only; ``modified`` is always False).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qcompiler.passes.analyses.linear import LinearLayer, LinearLayers
from qcompiler.passes.manager import Pass, Semantics
from qcompiler.quant.plan import ChannelSite, LinearDecision, QuantPlan
from qcompiler.quant.recipe import ACTIVATION_AXIS, Channelwise
from qcompiler.quant.spec import QuantSpec, per_channel


class PlanChannelwiseActivations(Pass):
    name = "plan-channelwise"
    semantics = Semantics.EXACT
    required_analyses = (LinearLayers,)

    def __init__(self, rule: Channelwise, plan: QuantPlan) -> None:
        super().__init__()
        self.rule = rule
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = {layer.node: layer for layer in self.analysis(LinearLayers, model)}
        producers = {v.name: n for n in model.graph for v in n.outputs if v.name}
        for tensor in self.plan.calibration_requests():
            producer = producers.get(tensor)
            if producer is None or producer.op_type not in self.rule.producers:
                continue
            readers = self.plan.readers(tensor)
            problem = _why_not_channelwise([layers[d.node] for d in readers])
            if problem:
                self.log.skip(producer, f"{tensor} stays per tensor: {problem}")
                continue
            for decision in readers:
                _make_channelwise(decision, self.rule)
            self.plan.channelwise[tensor] = ChannelSite(
                tensor, producer.name or "", producer.op_type, self.rule.lowering
            )
            self.log.count(f"sites_{producer.op_type}")
        return ir.passes.PassResult(model, modified=False)


def _why_not_channelwise(readers: list[LinearLayer]) -> str:
    """Why the readers' weights cannot absorb per-channel factors; '' when they can."""
    for layer in readers:
        if layer.weight_shared:
            return f"the weight {layer.weight} of {layer.node} is shared"
        if layer.bias_shared:
            return f"the bias {layer.bias} of {layer.node} is shared"
    return ""


def _make_channelwise(decision: LinearDecision, rule: Channelwise) -> None:
    spec = decision.activations
    assert spec is not None
    decision.activations = channelwise_spec(spec, rule.observer)


def channelwise_spec(spec: QuantSpec, observer: str | None) -> QuantSpec:
    """``spec`` per channel along the last axis, with ``observer`` if given."""
    return dataclasses.replace(
        spec, granularity=per_channel(ACTIVATION_AXIS), observer=observer or spec.observer
    )
