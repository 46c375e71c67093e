"""Norm → linear groups: who reads each LayerNormalization / RMSNormalization output.

RepQ reparameterization (notes/algorithms.md §1, §2) folds a per-channel activation quantizer of
a norm output y into the norm's γ/β and into the weights and biases of the linears that read y.
The fold is exact only if *every* reader of y is accounted for, so the pass needs, per norm, the
complete list of readers, split into linears it can fold and everything else. That list also
decides the site kind: "pre-norm" (§1: y feeds only linears), "post-norm/residual" (§2: linears
plus a residual Add, another reader or a graph output; needs a restore) or "no-linear" (nothing
to fold). This analysis computes the list once and changes nothing.

Matching rules (§1):

- A **linear consumer** is ``MatMul(y, W)`` with W a constant 2-D tensor (layout ``[in,out]``),
  or ``Gemm(y, W[, C])`` with ``transA=0``, W a constant 2-D tensor (``[in,out]``, or ``[out,in]``
  with ``transB=1``) and C absent or constant. "Constant" means an initializer that is not a graph
  input; canonicalization lifts Constant nodes into initializers, so run it first.
- Its **bias** is C for Gemm (a fold reads ``alpha``/``beta`` from the node); for MatMul it is
  ``Add(MatMul, b)`` or ``Add(b, MatMul)`` with b constant, holding ``out`` elements along its
  last axis (shape ``[out]``, ``[1, 1, out]``), when that Add is the MatMul output's only
  reader. Otherwise the MatMul has no bias: folding then inserts one after it (§1), which the
  existing Add does not disturb.
- A weight or bias (or the norm's γ/β) is **shared** when something other than its consumer
  reads it (another node or a graph output): folding it would change that reader too.
- Every other reader is an **other consumer** with a reason: a residual Add (the other operand is
  not constant), the graph output, a Shape/Size ("shape-only": it does not see the values, so it
  does not change the site kind), a MatMul/Gemm that does not match (weight not constant or not
  2-D, y as input B, ``transA=1``, non-constant C), or any other op.

Site kind: "no-linear" without linear consumers; else "pre-norm" when every other consumer is
shape-only, "post-norm/residual" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import onnx_ir as ir

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes, int_attribute
from qcompiler.ir.provenance import module_name
from qcompiler.passes.analyses.linear import LinearLayer, constant_shape, is_shared, match_linear
from qcompiler.passes.manager import Analysis, AnalysisManager

NORM_OPS = ("LayerNormalization", "RMSNormalization")

SiteKind = Literal["pre-norm", "post-norm/residual", "no-linear"]
SITE_KINDS: tuple[SiteKind, ...] = ("pre-norm", "post-norm/residual", "no-linear")
ConsumerRole = Literal["residual", "graph-output", "shape-only", "other"]
SHAPE_ONLY_OPS = ("Shape", "Size")
"""Readers that see only the shape of the norm output, which a fold leaves unchanged."""


@dataclass(frozen=True)
class OtherConsumer:
    """A reader of the norm output that is not a foldable linear, and why."""

    node: str | None
    """The reading node's name; None for a graph output."""
    op_type: str | None
    role: ConsumerRole
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "role": self.role,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class NormSite:
    """One norm node, its parameters and every reader of its output."""

    norm: str
    op_type: str
    output: str
    axis: int
    scale: str | None
    bias: str | None
    params_shared: bool
    """γ or β is read by something besides this norm: folding into it would change that too."""
    module: str | None
    linear: tuple[LinearLayer, ...]
    other: tuple[OtherConsumer, ...]

    @property
    def kind(self) -> SiteKind:
        if not self.linear:
            return "no-linear"
        value_readers = [c for c in self.other if c.role != "shape-only"]
        return "post-norm/residual" if value_readers else "pre-norm"

    @property
    def has_shared_weight(self) -> bool:
        """Whether a fold here would also change another reader of γ, β, a weight or a bias."""
        return self.params_shared or any(c.weight_shared or c.bias_shared for c in self.linear)

    def to_json(self) -> dict[str, Any]:
        return {
            "norm": self.norm,
            "op_type": self.op_type,
            "output": self.output,
            "axis": self.axis,
            "scale": self.scale,
            "bias": self.bias,
            "params_shared": self.params_shared,
            "module": self.module,
            "kind": self.kind,
            "has_shared_weight": self.has_shared_weight,
            "linear": [c.to_json() for c in self.linear],
            "other": [c.to_json() for c in self.other],
        }


