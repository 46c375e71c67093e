"""Remove Identity nodes.

Matches: default-domain ``y = Identity(x)`` in the main graph and in subgraphs. Every use of y is
rewired to x; when y is a graph output, x takes y's name and place in the outputs.
Kept (logged as skips): an Identity whose x is a graph input or an initializer while y is a
graph output (removing it would rename an input), and one whose x and y are both outputs of the
same graph (a Scan body emitting a state and a scan output from one value): removing it would
list one value twice among the outputs. onnx-ir's ``IdentityEliminationPass`` removes the
latter, and ORT's Scan then returns wrong values (found by the ONNX backend suite: scan9_*).
Semantics: EXACT.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes
from qcompiler.passes.manager import Pass, Semantics


class EliminateIdentities(Pass):
    name = "eliminate-identities"
    semantics = Semantics.EXACT

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = sum(self._eliminate(node) for node in all_nodes(model) if _is_identity(node))
        if removed:
            self.log.count("nodes_removed", removed)
        return ir.passes.PassResult(model, modified=removed > 0)

    def _eliminate(self, node: ir.Node) -> bool:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.graph is not None
        y_is_output = y.is_graph_output()
        if y_is_output and (reason := _why_kept(x)):
            self.log.skip(node, reason)
            return False
        if x.type is None:
            x.type = y.type
        if x.shape is None:
            x.shape = y.shape
        ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
        if y_is_output:
            x.name = y.name  # the graph's interface keeps its output names
        node.graph.remove(node, safe=True)
        return True


def _is_identity(node: ir.Node) -> bool:
    return (
        node.op_type == "Identity"
        and node.domain in ONNX_DOMAINS
        and len(node.inputs) == 1
        and len(node.outputs) == 1
        and node.inputs[0] is not None
    )


def _why_kept(x: ir.Value) -> str | None:
    """Why an Identity producing a graph output must stay, or None when it can go."""
    if x.is_graph_input() or x.is_initializer():
        return "graph output copies a graph input or initializer"
    if x.is_graph_output():
        return "graph output copies another output of the same graph"
    return None
