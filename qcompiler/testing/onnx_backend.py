"""ONNX's own backend test suite as input to canonicalization.

The ``onnx`` package ships ~1,900 node test cases (one op, or its function expansion, with inputs
and expected outputs) and ~150 model cases (files under ``onnx/backend/test/data``). They are a
peer's suite: every op at many opsets, sequences, optionals, strings, float8 and int4, control flow
with subgraphs — far more than the graphs our own tests build. Each case goes through
load → canonicalize (the full pipeline) → save → reload, and ONNX Runtime's outputs on the case's
own inputs must not change.

Per case (:func:`run_case`):

1. stock ORT (CPU provider) runs the original model; if it cannot, the case is skipped with the
   reason (:data:`ORT_REASONS`), never silently;
2. ORT's original outputs are compared with the case's expected outputs (the case's rtol/atol); a
   disagreement is ORT's business, recorded in ``stock_matches_expected``, and the case goes on;
3. the model is canonicalized, saved with :func:`save_model_atomic`, reloaded with
   :func:`load_onnx` and run by ORT; its outputs must equal ORT's original outputs within the
   case's tolerance, and the expected outputs too where stock ORT matched them.

Cases with a random op (:func:`nondeterministic_ops`) are canonicalized and run as well, but only
the outputs' nesting, shapes and dtypes are compared; they count as skipped, naming the op.
"""

from __future__ import annotations

import ctypes
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases
from onnx.backend.test.loader import DATA_DIR, load_model_tests
from onnx.backend.test.runner import Runner

from qcompiler.errors import first_line
from qcompiler.frontends.onnx import load_onnx
from qcompiler.ir.io import save_model_atomic
from qcompiler.passes.canonicalize import canonicalization_passes
from qcompiler.passes.manager import PassManager, PipelineResult

Value = np.ndarray | list["Value"] | None
"""One input or output: a tensor, a sequence of values, or an empty optional (None)."""

Status = Literal["passed", "failed", "skipped"]

NODE_KIND = "node"
FILE_KINDS = ("simple", "pytorch-converted", "pytorch-operator")
"""Folders under ``onnx/backend/test/data`` holding ``model.onnx`` + ``test_data_set_N/``."""
LIGHT_KIND = "light"
"""Full-size ImageNet networks whose weights are generated at run time (ConstantOfShape)."""

RANDOM_OPS = frozenset(
    {
        "Bernoulli",
        "Multinomial",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
    }
)
"""Ops whose outputs are random draws: two runs differ, so their values cannot be compared."""

BFLOAT16_RTOL = 2.0**-6
"""Two bfloat16 ULPs: onnx's own runner widens rtol to this for bfloat16 outputs."""

SMALL_MODEL_BYTES = 1 << 20
"""Model-file cases up to this serialized size join the representative sample."""

NPY_USERDEF = 256
"""numpy's first number for user-defined dtypes (the ml_dtypes ones)."""

ORT_REASONS = (
    ("is not a registered function/op", "op not registered in ORT"),
    ("Could not find an implementation for", "no CPU kernel for this op version or dtype"),
    ("Failed to find kernel for", "no CPU kernel for this op version or dtype"),
    ("Exception during initialization", "kernel rejects the node at initialization"),
    ("Non-zero status code returned while running", "kernel fails on the case's inputs"),
)
"""ORT error text → the short reason a skipped case is counted under."""

KNOWN_FAILURES: dict[str, str] = {
    "test_scan_sum": (
        "upgrade-opset refuses on purpose: ONNX's version converter (Scan 8 → 9) would drop "
        "Scan-8's batch axis from the graph's input and output shapes, so the pass raises and "
        "asks for an export at opset ≥ 9"
    ),
}
"""Cases that fail, with the pass and the cause: a bug not yet fixed, or a model a pass refuses on
purpose. Tests mark them xfail(strict), so a case that starts passing fails until its entry is
removed. docs/onnx-backend-suite.md lists them. (The 26 other failures the suite first found were
bugs, fixed in the passes; their docstrings name the cases.)"""


@dataclass(frozen=True)
class DataSet:
    """One run of a case: inputs by graph-input name, expected outputs in graph-output order."""

    inputs: dict[str, Value]
    expected: list[Value]


