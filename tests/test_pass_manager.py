"""The pass manager's contract: records, analyses, verification, errors, instruments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qcompiler.passes.manager import (
    Analysis,
    AnalysisManager,
    DumpAfterChange,
    FixedPoint,
    NodeError,
    Pass,
    PassFailure,
    PassManager,
    Semantics,
)
from tests.graphs import build

ADD_ONE = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2,3] x) => (float[2,3] y) {
    one = Constant <value = float {1.0}> ()
    y = Add(x, one)
}
"""


class CountNodes(Analysis[int]):
    @classmethod
    def compute(cls, model: ir.Model, analyses: AnalysisManager) -> int:
        return len(model.graph)


class ScaleConstants(Pass):
    """Multiplies every Constant's value by ``factor``; EXACT only when factor == 1."""

    name = "scale-constants"
    semantics = Semantics.EXACT

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        changed = False
        for node in model.graph:
            if node.op_type == "Constant" and self.factor != 1.0:
                value = node.attributes["value"].as_tensor().numpy() * self.factor
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(value))
                self.log.count("constants_scaled")
                changed = True
        return ir.passes.PassResult(model, modified=changed)


class LossyScale(ScaleConstants):
    name = "lossy-scale"
    semantics = Semantics.LOSSY


class UsesCount(Pass):
    """Reads the CountNodes analysis; changes nothing."""

    name = "uses-count"
    semantics = Semantics.EXACT
    required_analyses = (CountNodes,)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.log.count("nodes_seen", self.analysis(CountNodes, model))
        return ir.passes.PassResult(model, modified=False)


class FailsOnNode(Pass):
    name = "fails-on-node"
    semantics = Semantics.EXACT

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        node = next(n for n in model.graph if n.op_type == "Add")
        raise NodeError(node, "cannot handle this Add")


class NeedsOpset99(Pass):
    name = "needs-opset-99"
    semantics = Semantics.EXACT

    def requires(self, model: ir.Model) -> None:
        raise ir.passes.PreconditionError("needs-opset-99 needs ONNX opset ≥ 99")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


class BreaksChecker(Pass):
    """Renames the Add to an op that does not exist: the ONNX checker must catch it."""

    name = "breaks-checker"
    semantics = Semantics.EXACT

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        next(n for n in model.graph if n.op_type == "Add").op_type = "NoSuchOp"
        return ir.passes.PassResult(model, modified=True)


def test_records_say_exactly_what_changed() -> None:
    model = build(ADD_ONE)
    result = PassManager([ScaleConstants(1.0), ScaleConstants(2.0)])(model)
    assert result.modified
    assert [r.modified for r in result.records] == [False, True]
    assert result.records[1].counters == {"constants_scaled": 1}
    assert result.counters() == {"constants_scaled": 1}
    assert all(r.seconds >= 0 and r.peak_rss_mb > 0 for r in result.records)


def test_analysis_is_cached_until_a_pass_changes_the_graph() -> None:
    model = build(ADD_ONE)
    manager = PassManager([UsesCount(), UsesCount(), ScaleConstants(2.0), UsesCount()])
    result = manager(model)
    assert [r.counters.get("nodes_seen") for r in result.records] == [2, 2, None, 2]
    # computed for the first pass, reused by the second, recomputed after the change
    assert manager.analyses.computed["CountNodes"] == 2


def test_preserved_analysis_survives_a_change() -> None:
    class ScalePreservingCount(ScaleConstants):
        preserved_analyses = (CountNodes,)

    model = build(ADD_ONE)
    manager = PassManager([UsesCount(), ScalePreservingCount(2.0), UsesCount()])
    manager(model)
    assert manager.analyses.computed["CountNodes"] == 1


def test_verify_each_catches_a_broken_exact_contract_and_names_the_history() -> None:
    model = build(ADD_ONE)
    manager = PassManager([UsesCount(), ScaleConstants(3.0)], verify_each=True)
    with pytest.raises(PassFailure) as failure:
        manager(model)
    message = str(failure.value)
    assert "pass 'scale-constants' failed" in message
    assert "exact contract broken on output 'y'" in message
    assert "passes run before: uses-count" in message


def test_verify_each_records_lossy_error_without_failing() -> None:
    model = build(ADD_ONE)
    feeds = {"x": np.zeros((2, 3), np.float32)}
    result = PassManager([LossyScale(3.0)], verify_each=True, verify_feeds=feeds)(model)
    # x = 0: y goes from 1 to 3, a normwise error of exactly 2
    assert result.records[0].output_errors == {"y": pytest.approx(2.0)}


def test_verify_each_runs_the_onnx_checker() -> None:
    model = build(ADD_ONE)
    with pytest.raises(PassFailure, match=r"breaks-checker.*ONNX checker"):
        PassManager([BreaksChecker()], verify_each=True)(model)


def test_error_names_pass_node_and_history() -> None:
    model = build(ADD_ONE)
    with pytest.raises(PassFailure) as failure:
        PassManager([ScaleConstants(1.0), FailsOnNode()])(model)
    assert failure.value.pass_name == "fails-on-node"
    assert failure.value.node is not None
    assert failure.value.history == ["scale-constants"]
    assert "cannot handle this Add" in str(failure.value)


def test_precondition_error_names_the_pass_and_what_is_missing() -> None:
    model = build(ADD_ONE)
    with pytest.raises(PassFailure, match=r"needs-opset-99.*opset ≥ 99"):
        PassManager([NeedsOpset99()])(model)


def test_dump_after_change_writes_only_changed_models(tmp_path: Path) -> None:
    model = build(ADD_ONE)
    PassManager(
        [ScaleConstants(1.0), ScaleConstants(2.0)], instruments=[DumpAfterChange(tmp_path)]
    )(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["02-scale-constants.onnx"]


def test_fixed_point_runs_until_a_round_changes_nothing() -> None:
    class HalveUntilSmall(Pass):
        name = "halve"
        semantics = Semantics.APPROX

        def call(self, model: ir.Model) -> ir.passes.PassResult:
            node = next(n for n in model.graph if n.op_type == "Constant")
            value = node.attributes["value"].as_tensor().numpy()
            if value.item() < 0.2:
                return ir.passes.PassResult(model, modified=False)
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(value / 2))
            return ir.passes.PassResult(model, modified=True)

    model = build(ADD_ONE)
    fixed = FixedPoint("halve-loop", [HalveUntilSmall(), UsesCount()])
    result = PassManager([fixed])(model)
    # 1 → 0.5 → 0.25 → 0.125: three rounds changed the model, the fourth did not
    assert result.records[0].counters["rounds"] == 3
    assert fixed.semantics is Semantics.APPROX
    assert PassManager([FixedPoint("again", [HalveUntilSmall()])])(model).modified is False
