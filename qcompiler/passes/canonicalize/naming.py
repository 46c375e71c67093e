"""Give every node and value a unique name.

Matches: nodes and values without a name, or with a name another node or value already has
(onnx.parser models and some exporters leave nodes unnamed). Plans, recipes and reports refer
to nodes and tensors by name (DESIGN.md §3), so names must be unique: the quantization plan is
keyed by node name. Graph inputs and outputs keep their names. Delegates to onnx-ir's
``NameFixPass``, which numbers new names in graph order, so they are deterministic.
Semantics: EXACT (names only).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from qcompiler.passes.delegate import DelegatingPass
from qcompiler.passes.manager import Semantics


class NameNodesAndValues(DelegatingPass):
    name = "name-nodes"
    semantics = Semantics.EXACT

    def inner(self) -> ir.passes.PassBase:
        return NameFixPass()