@dataclass(frozen=True)
class BackendCase:
    """One ONNX backend test case: a model and the data sets it is checked on."""

    name: str
    kind: str
    """``node``, ``light`` or the data folder of a model-file case (``simple``, ...)."""
    model: onnx.ModelProto
    data_sets: list[DataSet]
    rtol: float
    atol: float


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case; cases with equal ``status`` and ``category`` count together."""

    name: str
    status: Status
    category: str
    detail: str = ""
    stock_matches_expected: bool | None = None
    """Whether stock ORT's outputs on the original model matched the case's expected outputs
    (None when ORT could not run the model or its outputs are random)."""
    changed_by: tuple[str, ...] = ()
    """The canonicalization passes that changed the model (empty when it did not get that far)."""


class OrtRunError(Exception):
    """ORT could not load or run a model; ``reason`` is one of :data:`ORT_REASONS`' reasons."""

    def __init__(self, error: Exception) -> None:
        message = first_line(error)
        super().__init__(message)
        self.reason = next(
            (reason for marker, reason in ORT_REASONS if marker in message), type(error).__name__
        )


# ---------------------------------------------------------------------------------------------
# Collecting cases


def collect_cases() -> list[BackendCase]:
    """Every node case and every model-file case shipped with the installed ``onnx`` (~10 s)."""
    cases = node_cases()
    for kind in FILE_KINDS:
        cases.extend(file_cases(kind))
    cases.extend(light_cases())
    return cases


def node_cases() -> list[BackendCase]:
    """The node cases onnx generates in Python; its generators' numpy warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        raw = collect_testcases(None)
    cases = []
    for case in raw:
        assert case.model is not None and case.data_sets is not None
        names = [value.name for value in case.model.graph.input]
        data_sets = [
            DataSet(
                {name: _normalize(x) for name, x in zip(names, inputs, strict=True)},
                [_normalize(y) for y in outputs],
            )
            for inputs, outputs in case.data_sets
        ]
        cases.append(BackendCase(case.name, NODE_KIND, case.model, data_sets, case.rtol, case.atol))
    return cases


def file_cases(kind: str) -> list[BackendCase]:
    """The cases of one data folder: ``input_i.pb`` feeds graph input i, as onnx's runner does."""
    cases = []
    for test in sorted(load_model_tests(kind=kind), key=lambda t: t.name):
        assert test.model_dir is not None
        directory = Path(test.model_dir)
        model = onnx.load(directory / "model.onnx")
        data_sets = [
            _load_data_set(folder, model) for folder in sorted(directory.glob("test_data_set_*"))
        ]
        cases.append(BackendCase(test.name, kind, model, data_sets, test.rtol, test.atol))
    return cases


def light_cases() -> list[BackendCase]:
    """The ``light`` models with the inputs onnx's runner makes for them and its stored outputs.

    ``data/real/*/data.json`` names each model's file and tolerance; the runner feeds
    ``arange(n) / n`` (``Runner.generate_dummy_data(random=False)``) to every graph input that is
    not an initializer and compares with ``light_<model>_output_<i>.pb``.
    """
    cases = []
    for test in sorted(load_model_tests(kind="real"), key=lambda t: t.name):
        assert test.url is not None
        path = Path(DATA_DIR) / LIGHT_KIND / Path(test.url).name
        model = onnx.load(path)
        initializers = {tensor.name for tensor in model.graph.initializer}
        inputs: dict[str, Value] = {
            x.name: Runner.generate_dummy_data(x, seed=0, name=test.model_name, random=False)
            for x in model.graph.input
            if x.name not in initializers
        }
        expected = [
            _load_value(path.with_name(f"{path.stem}_output_{i}.pb"), output.type)
            for i, output in enumerate(model.graph.output)
        ]
        data_set = DataSet(inputs, expected)
        cases.append(BackendCase(test.name, LIGHT_KIND, model, [data_set], test.rtol, test.atol))
    return cases


