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

    @property
    def simulated(self) -> bool:
        """Per-channel activation scales: no integer kernel can run this layer (a simulation)."""
        return self.activations is not None and self.activations.granularity.kind == "per-channel"

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
class ChannelSite:
    """An activation calibrated per channel (recipe ``[channelwise]``) and how it is lowered.

    The reparameterize pass fills the fold fields: the per-tensor tensor the layers now read,
    what absorbed the per-channel affine, the ranges of r1 and r2 (notes/algorithms.md §1) and
    the float ops it added.
    """

    activation: str
    producer: str
    producer_op: str
    lowering: str
    reparameterized: str | None = None
    folded_into: str | None = None
    r1_range: tuple[float, float] | None = None
    r2_range: tuple[int, int] | None = None
    float_ops_added: int = 0
    channel: QuantParams | None = None
    """The calibrated per-channel (s, z) the fold started from."""

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ChannelSite:
        r1, r2 = entry.get("r1_range"), entry.get("r2_range")
        return cls(
            activation=str(entry["activation"]),
            producer=str(entry["producer"]),
            producer_op=str(entry["producer_op"]),
            lowering=str(entry["lowering"]),
            reparameterized=entry.get("reparameterized"),
            folded_into=entry.get("folded_into"),
            r1_range=None if r1 is None else (float(r1[0]), float(r1[1])),
            r2_range=None if r2 is None else (int(r2[0]), int(r2[1])),
            float_ops_added=int(entry.get("float_ops_added", 0)),
            channel=QuantParams.from_json(entry["channel"]) if entry.get("channel") else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "producer": self.producer,
            "producer_op": self.producer_op,
            "lowering": self.lowering,
            "reparameterized": self.reparameterized,
            "folded_into": self.folded_into,
            "r1_range": list(self.r1_range) if self.r1_range else None,
            "r2_range": list(self.r2_range) if self.r2_range else None,
            "float_ops_added": self.float_ops_added,
            "channel": self.channel.to_json() if self.channel else None,
        }


@dataclass
class QuantPlan:
    recipe: str
    mode: str
    linear: dict[str, LinearDecision] = field(default_factory=dict)
    activation_params: dict[str, QuantParams] = field(default_factory=dict)
    """Per activation tensor, after calibration (static recipes)."""
    channelwise: dict[str, ChannelSite] = field(default_factory=dict)
    """Per-channel calibrated activations (recipe ``[channelwise]``), by tensor name."""

    def quantized(self) -> list[LinearDecision]:
        return [d for d in self.linear.values() if d.quantize]

    def calibration_requests(self) -> dict[str, QuantSpec]:
        """The activation tensors whose ranges calibration must measure, with their specs."""
        return {d.activation: d.activations for d in self.quantized() if d.activations is not None}

    def readers(self, tensor: str) -> list[LinearDecision]:
        """The quantized layers reading activation ``tensor``."""
        return [d for d in self.quantized() if d.activation == tensor]

    def skip_activation(self, tensor: str, reason: str) -> list[str]:
        """Leave every layer reading ``tensor`` in float; returns the layers affected."""
        affected = self.readers(tensor)
        self.channelwise.pop(tensor, None)
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
        for entry in document.get("channelwise", ()):
            site = ChannelSite.from_json(entry)
            plan.channelwise[site.activation] = site
        return plan

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "mode": self.mode,
            "linear": [d.to_json() for d in self.linear.values()],
            "activation_params": {k: p.to_json() for k, p in self.activation_params.items()},
            "channelwise": [site.to_json() for site in self.channelwise.values()],
        }


def _spec(entry: dict[str, Any] | None) -> QuantSpec | None:
    return None if entry is None else QuantSpec.from_json(entry)
