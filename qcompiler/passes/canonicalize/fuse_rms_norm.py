"""Fuse decomposed RMSNorm subgraphs into one ``RMSNormalization`` op (opset 23).

Matches (onnxscript's rules): [Cast] → Pow(x, 2) → ReduceMean(-1) → Add(ε) → Sqrt → Reciprocal →
Mul(x, ·) [→ Cast] → Mul(γ) with γ on either side; the LLaMA-family export (SmolLM2) writes
RMSNorm this way.
Math: y = γ ⊙ x / √(mean(x²) + ε) over the last axis = RMSNormalization-23, axis = −1.
Semantics: EXACT (float rounding only).
Precondition: opset ≥ 23, the first opset with RMSNormalization.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion._rms_normalization import rms_normalization_rules

from qcompiler.passes.manager import Semantics
from qcompiler.passes.rewrite import RuleBasedFusion


class FuseRmsNorm(RuleBasedFusion):
    name = "fuse-rms-norm"
    semantics = Semantics.EXACT
    fused_op = "RMSNormalization"
    min_opset = 23

    def rules(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet(rms_normalization_rules)
