"""A qcompiler pass whose work is done by an existing onnx-ir or onnxscript pass.

DESIGN.md §1.6: reuse the ecosystem. The wrapper adds what qcompiler's contract needs around the
borrowed pass: a name, declared semantics, and a counter of how many nodes it removed or added.
"""

from __future__ import annotations

import abc

import onnx_ir as ir

from qcompiler.ir.graph import all_nodes
from qcompiler.passes.manager import Pass


class DelegatingPass(Pass):
    """Runs ``self.inner()`` and records the change in node count."""

    @abc.abstractmethod
    def inner(self) -> ir.passes.PassBase:
        """The onnx-ir / onnxscript pass that does the work."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = len(all_nodes(model))
        result = self.inner()(model)
        after = len(all_nodes(model))
        if after < before:
            self.log.count("nodes_removed", before - after)
        elif after > before:
            self.log.count("nodes_added", after - before)
        return ir.passes.PassResult(model, modified=result.modified)