def _load_data_set(folder: Path, model: onnx.ModelProto) -> DataSet:
    graph = model.graph
    inputs = {
        graph.input[i].name: _load_value(folder / f"input_{i}.pb", graph.input[i].type)
        for i in range(len(list(folder.glob("input_*.pb"))))
    }
    expected = [
        _load_value(folder / f"output_{i}.pb", graph.output[i].type)
        for i in range(len(list(folder.glob("output_*.pb"))))
    ]
    return DataSet(inputs, expected)


def _load_value(path: Path, type_proto: onnx.TypeProto) -> Value:
    """A serialized tensor, sequence or optional, parsed as the graph's type for it says."""
    payload = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(payload)
        return _normalize(numpy_helper.to_list(sequence))
    if type_proto.HasField("optional_type"):
        optional = onnx.OptionalProto()
        optional.ParseFromString(payload)
        return _normalize(numpy_helper.to_optional(optional))
    tensor = onnx.TensorProto()
    tensor.ParseFromString(payload)
    return numpy_helper.to_array(tensor)


def _normalize(value: object) -> Value:
    """Node cases hold arrays, numpy scalars, TensorProtos, lists and None; make them Values."""
    if value is None:
        return None
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list | tuple):
        return [_normalize(x) for x in value]
    return np.asarray(value)


# ---------------------------------------------------------------------------------------------
# Choosing a sample


def op_under_test(case: BackendCase) -> str:
    """The op a case is about: for a function expansion the expanded op, else the first node's.

    onnx names the values inside an expansion ``<Op>_<case name>_expanded_function_*`` (op types
    have no underscore), so ``test_gelu_tanh_1_expanded`` is keyed ``Gelu (expanded)``.
    """
    graph = case.model.graph
    for node in graph.node:
        for name in node.output:
            if "_expanded_function_" in name:
                return f"{name.split('_', 1)[0]} (expanded)"
    return graph.node[0].op_type if graph.node else "<empty>"


def representative_sample(cases: Iterable[BackendCase], per_op: int = 1) -> list[BackendCase]:
    """``per_op`` node cases per tested op (expansions apart), plus the small model-file cases.

    The ``light`` models are excluded: their files are small, but they are full-size networks.
    """
    by_op: dict[str, list[BackendCase]] = defaultdict(list)
    files: list[BackendCase] = []
    for case in cases:
        if case.kind == NODE_KIND:
            group = by_op[op_under_test(case)]
            if len(group) < per_op:
                group.append(case)
        elif case.kind != LIGHT_KIND and case.model.ByteSize() <= SMALL_MODEL_BYTES:
            files.append(case)
    return [case for group in by_op.values() for case in group] + files


# ---------------------------------------------------------------------------------------------
# Running one case


def run_case(case: BackendCase) -> CaseOutcome:
    """Run ``case`` through canonicalization and compare ORT's outputs before and after."""
    try:
        reference = _reference(case)
    except OrtRunError as error:
        return CaseOutcome(case.name, "skipped", f"ORT cannot run it ({error.reason})", str(error))
    matches = reference.matches_expected
    try:
        canonical, changed_by = canonicalize_roundtrip(case.model)
    except Exception as error:
        return CaseOutcome(
            case.name, "failed", "canonicalization raised", first_line(error), matches
        )
    try:
        after = _run_data_sets(canonical, case)
    except OrtRunError as error:
        category = "ORT cannot run the canonicalized model"
        return CaseOutcome(case.name, "failed", category, str(error), matches)
    return replace(_judge(case, reference, after), changed_by=changed_by)


def nondeterministic_ops(model: onnx.ModelProto) -> list[str]:
    """The random ops in ``model``, subgraphs included.

    Dropout counts when it is given a ``training_mode`` input (the backend cases feed True; a
    case with ``ratio`` 0 is deterministic but is counted too, as the ratio is a run-time input).
    """
    found = {
        node.op_type
        for node in _all_nodes(model.graph)
        if node.op_type in RANDOM_OPS
        or (node.op_type == "Dropout" and len(node.input) > 2 and node.input[2])
    }
    return sorted(found)


