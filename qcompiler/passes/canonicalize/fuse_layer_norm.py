"""Fuse decomposed LayerNorm subgraphs into one ``LayerNormalization`` op.

Matches (onnxscript's rules): ReduceMean(x, [-1]) → Sub → Pow(2) | Mul(d, d) → ReduceMean →
Add(ε) → Sqrt → Div | Reciprocal·Mul → Mul(γ) [→ Add(β)], with ε a scalar constant and x float
or double. This is the DINOv2 export's LayerNorm (TorchScript exporter, opset 14 upgraded).
Math: y = γ ⊙ (x − μ) / √(σ² + ε) + β over the last axis, which is LayerNormalization-17 with
axis = −1 and stash_type = x's type.
Semantics: EXACT (fused vs decomposed differ by float rounding; DINOv2: 4.5e-8 normwise).
Precondition: opset ≥ 18 (the rule matches ReduceMean with ``axes`` as an input); run
upgrade-opset and explicit-attributes first (the rule needs ``keepdims`` written out).
Skips: candidates that match part of the pattern are logged with the matcher's reason (for
example a non-constant ε).
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion._layer_norm import layer_normalization_rules

from qcompiler.passes.manager import Semantics
from qcompiler.passes.rewrite import RuleBasedFusion


class FuseLayerNorm(RuleBasedFusion):
    name = "fuse-layer-norm"
    semantics = Semantics.EXACT
    fused_op = "LayerNormalization"
    min_opset = 18

    def rules(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet(layer_normalization_rules, commute=True)
