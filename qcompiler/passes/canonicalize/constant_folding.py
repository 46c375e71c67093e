"""Evaluate subgraphs whose inputs are all constant and store their results as constants.

Matches: nodes whose inputs are initializers or constants (shape arithmetic, Transpose/Reshape of
weights, Cast of constants), up to ``size_limit`` elements per input and output so that a folded
Expand cannot bloat the model. Control-flow and non-deterministic ops are never folded.
Delegates to onnxscript's ``FoldConstantsPass``, which evaluates with the ONNX reference runtime
and also simplifies some ops partially (CastLike → Cast, SplitToSequence → Split).
Two of those partial rewrites are wrong in onnxscript 0.7 for some nodes, found by the ONNX
backend suite; such nodes are shielded (moved to a private domain during the fold, then put
back) and logged as skips:
- CastLike with ``saturate = 0``: the Cast it becomes drops the attribute, so out-of-range
  float8 values saturate instead of becoming NaN/inf (castlike_no_saturate_*).
- SplitToSequence whose ``split`` is not a constant: the rewrite raises (split_to_sequence_1).
Semantics: EXACT (the reference evaluation computes what the runtime would, up to rounding).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import onnx_ir as ir
from onnxscript.optimizer._constant_folding import FoldConstantsPass

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes, int_attribute
from qcompiler.passes.delegate import DelegatingPass
from qcompiler.passes.manager import Semantics

DEFAULT_SIZE_LIMIT = 1 << 22
"""Largest input or output (elements) that is folded: a 2048×2048 weight."""

SHIELD_DOMAIN = "qcompiler.shielded"


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

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        with self._shielded(model):
            return super().call(model)

    @contextmanager
    def _shielded(self, model: ir.Model) -> Iterator[None]:
        shielded = [(node, reason) for node in all_nodes(model) if (reason := _mishandled(node))]
        for node, reason in shielded:
            self.log.skip(node, reason)
            node.domain = SHIELD_DOMAIN
        try:
            yield
        finally:
            for node, _ in shielded:
                node.domain = ""


def _mishandled(node: ir.Node) -> str | None:
    """Why onnxscript's partial rewrite of ``node`` would be wrong, or None when it is fine."""
    if node.domain not in ONNX_DOMAINS:
        return None
    if node.op_type == "CastLike" and int_attribute(node, "saturate", 1) == 0:
        return "CastLike with saturate=0: onnxscript's rewrite to Cast would drop saturate"
    if node.op_type == "SplitToSequence" and len(node.inputs) > 1:
        split = node.inputs[1]
        if split is not None and split.const_value is None:
            return "SplitToSequence with a computed split: onnxscript's rewrite would raise"
    return None