@dataclass(frozen=True)
class NormSites:
    """Every norm site of a model, in graph order."""

    sites: tuple[NormSite, ...]

    def of_kind(self, kind: SiteKind) -> tuple[NormSite, ...]:
        return tuple(site for site in self.sites if site.kind == kind)

    def counts(self) -> dict[str, int]:
        return {kind: len(self.of_kind(kind)) for kind in SITE_KINDS}

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts(), "sites": [site.to_json() for site in self.sites]}


class NormLinearGroups(Analysis[NormSites]):
    """For every LayerNormalization / RMSNormalization: its linear and other consumers."""

    @classmethod
    def compute(cls, model: ir.Model, analyses: AnalysisManager) -> NormSites:
        del analyses
        return find_norm_sites(model)


def find_norm_sites(model: ir.Model) -> NormSites:
    """The norm sites of ``model`` (main graph and subgraphs), in graph order."""
    nodes = all_nodes(model)
    order = {id(node): index for index, node in enumerate(nodes)}
    return NormSites(tuple(_site(node, order) for node in nodes if _is_norm(node)))


def _is_norm(node: ir.Node) -> bool:
    return node.domain in ONNX_DOMAINS and node.op_type in NORM_OPS


def _site(norm: ir.Node, order: dict[int, int]) -> NormSite:
    output = norm.outputs[0]
    linear: list[LinearLayer] = []
    other: list[OtherConsumer] = []
    for consumer in sorted(_distinct_consumers(output), key=lambda n: order[id(n)]):
        match = _linear_consumer(consumer, output)
        if isinstance(match, LinearLayer):
            linear.append(match)
        else:
            other.append(OtherConsumer(consumer.name, consumer.op_type, *match))
    if output.is_graph_output():
        other.append(OtherConsumer(None, None, "graph-output", "graph output"))
    return NormSite(
        norm=norm.name or "",
        op_type=norm.op_type,
        output=output.name or "",
        axis=int_attribute(norm, "axis", -1),
        scale=_input_name(norm, 1),
        bias=_input_name(norm, 2),
        params_shared=any(is_shared(v, norm) for v in norm.inputs[1:] if v is not None),
        module=module_name(norm),
        linear=tuple(linear),
        other=tuple(other),
    )


def _distinct_consumers(value: ir.Value) -> list[ir.Node]:
    """The nodes reading ``value``, each once (a node may read it at two inputs)."""
    return list({id(node): node for node in value.consumers()}.values())


def _linear_consumer(node: ir.Node, y: ir.Value) -> LinearLayer | tuple[ConsumerRole, str]:
    """The node as a foldable linear consumer of ``y``, or (role, reason) why it is not."""
    if node.domain not in ONNX_DOMAINS:
        return "other", f"{node.domain}::{node.op_type} reads the norm output"
    if node.op_type in ("MatMul", "Gemm"):
        if node.inputs[0] is not y:
            return "other", f"{node.op_type} reads the norm output as input B"
        layer = match_linear(node)
        return layer if isinstance(layer, LinearLayer) else ("other", f"{node.op_type} {layer}")
    if node.op_type == "Add" and _is_residual_add(node, y):
        return "residual", "residual Add"
    if node.op_type in SHAPE_ONLY_OPS:
        return "shape-only", f"{node.op_type} reads only the shape"
    return "other", f"{node.op_type} reads the norm output"


def _is_residual_add(add: ir.Node, y: ir.Value) -> bool:
    """An Add of ``y`` and another activation (not a constant, not ``y`` itself)."""
    if len(add.inputs) != 2:
        return False
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    return other is not None and other is not y and constant_shape(other) is None


def _input_name(node: ir.Node, index: int) -> str | None:
    value = node.inputs[index] if len(node.inputs) > index else None
    return value.name if value is not None else None
