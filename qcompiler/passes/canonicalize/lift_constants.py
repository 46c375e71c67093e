"""Turn Constant nodes that hold tensors into initializers.

Matches: default-domain ``Constant`` nodes in the main graph (exporters put weights and scalars
there). Later passes find weights as initializers only (``value.const_value``), so a weight held
in a Constant node would otherwise be invisible to them. Delegates to onnx-ir's
``LiftConstantsToInitializersPass`` with every size lifted.
Semantics: EXACT (same tensor, other storage).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from qcompiler.passes.delegate import DelegatingPass
from qcompiler.passes.manager import Semantics


class LiftConstantsToInitializers(DelegatingPass):
    name = "lift-constants"
    semantics = Semantics.EXACT

    def inner(self) -> ir.passes.PassBase:
        return LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)
