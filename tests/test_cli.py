"""CLI behaviour: one-line errors with exit code 2, inputs never modified, atomic outputs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompiler.cli import main

SMALL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,2,3,4,5,6,7,8,9,10,11,12}> {
    c = Constant <value = float {1.4142135}> ()
    h = MatMul(x, w)
    s = Div(h, c)
    e = Erf(s)
    y = Mul(e, h)
}
"""


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    path = tmp_path / "small.onnx"
    onnx.save(onnx.parser.parse_model(SMALL), path)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qcompiler: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["canonicalize", str(tmp_path / "nope.onnx"), "-o", "o.onnx"], capsys)
    assert_one_line_error(code, err, "no such file")


def test_directory_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["canonicalize", str(tmp_path), "-o", str(tmp_path / "o.onnx")], capsys)
    assert_one_line_error(code, err, "is a directory")


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["inspect", "--frobnicate"], capsys)
    assert_one_line_error(code, err, "--frobnicate")


def test_file_that_is_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for")
    code, _, err = run_cli(["canonicalize", str(path), "-o", str(tmp_path / "o.onnx")], capsys)
    assert_one_line_error(code, err, "not a readable ONNX model")


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    code, _, err = run_cli(["canonicalize", str(path), "-o", str(tmp_path / "o.onnx")], capsys)
    assert_one_line_error(code, err, "not an ONNX model")


def test_truncated_model(
    small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = small_model.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    code, _, err = run_cli(["canonicalize", str(truncated), "-o", str(tmp_path / "o.onnx")], capsys)
    assert_one_line_error(code, err, "truncated")


def save_with_external_data(tmp_path: Path) -> tuple[Path, Path]:
    model = ir.from_proto(onnx.parser.parse_model(SMALL))
    path = tmp_path / "ext.onnx"
    ir.save(model, path, external_data="ext.onnx.data", size_threshold_bytes=0)
    return path, tmp_path / "ext.onnx.data"


def test_missing_external_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, data = save_with_external_data(tmp_path)
    data.unlink()
    code, _, err = run_cli(["canonicalize", str(path), "-o", str(tmp_path / "o.onnx")], capsys)
    assert_one_line_error(code, err, "external data file 'ext.onnx.data'", "is missing")


def test_truncated_external_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, data = save_with_external_data(tmp_path)
    data.write_bytes(data.read_bytes()[:10])
    code, _, err = run_cli(["canonicalize", str(path), "-o", str(tmp_path / "o.onnx")], capsys)
    assert_one_line_error(code, err, "is shorter than initializer")


def test_model_and_example_together(small_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["inspect", str(small_model), "--example", "minilm"], capsys)
    assert_one_line_error(code, err, "either a MODEL path or --example NAME")


def test_unknown_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["inspect", "--example", "resnet9000"], capsys)
    assert_one_line_error(code, err, "resnet9000", "minilm")


def test_canonicalize_writes_atomically_and_never_touches_the_input(
    small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = hashlib.sha256(small_model.read_bytes()).hexdigest()
    output = tmp_path / "out" / "canonical.onnx"
    code, out, _ = run_cli(
        ["canonicalize", str(small_model), "-o", str(output), "--verify"], capsys
    )
    assert code == 0, out
    assert hashlib.sha256(small_model.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in output.parent.iterdir()) == ["canonical.onnx"]
    canonical = onnx.load(output)
    assert canonical.opset_import[0].version == 21
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    import onnxruntime as ort

    before = ort.InferenceSession(str(small_model)).run(None, {"x": x})[0]
    after = ort.InferenceSession(str(output)).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "canonicalize", str(tmp_path / "nope.onnx"), "-o", "o.onnx"])


def test_console_script_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qcompiler.cli", "inspect", str(tmp_path / "missing.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("qcompiler: error:")
    assert "Traceback" not in result.stderr


def test_large_models_are_saved_with_external_data_and_reload_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qcompiler.frontends.onnx import load_onnx
    from qcompiler.ir import io

    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = ir.from_proto(onnx.helper.make_model(graph))
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 0)  # what a > 1 GB model gets
    written = io.save_model_atomic(model, tmp_path / "out" / "big.onnx")
    assert sorted(p.name for p in written.parent.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert written.stat().st_size < weight.nbytes  # the weight is not in the protobuf
    stored = load_onnx(written).graph.initializers["w"].const_value
    assert isinstance(stored, ir.ExternalTensor)  # memory-mapped on load
    np.testing.assert_array_equal(stored.numpy(), weight)
