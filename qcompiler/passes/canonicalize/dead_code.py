"""Remove nodes, initializers and opset imports that nothing uses.

Matches: nodes none of whose outputs reach a graph output (and that have no side effects),
initializers no node reads, and opset imports no node uses. Delegates to onnx-ir's
``RemoveUnusedNodesPass`` and ``RemoveUnusedOpsetsPass``.
Semantics: EXACT.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from qcompiler.passes.delegate import DelegatingPass
from qcompiler.passes.manager import Semantics


class EliminateDeadCode(DelegatingPass):
    name = "eliminate-dead-code"
    semantics = Semantics.EXACT

    def inner(self) -> ir.passes.PassBase:
        return ir.passes.Sequential(RemoveUnusedNodesPass(), RemoveUnusedOpsetsPass())