def canonicalize_roundtrip(model: onnx.ModelProto) -> tuple[bytes, tuple[str, ...]]:
    """load → canonicalize → save atomically → reload: the reloaded model, serialized, and the
    passes that changed it."""
    ir_model = load_onnx(model)
    result = PassManager(canonicalization_passes())(ir_model)
    assert isinstance(result, PipelineResult)
    with tempfile.TemporaryDirectory(prefix="qcompiler-backend-") as directory:
        path = save_model_atomic(ir_model, Path(directory) / "model.onnx")
        payload = ir.to_proto(load_onnx(path)).SerializeToString()
    return payload, tuple(record.name for record in result.records if record.modified)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*subgraphs, *attribute.graphs]:
                yield from _all_nodes(subgraph)


def _run_data_sets(payload: bytes, case: BackendCase) -> list[dict[str, Value]]:
    """ORT's outputs by name for every data set of ``case``, on the serialized model.

    One intra-op thread: two runs of one graph are then bit-identical, so a difference comes from
    the graph, not from the order of a parallel reduction.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        return [_run_once(session, data_set.inputs) for data_set in case.data_sets]
    except Exception as error:
        raise OrtRunError(error) from error


def _run_once(session: ort.InferenceSession, inputs: Mapping[str, Value]) -> dict[str, Value]:
    """Graphs of numeric tensors run through OrtValues, so that bfloat16, float8 and int4 pass both
    ways; graphs with strings, sequences or optionals use ``run`` (which returns lists and None,
    and is the only way strings go in)."""
    names = [output.name for output in session.get_outputs()]
    ports = [*session.get_inputs(), *session.get_outputs()]
    results: list[Value]
    if all(port.type.startswith("tensor(") and port.type != "tensor(string)" for port in ports):
        feeds = {name: _to_ort(value) for name, value in inputs.items()}
        results = [_from_ort(v) for v in session.run_with_ort_values(names, feeds)]
    else:
        results = [_normalize(v) for v in session.run(names, dict(inputs))]
    return dict(zip(names, results, strict=True))


def _to_ort(value: Value) -> ort.OrtValue:
    """A tensor as an OrtValue; ml_dtypes ones (no numpy type number) are copied as raw bytes."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"a tensor input was given {type(value).__name__}")
    if not _is_ml_dtype(value.dtype):
        return ort.OrtValue.ortvalue_from_numpy(value)
    tensor = numpy_helper.from_array(value)
    ort_value = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), tensor.data_type)
    ctypes.memmove(ort_value.data_ptr(), tensor.raw_data, len(tensor.raw_data))
    return ort_value


def _from_ort(value: ort.OrtValue) -> np.ndarray:
    """An output tensor; ml_dtypes ones are read as raw bytes and decoded by onnx's helper."""
    element_type = value.element_type()
    if not _is_ml_dtype(onnx.helper.tensor_dtype_to_np_dtype(element_type)):
        return np.asarray(value.numpy())
    tensor = onnx.TensorProto(data_type=element_type, dims=value.shape())
    tensor.raw_data = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
    return numpy_helper.to_array(tensor)


