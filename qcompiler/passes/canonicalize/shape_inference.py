"""Annotate every value with its inferred type and shape.

Matches: values whose type or shape ONNX shape inference can determine or refine. Passes and
``inspect`` read shapes from the IR (weight shapes, activation ranks).
Runs ONNX's shape inference (with data propagation, symbolic dimensions kept) through onnx-ir's
C-API helper, which keeps large initializers out of the protobuf it builds.
Why not onnx-ir's ``ShapeInferencePass``: its merge assigns ``value.dtype``, which turns a
``seq(tensor(T))`` or ``optional(...)`` value into ``tensor(T)``; ORT then rejects the model
(found by the ONNX backend suite: sequence_model1–8). This merge assigns the whole inferred type.
Semantics: EXACT (annotations only; no node changes). When inference fails the model is left
unchanged and the failure is logged as a skip.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common._c_api_utils import call_onnx_api

from qcompiler.errors import first_line
from qcompiler.passes.manager import Pass, Semantics


class InferShapes(Pass):
    name = "infer-shapes"
    semantics = Semantics.EXACT

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            inferred = call_onnx_api(_infer, model)
        except Exception as error:  # ONNX raises many types; none of them may stop compilation
            self.log.skip("graph", f"ONNX shape inference failed: {first_line(error)}")
            return ir.passes.PassResult(model, modified=False)
        refined = merge_inferred_types(model, ir.serde.deserialize_model(inferred))
        if refined:
            self.log.count("values_refined", refined)
        return ir.passes.PassResult(model, modified=refined > 0)


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(
        proto, check_type=False, strict_mode=False, data_prop=True
    )


def merge_inferred_types(model: ir.Model, inferred: ir.Model) -> int:
    """Copy inferred types and shapes onto ``model``'s values; returns how many changed."""
    refined = 0
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs(), strict=True):
        inferred_values = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            source = inferred_values.get(name)
            if source is None:
                continue
            changed = False
            if source.type is not None and source.type != value.type:
                value.type = source.type
                changed = True
            if source.shape is not None and source.shape != value.shape:
                value.shape = source.shape
                changed = True
            refined += changed
    return refined
