"""Fuse the decomposed exact (erf) GELU into one ``Gelu`` op (opset 20).

Matches: h = Add(Erf(Div(x, √2) | Mul(x, 1/√2)), 1) combined with x and 0.5 by two Muls in any
association and operand order: (x·h)·0.5 (DINOv2's TorchScript export), (x·0.5)·h and x·(h·0.5)
(torch's dynamo export writes these). The constants must be scalars equal to √2 (or 1/√2), 1 and
0.5 within a relative 1e-6, and x must be a float type.
Math: GELU(x) = x · Φ(x) = ½ · x · (1 + erf(x / √2)) = Gelu-20 with approximate = "none".
Semantics: EXACT (float rounding; the tanh approximation is a different function and is not
matched).
Precondition: opset ≥ 20, the first opset with Gelu.
Skips: near-misses (a constant off by more than the tolerance, a non-scalar constant) are
logged with the check's reason.
"""

from __future__ import annotations

import math
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern

from qcompiler.ir.graph import is_scalar_close
from qcompiler.passes.manager import Semantics
from qcompiler.passes.rewrite import RuleBasedFusion

FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)

ASSOCIATIONS = ("(x*h)*half", "(x*half)*h", "x*(h*half)")


class ErfGeluFusion(pattern.RewriteRuleClassBase):
    """One association of ½·x·(1 + erf(x/√2)), with the argument scaled by Div or Mul."""

    def __init__(self, name: str, divide: bool, association: str) -> None:
        super().__init__(name)
        self._divide = divide
        self._association = association

    def pattern(self, op: Any, x: Any, scale: Any, one: Any, half: Any) -> Any:
        scaled = op.Div(x, scale) if self._divide else op.Mul(x, scale)
        h = op.Add(op.Erf(scaled), one)
        if self._association == "(x*h)*half":
            return op.Mul(op.Mul(x, h), half)
        if self._association == "(x*half)*h":
            return op.Mul(op.Mul(x, half), h)
        return op.Mul(x, op.Mul(h, half))

    def check(  # type: ignore[override]  # onnxscript binds pattern variables by name
        self, context: Any, x: ir.Value, scale: ir.Value, one: ir.Value, half: ir.Value, **_: Any
    ) -> MatchResult:
        result = MatchResult()
        if x.dtype not in FLOAT_TYPES:
            return result.fail("input is not a float type", x)
        expected_scale = math.sqrt(2.0) if self._divide else 1.0 / math.sqrt(2.0)
        if not is_scalar_close(scale, expected_scale):
            return result.fail(f"erf argument scale is not a constant {expected_scale:.7g}", scale)
        if not is_scalar_close(one, 1.0):
            return result.fail("erf offset is not a constant 1", one)
        if not is_scalar_close(half, 0.5):
            return result.fail("outer factor is not a constant 0.5", half)
        return result

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> Any:
        return op.Gelu(x, approximate="none")


def erf_gelu_rules() -> pattern.RewriteRuleSet:
    rules = [
        ErfGeluFusion.rule(
            f"ErfGelu[{'div' if divide else 'mul'},{association}]", divide, association
        )
        for divide in (True, False)
        for association in ASSOCIATIONS
    ]
    return pattern.RewriteRuleSet(rules, commute=True)


class FuseGelu(RuleBasedFusion):
    name = "fuse-gelu"
    semantics = Semantics.EXACT
    fused_op = "Gelu"
    min_opset = 20

    def rules(self) -> pattern.RewriteRuleSet:
        return erf_gelu_rules()
