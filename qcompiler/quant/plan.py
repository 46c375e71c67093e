"""QuantPlan: every quantization decision as data you can print, diff and edit.

Planning passes write decisions here; calibration adds activation parameters; only the
materialize pass turns the plan into Q/DQ nodes (DESIGN.md §3 "decide, then do"). Keys are node
and tensor names, the stable identifiers of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qcompiler.quant.spec import QuantParams, QuantSpec


@dataclass
class LinearDecision:
    """What happens to one linear layer (MatMul / Gemm with a constant weight)."""

    node: str
    op_type: str
    activation: str
    weight: str
    weight_axis: int
    """The weight's output-channel axis (1 for [in,out], 0 for Gemm transB=1)."""
    quantize: bool
    reason: str
    """The recipe rule that decided, or why the layer stays float."""
    weights: QuantSpec | None = None
    activations: QuantSpec | None = None
    """None when quantized dynamically (at run time) or not at all."""

    def skip(self, reason: str) -> None:
        self.quantize = False
        self.reason = reason

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> LinearDecision:
        return cls(
            node=str(entry["node"]),
            op_type=str(entry["op_type"]),
            activation=str(entry["activation"]),
            weight=str(entry["weight"]),
            weight_axis=int(entry["weight_axis"]),
            quantize=bool(entry["quantize"]),
            reason=str(entry["reason"]),
            weights=_spec(entry["weights"]),
            activations=_spec(entry["activations"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "activation": self.activation,
            "weight": self.weight,
            "weight_axis": self.weight_axis,
            "quantize": self.quantize,
            "reason": self.reason,
            "weights": self.weights.to_json() if self.weights else None,
            "activations": self.activations.to_json() if self.activations else None,
        }


@dataclass
class QuantPlan:
    recipe: str
    mode: str
    linear: dict[str, LinearDecision] = field(default_factory=dict)
    activation_params: dict[str, QuantParams] = field(default_factory=dict)
    """Per activation tensor, after calibration (static recipes)."""

    def quantized(self) -> list[LinearDecision]:
        return [d for d in self.linear.values() if d.quantize]

    def calibration_requests(self) -> dict[str, QuantSpec]:
        """The activation tensors whose ranges calibration must measure, with their specs."""
        return {d.activation: d.activations for d in self.quantized() if d.activations is not None}

    def skip_activation(self, tensor: str, reason: str) -> list[str]:
        """Leave every layer reading ``tensor`` in float; returns the layers affected."""
        affected = [d for d in self.quantized() if d.activation == tensor]
        for decision in affected:
            decision.skip(reason)
        return [d.node for d in affected]

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> QuantPlan:
        """The plan that :meth:`to_json` wrote."""
        plan = cls(str(document["recipe"]), str(document["mode"]))
        for entry in document["linear"]:
            decision = LinearDecision.from_json(entry)
            plan.linear[decision.node] = decision
        plan.activation_params.update(
            (name, QuantParams.from_json(params))
            for name, params in document["activation_params"].items()
        )
        return plan

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "mode": self.mode,
            "linear": [d.to_json() for d in self.linear.values()],
            "activation_params": {k: p.to_json() for k, p in self.activation_params.items()},
        }


def _spec(entry: dict[str, Any] | None) -> QuantSpec | None:
    return None if entry is None else QuantSpec.from_json(entry)
