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

from qcompiler.ir.graph import all_nodes, onnx_opset
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
        before = self._fused_count(model)
        rules = self.rules()
        rules.apply_to_model(model)
        fused = self._fused_count(model) - before
        if fused:
            self.log.count(f"{self.fused_op}_fused", fused)
        self._log_near_misses(model, rules)
        return ir.passes.PassResult(model, modified=fused > 0)

    def _fused_count(self, model: ir.Model) -> int:
        return sum(
            1
            for n in all_nodes(model)
            if n.op_type == self.fused_op and n.domain in ("", "ai.onnx")
        )

    def _log_near_misses(self, model: ir.Model, rules: pattern.RewriteRuleSet) -> None:
        tracer = MatchingTracer()
        rules.apply_to_model(model, tracer=tracer)
        for rule, matches in tracer.best_matches_map.items():
            for info in matches:
                if info.status is not MatchStatus.CONDITION_FAILED:
                    continue
                reason = info.match_result.reason or "pattern did not match"
                self.log.skip(info.root_node, f"{rule.name}: {reason}")
