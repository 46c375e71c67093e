"""A pass made of onnxscript rewrite rules (pattern → check → replacement).

The rules are onnxscript's declarative ``RewriteRuleSet``; this class adds qcompiler's contract:
an opset precondition, the number of ops fused as the counter, and near-misses in the skip log.
After the rewrite, the rules run once more under onnxscript's ``MatchingTracer`` (a dry run that
changes nothing) and every near-miss, a candidate that matched a pattern's structure but failed
its check (a non-constant ε, a constant off by more than the tolerance), is logged with the
check's reason, so a user can see why a LayerNorm-looking subgraph was not fused.
"""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchingTracer, MatchStatus

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes, onnx_opset
from qcompiler.passes.manager import Pass


class RuleBasedFusion(Pass):
    """Fuses the subgraphs ``rules`` match into ``fused_op`` nodes (default domain)."""

    fused_op: ClassVar[str]
    min_opset: ClassVar[int]

    def rules(self) -> pattern.RewriteRuleSet:
        raise NotImplementedError

    def requires(self, model: ir.Model) -> None:
        opset = onnx_opset(model)
        if opset < self.min_opset:
            raise ir.passes.PreconditionError(
                f"{self.name} needs ONNX opset ≥ {self.min_opset} ({self.fused_op}); the model is "
                f"at opset {opset}: run the upgrade-opset pass first"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        existing = {id(node) for node in self._fused_nodes(model)}
        rules = self.rules()
        rules.apply_to_model(model)
        fused = [node for node in self._fused_nodes(model) if id(node) not in existing]
        if fused:
            self.log.count(f"{self.fused_op}_fused", len(fused))
            name_after_site(fused, self.fused_op, model)
        self._log_near_misses(model, rules)
        return ir.passes.PassResult(model, modified=bool(fused))

    def _fused_nodes(self, model: ir.Model) -> list[ir.Node]:
        return [
            n for n in all_nodes(model) if n.op_type == self.fused_op and n.domain in ONNX_DOMAINS
        ]

    def _log_near_misses(self, model: ir.Model, rules: pattern.RewriteRuleSet) -> None:
        tracer = MatchingTracer()
        rules.apply_to_model(model, tracer=tracer)
        for rule, matches in tracer.best_matches_map.items():
            for info in matches:
                if info.status is not MatchStatus.CONDITION_FAILED:
                    continue
                reason = info.match_result.reason or "pattern did not match"
                self.log.skip(info.root_node, f"{rule.name}: {reason}")


def name_after_site(nodes: list[ir.Node], op_type: str, model: ir.Model) -> None:
    """Name fused nodes from their site, deterministically.

    onnxscript names a new node ``node_<Op>_<n>`` and merges the replaced nodes' metadata into
    it, which keeps torch module names for dynamo exports. Exporters that encode the module path
    in node names instead (TorchScript: ``/backbone/encoder/layer.0/norm1/Add_1``) leave their
    path on the output value; the fused node takes that path: ``.../norm1/LayerNormalization``.
    """
    taken = {node.name for node in all_nodes(model)}
    for node in nodes:
        output = node.outputs[0].name or ""
        if "/" not in output:
            continue
        name = f"{output.rsplit('/', 1)[0]}/{op_type}"
        if name not in taken:
            node.name = name
            taken.add(name)
