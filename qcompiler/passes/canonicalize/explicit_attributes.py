"""Write every attribute's default value explicitly on its node.

Matches: default-domain nodes that omit an attribute that has a default in the op's schema at
the model's opset (ReduceMean's ``keepdims``, Gemm's ``transB``, ...). Pattern rules then see
one form instead of two (onnxscript's LayerNorm rule asks for ``keepdims=1`` and misses the
DINOv2 file without this).
Exception: BatchNormalization's ``training_mode = 0`` is left omitted. onnx-ir's dead-code pass
writes inference-mode BatchNormalization that way; writing it out here would make the two passes
undo each other on every run.
Semantics: EXACT (an omitted attribute means its default; nothing is computed differently).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes, onnx_opset
from qcompiler.passes.manager import Pass, Semantics

OMITTED_DEFAULTS = {("BatchNormalization", "training_mode")}


class MakeDefaultAttributesExplicit(Pass):
    name = "explicit-attributes"
    semantics = Semantics.EXACT

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = onnx_opset(model)
        added = sum(self._add_defaults(node, opset) for node in all_nodes(model))
        if added:
            self.log.count("attributes_added", added)
        return ir.passes.PassResult(model, modified=added > 0)

    def _add_defaults(self, node: ir.Node, opset: int) -> int:
        if node.domain not in ONNX_DOMAINS:
            return 0
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, domain="")
        except onnx.defs.SchemaError:
            self.log.skip(node, f"no schema for {node.op_type} at opset {opset}")
            return 0
        added = 0
        for name, attribute in schema.attributes.items():
            if name in node.attributes or (node.op_type, name) in OMITTED_DEFAULTS:
                continue
            if not attribute.default_value.ListFields():
                continue
            default = ir.serde.deserialize_attribute(attribute.default_value)
            node.attributes[name] = ir.Attr(name, default.type, default.value)
            added += 1
        return added
