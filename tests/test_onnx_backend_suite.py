"""ONNX's backend test cases through canonicalization: ORT's outputs must not change.

The default run takes one node case per tested op (function expansions apart) and every small
model-file case (~380 cases, ~15 s here); ``-m slow`` runs all ~2,000. Each case is its own test
item, so a failure names the case, the stage and what differed. Cases ORT cannot run, and cases
with random ops, are skipped with their reason. Cases broken by a known bug in a pass are
xfail(strict) with the bug (``KNOWN_FAILURES``, listed in docs/onnx-backend-suite.md).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from onnx import TensorProto, helper

from qcompiler.testing import onnx_backend
from qcompiler.testing.onnx_backend import (
    FILE_KINDS,
    KNOWN_FAILURES,
    NODE_KIND,
    BackendCase,
    DataSet,
    collect_cases,
    op_under_test,
    representative_sample,
    run_case,
)


@functools.cache
def _cases() -> dict[str, BackendCase]:
    return {case.name: case for case in collect_cases()}


def _params(cases: list[BackendCase]) -> list[object]:
    """One param per case; known failures carry a strict xfail with the bug as the reason."""
    return [
        pytest.param(
            case.name,
            id=case.name,
            marks=[pytest.mark.xfail(reason=KNOWN_FAILURES[case.name], strict=True)]
            if case.name in KNOWN_FAILURES
            else [],
        )
        for case in cases
    ]


def _check(name: str) -> None:
    outcome = run_case(_cases()[name])
    if outcome.status == "skipped":
        pytest.skip(f"{outcome.category}: {outcome.detail}")
    assert outcome.status == "passed", f"{outcome.category}: {outcome.detail}"


@pytest.mark.parametrize("name", _params(representative_sample(_cases().values())))
def test_sampled_case_unchanged_by_canonicalization(name: str) -> None:
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", _params(list(_cases().values())))
def test_every_case_unchanged_by_canonicalization(name: str) -> None:
    _check(name)


def test_known_failures_name_existing_cases() -> None:
    """A renamed or removed case must not leave a stale entry behind."""
    assert set(KNOWN_FAILURES) <= set(_cases())


def test_sample_covers_every_tested_op_and_file_case() -> None:
    """One node case per tested op; every model-file case (all are small), no light model."""
    cases = list(_cases().values())
    sample = representative_sample(cases)
    node_ops = {op_under_test(case) for case in cases if case.kind == NODE_KIND}
    assert sorted(op_under_test(case) for case in sample if case.kind == NODE_KIND) == sorted(
        node_ops
    )
    sampled_files = {case.name for case in sample if case.kind != NODE_KIND}
    assert sampled_files == {case.name for case in cases if case.kind in FILE_KINDS}


# The harness itself: each verdict on a one-node case whose result is known.


def _tiny_case(expected: np.ndarray, op: str = "Add", domain: str = "") -> BackendCase:
    """y = op(x, x) on x = [0, 1, NaN], expecting ``expected``."""
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "x"], ["y"], domain=domain)],
        "tiny",
        [tensor("x", TensorProto.FLOAT, [3])],
        [tensor("y", TensorProto.FLOAT, [3])],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("custom.domain", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    x = np.array([0.0, 1.0, np.nan], np.float32)
    return BackendCase("tiny", NODE_KIND, model, [DataSet({"x": x}, [expected])], 1e-3, 1e-7)


DOUBLED = np.array([0.0, 2.0, np.nan], np.float32)


def test_harness_passes_unchanged_outputs_with_nan() -> None:
    outcome = run_case(_tiny_case(DOUBLED))
    assert (outcome.status, outcome.category) == ("passed", "outputs unchanged")
    assert outcome.stock_matches_expected is True


def test_harness_records_stock_ort_disagreeing_with_expected() -> None:
    outcome = run_case(_tiny_case(DOUBLED + 1))
    assert (outcome.status, outcome.category) == ("passed", "stock ORT disagrees with expected")
    assert outcome.stock_matches_expected is False


def test_harness_fails_when_canonicalization_changes_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subtracting = _tiny_case(DOUBLED, op="Sub").model.SerializeToString()
    monkeypatch.setattr(onnx_backend, "canonicalize_roundtrip", lambda _: (subtracting, ()))
    outcome = run_case(_tiny_case(DOUBLED))
    assert (outcome.status, outcome.category) == ("failed", "outputs changed")
    assert "1 of 3 elements differ" in outcome.detail


def test_harness_fails_when_ort_cannot_run_the_canonicalized_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(onnx_backend, "canonicalize_roundtrip", lambda _: (b"not onnx", ()))
    outcome = run_case(_tiny_case(DOUBLED))
    assert (outcome.status, outcome.category) == (
        "failed",
        "ORT cannot run the canonicalized model",
    )


def test_harness_skips_a_model_ort_cannot_run_with_the_reason() -> None:
    outcome = run_case(_tiny_case(DOUBLED, op="Foo", domain="custom.domain"))
    assert outcome.status == "skipped"
    assert outcome.category == "ORT cannot run it (op not registered in ORT)"
