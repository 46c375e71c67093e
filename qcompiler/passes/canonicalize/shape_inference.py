"""Annotate every value with its inferred type and shape.

Matches: values whose dtype or shape ONNX shape inference can determine or refine. Passes and
``inspect`` read shapes from the IR (weight shapes, activation ranks). Delegates to onnx-ir's
``ShapeInferencePass`` (ONNX's inference, with symbolic dimensions kept).
Semantics: EXACT (annotations only; no node changes).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from qcompiler.passes.delegate import DelegatingPass
from qcompiler.passes.manager import Semantics


class InferShapes(DelegatingPass):
    name = "infer-shapes"
    semantics = Semantics.EXACT

    def inner(self) -> ir.passes.PassBase:
        return ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)
