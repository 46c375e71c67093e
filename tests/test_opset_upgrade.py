"""upgrade-opset: explicit, logged, never downgrades."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir.graph import onnx_opset
from qcompiler.passes.canonicalize import UpgradeOpset
from qcompiler.passes.manager import EXACT_TOLERANCE, PassFailure, PassManager
from tests.graphs import build, max_normwise_error, outputs, snapshot

OPSET_14 = """
<ir_version: 7, opset_import: ["" : 14]>
g (float[N, 6] x) => (float[N, 1] y, float[N, 6] z) {
    y = ReduceMean <axes = [-1], keepdims = 1> (x)
    z = Softmax <axis = -1> (x)
}
"""
FEEDS = {"x": np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)}


def test_upgrades_and_logs_the_step() -> None:
    model = build(OPSET_14)
    before = outputs(model, FEEDS)
    result = PassManager([UpgradeOpset(21)])(model)
    assert onnx_opset(model) == 21
    assert result.records[0].notes == ["opset 14 → 21"]
    # ReduceMean-18 takes axes as an input now
    reduce_mean = next(n for n in model.graph if n.op_type == "ReduceMean")
    assert len(reduce_mean.inputs) == 2
    assert max_normwise_error(before, outputs(model, FEEDS)) <= EXACT_TOLERANCE


def test_never_downgrades_and_is_idempotent() -> None:
    model = build(
        OPSET_14.replace('"" : 14', '"" : 23')
        .replace("ir_version: 7", "ir_version: 10")
        .replace("<axes = [-1], keepdims = 1> (x)", "<keepdims = 1> (x, axes)")
        .replace("(float[N, 6] x)", "(float[N, 6] x, int64[1] axes)")
    )
    picture = snapshot(model)
    upgrade = UpgradeOpset(21)
    assert upgrade(model).modified is False
    assert upgrade.log.notes == []
    assert snapshot(model) == picture
    model = build(OPSET_14)
    UpgradeOpset(21)(model)
    picture = snapshot(model)
    assert UpgradeOpset(21)(model).modified is False
    assert snapshot(model) == picture


SCAN_8 = """
<ir_version: 4, opset_import: ["" : 8]>
g (float[1, 2] initial, float[1, 3, 2] xs) => (float[1, 2] total, float[1, 3, 2] partial) {
    total, partial = Scan <num_scan_inputs = 1, body = step (float[2] state, float[2] x)
                                                  => (float[2] next, float[2] out) {
        next = Add(state, x)
        out = Identity(next)
    }> ("", initial, xs)
}
"""


def test_scan_8_is_refused_with_the_node_and_the_remedy() -> None:
    model = build(SCAN_8)
    with pytest.raises(PassFailure) as failure:
        PassManager([UpgradeOpset(21)])(model)
    assert failure.value.pass_name == "upgrade-opset"
    assert failure.value.node is not None
    assert "re-export the model at opset ≥ 9" in str(failure.value)
    assert onnx_opset(model) == 8
