"""expose_outputs: intermediate values become graph outputs ORT returns; compile --expose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompiler.backends.ort.session import run_model
from qcompiler.cli import main
from qcompiler.errors import QCompilerError
from qcompiler.frontends.onnx import load_onnx
from qcompiler.ir.edit import expose_outputs
from tests.graphs import build

# The nodes are named: compile keys its plan by node name.
TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,-2,3,4,5,-6,7,8,9,10,-11,12}> {
    [matmul] hidden = MatMul(x, w)
    [relu] activated = Relu(hidden)
    [mul] y = Mul(activated, hidden)
}
"""


def small_model() -> ir.Model:
    return build(TEXT)


def output_names(model: ir.Model) -> list[str | None]:
    return [v.name for v in model.graph.outputs]


def test_exposed_intermediates_come_back_from_ort_with_their_values() -> None:
    model = expose_outputs(small_model(), ["hidden", "activated"])
    assert output_names(model) == ["y", "hidden", "activated"]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    outputs = run_model(model, {"x": x})
    w = np.array([[1, -2, 3], [4, 5, -6], [7, 8, 9], [10, -11, 12]], np.float32)
    np.testing.assert_allclose(outputs["hidden"], x @ w, rtol=1e-6)
    np.testing.assert_allclose(outputs["activated"], np.maximum(x @ w, 0), rtol=1e-6)
    np.testing.assert_allclose(outputs["y"], outputs["activated"] * outputs["hidden"], rtol=1e-6)


def test_exposing_twice_or_an_existing_output_changes_nothing() -> None:
    model = expose_outputs(small_model(), ["hidden", "y"])
    assert output_names(model) == ["y", "hidden"]
    expose_outputs(model, ["hidden", "hidden"])
    assert output_names(model) == ["y", "hidden"]


def test_a_graph_input_can_be_exposed() -> None:
    model = expose_outputs(small_model(), ["x"])
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(run_model(model, {"x": x})["x"], x)


def test_unknown_name_is_one_line_naming_it_and_the_closest_names() -> None:
    with pytest.raises(QCompilerError) as error:
        expose_outputs(small_model(), ["hiden"])
    message = str(error.value)
    assert "\n" not in message
    assert "cannot expose 'hiden'" in message and "did you mean 'hidden'?" in message


def test_an_initializer_is_not_exposed() -> None:
    with pytest.raises(QCompilerError, match="'w': it is an initializer"):
        expose_outputs(small_model(), ["w"])


def test_compile_expose_makes_the_value_an_output_of_the_compiled_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "small.onnx"
    onnx.save(onnx.parser.parse_model(TEXT), source)
    output = tmp_path / "q.onnx"
    args = ["compile", str(source), "--recipe", "w8-dynamic", "-o", str(output)]
    assert main([*args, "--expose", "activated"]) == 0
    assert output_names(load_onnx(output)) == ["y", "activated"]
    assert output_names(load_onnx(source)) == ["y"]  # the input file is never modified
    capsys.readouterr()
    assert main([*args, "--expose", "activate"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean 'activated'?" in err
