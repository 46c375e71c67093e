"""Canonicalization: bring any imported graph to one form later passes can match (EXACT).

The pipeline, in order:

1. ``upgrade-opset``: to ``target_opset`` (default 21), logged; never downgrades.
2. ``explicit-attributes``: default attribute values written out (pattern rules see one form).
3. ``simplify``, run to a fixed point: ``name-nodes`` (unique names: plans and reports key on
   them), ``lift-constants`` (Constant nodes, from the exporter or
   from folding, become initializers, so weights held in Constant nodes are visible to later
   passes), ``infer-shapes``, ``fold-constants``, ``eliminate-identities``,
   ``eliminate-dead-code``. These enable each other (a folded Cast makes a shape static, which
   lets a Shape → Slice chain fold), hence the fixed point.
4. ``fuse-layer-norm``, ``fuse-gelu`` and, at opset ≥ 23, ``fuse-rms-norm``.
5. ``simplify`` again: what the fusions left unused goes, the fused values get shapes.

Running the pipeline on its own output changes nothing (tested).

Opset 21 is the default target: it has LayerNormalization and Gelu, and Q/DQ with int4 and
``block_size`` that the quantization passes emit. RMSNormalization needs 23; pass
``target_opset=23`` for decoder models (the pipeline then fuses RMSNorm too).
"""

from __future__ import annotations

from qcompiler.passes.canonicalize.constant_folding import FoldConstants
from qcompiler.passes.canonicalize.dead_code import EliminateDeadCode
from qcompiler.passes.canonicalize.explicit_attributes import MakeDefaultAttributesExplicit
from qcompiler.passes.canonicalize.fuse_gelu import FuseGelu
from qcompiler.passes.canonicalize.fuse_layer_norm import FuseLayerNorm
from qcompiler.passes.canonicalize.fuse_rms_norm import FuseRmsNorm
from qcompiler.passes.canonicalize.identity_elimination import EliminateIdentities
from qcompiler.passes.canonicalize.lift_constants import LiftConstantsToInitializers
from qcompiler.passes.canonicalize.naming import NameNodesAndValues
from qcompiler.passes.canonicalize.opset_upgrade import UpgradeOpset
from qcompiler.passes.canonicalize.shape_inference import InferShapes
from qcompiler.passes.manager import FixedPoint, Pass

DEFAULT_TARGET_OPSET = 21

__all__ = [
    "DEFAULT_TARGET_OPSET",
    "EliminateDeadCode",
    "EliminateIdentities",
    "FoldConstants",
    "FuseGelu",
    "FuseLayerNorm",
    "FuseRmsNorm",
    "InferShapes",
    "LiftConstantsToInitializers",
    "MakeDefaultAttributesExplicit",
    "NameNodesAndValues",
    "UpgradeOpset",
    "canonicalization_passes",
    "simplification",
]


def canonicalization_passes(target_opset: int = DEFAULT_TARGET_OPSET) -> list[Pass]:
    """The canonicalization pipeline for a model brought to ``target_opset`` (≥ 20)."""
    if target_opset < FuseGelu.min_opset:
        raise ValueError(
            f"canonicalization targets opset ≥ {FuseGelu.min_opset}, got {target_opset}"
        )
    fusions: list[Pass] = [FuseLayerNorm(), FuseGelu()]
    if target_opset >= FuseRmsNorm.min_opset:
        fusions.append(FuseRmsNorm())
    return [
        UpgradeOpset(target_opset),
        MakeDefaultAttributesExplicit(),
        simplification(),
        *fusions,
        simplification(),
    ]


def simplification() -> FixedPoint:
    """The EXACT clean-up passes, iterated until a whole round changes nothing."""
    return FixedPoint(
        "simplify",
        [
            NameNodesAndValues(),
            LiftConstantsToInitializers(),
            InferShapes(),
            FoldConstants(),
            EliminateIdentities(),
            EliminateDeadCode(),
        ],
    )
