"""Upgrade the default-domain opset, explicitly and logged.

Matches: models whose ONNX opset is below ``target``. Fused ops need new opsets
(LayerNormalization ≥ 17, Gelu ≥ 20, RMSNormalization ≥ 23; onnxscript's LayerNorm pattern needs
the opset-18 ReduceMean with ``axes`` as an input), so canonicalization upgrades first.

Math: none; each op is rewritten to its newer version by onnxscript's version converter, falling
back to the ONNX C API converter for steps it lacks. Never downgrades.
Semantics: EXACT (measured 14 → 20 on DINOv2: normwise output change 4.5e-8).
Logs: a note "opset A → B" on every upgrade; nothing changes when the model is at ``target`` or
above.
Refuses: Scan below opset 9. The ONNX converter's Scan 8 → 9 adapter drops Scan-8's batch axis
from the graph's input and output shapes, so the upgraded model computes something else (found
by the ONNX backend suite: scan_sum); the error names the node and asks for a newer export.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript import version_converter

from qcompiler.ir.graph import ONNX_DOMAINS, all_nodes, onnx_opset
from qcompiler.passes.manager import NodeError, Pass, Semantics

SCAN_BATCH_AXIS_DROPPED_BELOW = 9


class UpgradeOpset(Pass):
    name = "upgrade-opset"
    semantics = Semantics.EXACT

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = onnx_opset(model)
        if current >= self.target:
            return ir.passes.PassResult(model, modified=False)
        if current < SCAN_BATCH_AXIS_DROPPED_BELOW:
            for node in all_nodes(model):
                if node.op_type == "Scan" and node.domain in ONNX_DOMAINS:
                    raise NodeError(
                        node,
                        f"Scan-8 cannot be upgraded to opset {self.target}: ONNX's version "
                        "converter drops its batch axis; re-export the model at opset ≥ 9",
                    )
        version_converter.convert_version(model, self.target, fallback=True)
        reached = onnx_opset(model)
        if reached != self.target:
            raise RuntimeError(
                f"the version converter stopped at opset {reached}, not {self.target}"
            )
        self.log.note(f"opset {current} → {reached}")
        self.log.count("opset_upgrades")
        return ir.passes.PassResult(model, modified=True)