def _is_ml_dtype(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is an ml_dtypes type (bfloat16, float8, int4, ...), which ORT's numpy
    bridge does not know: numpy numbers user-defined types from 256 (``NPY_USERDEF``) on."""
    return dtype.num >= NPY_USERDEF


@dataclass(frozen=True)
class _Reference:
    """Stock ORT's outputs on the original model, per data set, and how they relate to the case."""

    outputs: list[dict[str, Value]]
    random_ops: list[str]
    disagreement: str | None
    """How stock ORT's outputs differ from the expected ones (None if they match or are random)."""

    @property
    def matches_expected(self) -> bool | None:
        return None if self.random_ops else self.disagreement is None


def _reference(case: BackendCase) -> _Reference:
    outputs = _run_data_sets(case.model.SerializeToString(), case)
    random_ops = nondeterministic_ops(case.model)
    disagreement = None
    if not random_ops:
        problems = (
            _mismatch(list(values.values()), data_set.expected, case.rtol, case.atol)
            for values, data_set in zip(outputs, case.data_sets, strict=True)
        )
        disagreement = next((p for p in problems if p), None)
    return _Reference(outputs, random_ops, disagreement)


def _judge(
    case: BackendCase, reference: _Reference, after: Sequence[Mapping[str, Value]]
) -> CaseOutcome:
    """Compare the canonicalized model's outputs with the original's (and the expected ones)."""
    matches = reference.matches_expected
    for index, now in enumerate(after):
        category, problem = _compare(case, reference, index, now)
        if problem:
            detail = f"data set {index}: {problem}"
            return CaseOutcome(case.name, "failed", category, detail, matches)
    if reference.random_ops:
        ops = ", ".join(reference.random_ops)
        detail = f"{ops}; outputs compared by nesting, shape and dtype only"
        return CaseOutcome(case.name, "skipped", "nondeterministic op", detail)
    if reference.disagreement:
        category = "stock ORT disagrees with expected"
        return CaseOutcome(case.name, "passed", category, reference.disagreement, matches)
    return CaseOutcome(case.name, "passed", "outputs unchanged", "", matches)


def _compare(
    case: BackendCase, reference: _Reference, index: int, now: Mapping[str, Value]
) -> tuple[str, str | None]:
    """The failure category and what differs in data set ``index``, or ``(_, None)``."""
    before = reference.outputs[index]
    if list(before) != list(now):
        return "graph outputs changed", f"outputs {list(before)} became {list(now)}"
    if reference.random_ops:
        return "outputs changed", _layout_mismatch(list(now.values()), list(before.values()))
    problem = _mismatch(list(now.values()), list(before.values()), case.rtol, case.atol)
    if problem:
        return "outputs changed", problem
    if reference.matches_expected:
        expected = case.data_sets[index].expected
        problem = _mismatch(list(now.values()), expected, case.rtol, case.atol)
        return "canonicalized model differs from expected", problem
    return "", None


# ---------------------------------------------------------------------------------------------
# Comparing outputs


def _mismatch(
    actual: Sequence[Value], expected: Sequence[Value], rtol: float, atol: float
) -> str | None:
    """Why ``actual`` differs from ``expected`` position by position, or None when it does not."""
    if len(actual) != len(expected):
        return f"{len(actual)} values, expected {len(expected)}"
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        problem = _value_mismatch(a, e, rtol, atol)
        if problem:
            return f"output {index}: {problem}"
    return None


def _value_mismatch(actual: Value, expected: Value, rtol: float, atol: float) -> str | None:
    if actual is None or expected is None:
        return None if actual is None and expected is None else "empty optional vs a value"
    if isinstance(actual, list) or isinstance(expected, list):
        if not (isinstance(actual, list) and isinstance(expected, list)):
            return "sequence vs tensor"
        return _mismatch(actual, expected, rtol, atol)
    return _array_mismatch(actual, expected, rtol, atol)


def _array_mismatch(
    actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float
) -> str | None:
    """Shape and dtype must match; integers, bools and strings exactly; floats within rtol/atol.

    NaN equals NaN. bfloat16 gets ``BFLOAT16_RTOL`` as in onnx's runner; the other ml_dtypes
    (float8, int4) are compared as their float64 values.
    """
    if actual.shape != expected.shape:
        return f"shape {actual.shape} vs {expected.shape}"
    if actual.dtype != expected.dtype:
        return f"dtype {actual.dtype} vs {expected.dtype}"
    if actual.dtype.kind in "biuOSU":
        if np.array_equal(actual, expected):
            return None
        return f"{int(np.sum(actual != expected))} of {actual.size} elements differ"
    if actual.dtype.name == "bfloat16":
        rtol = max(rtol, BFLOAT16_RTOL)
    wide = np.complex128 if actual.dtype.kind == "c" else np.float64
    a, e = actual.astype(wide), expected.astype(wide)
    close = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return None
    diff = np.abs(a - e)[~close]
    finite = diff[np.isfinite(diff)]
    worst = f"max abs diff {float(finite.max()):.3g}" if finite.size else "NaN/inf vs a number"
    return f"{int(np.sum(~close))} of {a.size} elements differ ({worst})"


def _layout_mismatch(actual: Sequence[Value], expected: Sequence[Value]) -> str | None:
    """Compare nesting, shapes and dtypes only (for random outputs)."""
    a, e = _layout(list(actual)), _layout(list(expected))
    return None if a == e else f"layout {a} vs {e}"


def _layout(value: Value) -> object:
    if value is None:
        return None
    if isinstance(value, list):
        return [_layout(x) for x in value]
    return (value.shape, value.dtype.name)
