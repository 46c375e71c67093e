"""Remove Identity nodes.

Matches: default-domain ``Identity`` nodes; a graph output produced by an Identity of a graph
input is kept (it cannot be removed without renaming an input). Delegates to onnx-ir's
``IdentityEliminationPass``.
Semantics: EXACT.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from qcompiler.passes.delegate import DelegatingPass
from qcompiler.passes.manager import Semantics


class EliminateIdentities(DelegatingPass):
    name = "eliminate-identities"
    semantics = Semantics.EXACT

    def inner(self) -> ir.passes.PassBase:
        return IdentityEliminationPass()
