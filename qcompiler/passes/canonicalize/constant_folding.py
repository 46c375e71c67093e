"""Evaluate subgraphs whose inputs are all constant and store their results as constants.

Matches: nodes whose inputs are initializers or constants (shape arithmetic, Transpose/Reshape of
weights, Cast of constants), up to ``size_limit`` elements per input and output so that a folded
Expand cannot bloat the model. Control-flow and non-deterministic ops are never folded.
Delegates to onnxscript's ``FoldConstantsPass`` (which evaluates with the ONNX reference runtime).
Semantics: EXACT (the reference evaluation computes what the runtime would, up to rounding).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.optimizer._constant_folding import FoldConstantsPass

from qcompiler.passes.delegate import DelegatingPass
from qcompiler.passes.manager import Semantics

DEFAULT_SIZE_LIMIT = 1 << 22
"""Largest input or output (elements) that is folded: a 2048×2048 weight."""


class FoldConstants(DelegatingPass):
    name = "fold-constants"
    semantics = Semantics.EXACT

    def __init__(self, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        super().__init__()
        self.size_limit = size_limit

    def inner(self) -> ir.passes.PassBase:
        return FoldConstantsPass(
            shape_inference=False,
            input_size_limit=self.size_limit,
            output_size_limit=self.size_limit,
            should_fold=lambda node: None,
        )
