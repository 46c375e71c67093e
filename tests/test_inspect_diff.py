"""diff_models, its rich tables and ``qcompiler inspect A B``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from rich.console import Console

from qcompiler.api import canonicalize
from qcompiler.examples import example_path
from qcompiler.frontends.onnx import load_onnx
from qcompiler.inspect.diff import SCHEMA, diff_models
from qcompiler.inspect.diff_render import ROW_LIMIT, render_diff
from tests.graphs import build
from tests.test_cli import assert_one_line_error, run_cli

HEADER = '<ir_version: 10, opset_import: ["" : {opset}]>\n'
SIGNATURE = "g (float[N, 4] x) => (float[{out}] y)\n"
W = "float[4, 3] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}"
B = "float[3] b = {1, 2, 3}"
BODY = """{
  [mm] h = MatMul (x, w)
  [add] s = Add (h, b)
  [act] y = LeakyRelu <alpha = 0.1> (s)
}
"""


def model(
    body: str = BODY, *, opset: int = 21, out: str = "N, 3", initializers: str = f"{W}, {B}"
) -> ir.Model:
    """The base graph x·w + b → LeakyRelu, with one part replaced."""
    header = HEADER.format(opset=opset) + SIGNATURE.format(out=out)
    return build(f"{header}<{initializers}>\n{body}")


def diff_json(before: ir.Model, after: ir.Model) -> dict[str, Any]:
    return diff_models(before, after).to_json()


def names(entries: list[dict[str, Any]]) -> list[str]:
    return [entry["name"] for entry in entries]


EMPTY_SECTION: dict[str, list[Any]] = {"added": [], "removed": [], "changed": []}
NO_QDQ = {"QuantizeLinear": 0, "DequantizeLinear": 0, "quantized_initializers": {}}


def test_identical_models_give_an_empty_diff() -> None:
    result = diff_json(model(), model())

    assert result == {
        "schema": "qcompiler.inspect-diff/1",
        "before": {"source": "before", "nodes": 3, "initializers": 2},
        "after": {"source": "after", "nodes": 3, "initializers": 2},
        "changed": False,
        "model": {},
        "opset_imports": {},
        "metadata_props": {},
        "ops": {},
        "nodes": EMPTY_SECTION,
        "initializers": EMPTY_SECTION,
        "inputs": EMPTY_SECTION,
        "outputs": EMPTY_SECTION,
        "quantization": {"before": NO_QDQ, "after": NO_QDQ},
    }


def test_added_and_removed_nodes_are_matched_by_name() -> None:
    after = model(BODY.replace("[act] y = LeakyRelu <alpha = 0.1> (s)", "[relu] y = Relu (s)"))

    result = diff_json(model(), after)

    assert result["nodes"] == {
        "added": [{"name": "relu", "op": "Relu", "inputs": ["s"], "outputs": ["y"]}],
        "removed": [{"name": "act", "op": "LeakyRelu", "inputs": ["s"], "outputs": ["y"]}],
        "changed": [],
    }
    assert result["ops"] == {
        "LeakyRelu": {"before": 1, "after": 0, "delta": -1},
        "Relu": {"before": 0, "after": 1, "delta": 1},
    }
    assert result["changed"] is True


def test_same_name_with_another_op_attribute_and_inputs_is_a_changed_node() -> None:
    retyped = model(BODY.replace("LeakyRelu <alpha = 0.1> (s)", "Relu (s)"))
    reattributed = model(BODY.replace("alpha = 0.1", "alpha = 0.2"))
    rewired = model(BODY.replace("Add (h, b)", "Add (b, h)"))

    (op_change,) = diff_json(model(), retyped)["nodes"]["changed"]
    (attribute_change,) = diff_json(model(), reattributed)["nodes"]["changed"]
    (input_change,) = diff_json(model(), rewired)["nodes"]["changed"]

    assert op_change == {
        "name": "act",
        "op": "Relu",
        "op_type": {"before": "LeakyRelu", "after": "Relu"},
        "inputs": None,
        "outputs": None,
        "attributes": {"alpha": {"before": pytest.approx(0.1), "after": None}},
    }
    assert attribute_change["attributes"] == {
        "alpha": {"before": pytest.approx(0.1), "after": pytest.approx(0.2)}
    }
    assert attribute_change["op_type"] is None
    assert input_change["name"] == "add"
    assert input_change["inputs"] == {"before": ["h", "b"], "after": ["b", "h"]}
    assert input_change["attributes"] == {}


def test_initializer_with_same_shape_and_other_values_is_changed() -> None:
    after = model(initializers=f"{W.replace('12', '13')}, {B}")

    result = diff_json(model(), after)

    assert result["initializers"] == {
        "added": [],
        "removed": [],
        "changed": [
            {
                "name": "w",
                "changed": ["values"],
                "before": {"dtype": "FLOAT", "shape": [4, 3]},
                "after": {"dtype": "FLOAT", "shape": [4, 3]},
            }
        ],
    }
    assert result["nodes"] == EMPTY_SECTION and result["ops"] == {}


def test_initializer_with_another_dtype_and_shape_says_so() -> None:
    cast = BODY.replace("Add (h, b)", "Add (h, bf)").replace(
        "[add]", "[cast] bf = Cast <to = 1> (b)\n  [add]"
    )
    after = model(cast, initializers=f"{W}, double[1, 3] b = {{1, 2, 3}}")

    (change,) = diff_json(model(), after)["initializers"]["changed"]

    assert change == {
        "name": "b",
        "changed": ["dtype", "shape"],
        "before": {"dtype": "FLOAT", "shape": [3]},
        "after": {"dtype": "DOUBLE", "shape": [1, 3]},
    }


QDQ_BODY = """{
  [x_q] xq = QuantizeLinear (x, sx, zx)
  [x_dq] xd = DequantizeLinear (xq, sx, zx)
  [w_dq] wd = DequantizeLinear (wq, sw, zw)
  [mm] h = MatMul (xd, wd)
  [add] s = Add (h, b)
  [act] y = LeakyRelu <alpha = 0.1> (s)
}
"""


def qdq_model() -> ir.Model:
    quantized = "int8[4, 3] wq = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}"
    parameters = "float sx = {0.1}, uint8 zx = {128}, float sw = {0.5}, int8 zw = {0}"
    return model(QDQ_BODY, initializers=f"{quantized}, {B}, {parameters}")


def test_added_qdq_shows_in_nodes_initializers_and_the_qdq_summary() -> None:
    result = diff_json(model(), qdq_model())

    assert result["quantization"] == {
        "before": NO_QDQ,
        "after": {
            "QuantizeLinear": 1,
            "DequantizeLinear": 2,
            "quantized_initializers": {"INT8": 1},
        },
    }
    assert names(result["nodes"]["added"]) == ["w_dq", "x_dq", "x_q"]
    (matmul,) = result["nodes"]["changed"]
    assert matmul["inputs"] == {"before": ["x", "w"], "after": ["xd", "wd"]}
    assert names(result["initializers"]["added"]) == ["sw", "sx", "wq", "zw", "zx"]
    assert names(result["initializers"]["removed"]) == ["w"]
    assert result["ops"]["DequantizeLinear"] == {"before": 0, "after": 2, "delta": 2}


def test_opset_metadata_and_output_shape_changes() -> None:
    before = model(opset=20)
    after = model(out="2, 3")
    after.metadata_props["qcompiler.recipe"] = "w8a8"

    result = diff_json(before, after)

    assert result["opset_imports"] == {"": {"before": 20, "after": 21}}
    assert result["metadata_props"] == {"qcompiler.recipe": {"before": None, "after": "w8a8"}}
    assert result["outputs"]["changed"] == [
        {
            "name": "y",
            "changed": ["shape"],
            "before": {"dtype": "FLOAT", "shape": ["N", 3]},
            "after": {"dtype": "FLOAT", "shape": [2, 3]},
        }
    ]
    assert result["inputs"] == EMPTY_SECTION
    assert result["nodes"] == EMPTY_SECTION


def test_unnamed_and_repeated_names_are_matched_by_output_and_occurrence() -> None:
    body = """{
      h = MatMul (x, w)
      [same] s = Add (h, b)
      [same] y = Relu (s)
    }
    """
    after = model(body.replace("Relu (s)", "Sigmoid (s)"))

    result = diff_json(model(body), after)

    (change,) = result["nodes"]["changed"]
    assert change["name"] == "same#2"
    assert change["op_type"] == {"before": "Relu", "after": "Sigmoid"}
    assert result["nodes"]["added"] == result["nodes"]["removed"] == []
    assert "<h>" in names(diff_json(model(body), model())["nodes"]["removed"])


def test_json_is_deterministic_and_sorted() -> None:
    first = json.dumps(diff_json(model(), qdq_model()))
    second = json.dumps(diff_json(model(), qdq_model()))

    assert first == second
    document = json.loads(first)
    assert document["schema"] == SCHEMA
    for section in ("nodes", "initializers"):
        for kind in ("added", "removed", "changed"):
            entries = names(document[section][kind])
            assert entries == sorted(entries)
    assert list(document["ops"]) == sorted(document["ops"])


def test_external_data_is_only_read_when_dtype_and_shape_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.onnx"
    ir.save(model(), path, external_data="m.onnx.data", size_threshold_bytes=0)
    reads: list[str] = []
    original = ir.ExternalTensor.tobytes

    def counting_tobytes(self: ir.ExternalTensor) -> bytes:
        reads.append(self.name)
        return original(self)

    monkeypatch.setattr(ir.ExternalTensor, "tobytes", counting_tobytes)

    same = diff_models(load_onnx(path), load_onnx(path))
    assert not same.changed and reads == []  # same file range: equal without reading

    reshaped = load_onnx(path)
    reshaped.graph.initializers["b"].const_value = ir.tensor(np.ones((1, 3), np.float32), name="b")
    (change,) = diff_models(load_onnx(path), reshaped).initializers.changed
    assert change.changed == ("shape",) and reads == []  # another shape: no bytes needed

    edited = load_onnx(path)
    edited.graph.initializers["w"].const_value = ir.tensor(np.ones((4, 3), np.float32), name="w")
    (change,) = diff_models(load_onnx(path), edited).initializers.changed
    assert change.changed == ("values",)
    assert reads == ["w"]  # same dtype and shape: the stored side is read, once


# ---- rendering ---------------------------------------------------------------------------------


def render(before: ir.Model, after: ir.Model) -> str:
    console = Console(record=True, width=200)
    render_diff(diff_models(before, after, sources=("a.onnx", "b.onnx")), console)
    return console.export_text()


def test_render_shows_a_table_per_changed_section_and_notes_for_the_rest() -> None:
    text = render(model(), qdq_model())

    for title in ("Models", "Op counts", "Nodes added", "Nodes changed", "Initializers", "Q/DQ"):
        assert title in text
    assert "Nodes removed: none" in text
    assert "Graph inputs and outputs: unchanged" in text
    assert "quantized initializers INT8" in text
    assert "x_q" in text and "QuantizeLinear" in text


def test_render_shows_attribute_changes_with_float32_values_rounded() -> None:
    text = render(model(), model(BODY.replace("alpha = 0.1", "alpha = 0.2")))

    assert "attribute alpha" in text
    assert "0.1 " in text and "0.2 " in text and "0.10000000149" not in text


def test_render_of_identical_models_says_no_differences() -> None:
    text = render(model(), model())

    assert "No differences." in text
    assert "Nodes added" not in text


def test_render_bounds_long_lists_and_json_keeps_them_all() -> None:
    count = ROW_LIMIT + 5
    chain = "\n".join(f"  [n{i:02}] t{i + 1} = Relu (t{i})" for i in range(count))
    body = "{\n  [mm] t0 = MatMul (x, w)\n" + chain + f"\n  [act] y = Add (t{count}, b)\n}}\n"

    after = model(body)

    assert len(diff_json(model(), after)["nodes"]["added"]) == count  # act: changed, not added
    text = render(model(), after)
    assert "n19" in text and "n20" not in text
    assert "… and 5 more nodes" in text


# ---- command line ------------------------------------------------------------------------------


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    ir.save(model(), before)
    ir.save(qdq_model(), after)
    return before, after


def test_cli_prints_the_diff_tables(
    two_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["inspect", *map(str, two_files)], capsys)

    assert code == 0, err
    assert "Nodes added" in out and "x_dq" in out
    assert "quantized initializers INT8" in out


def test_cli_json_is_the_diff_document(
    two_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["inspect", *map(str, two_files), "--json"], capsys)

    assert code == 0
    document = json.loads(out)
    assert document["schema"] == "qcompiler.inspect-diff/1"
    assert document["before"]["source"] == str(two_files[0])
    assert document == {**diff_json(model(), qdq_model()), "before": document["before"],
                        "after": document["after"]}  # fmt: skip


def test_cli_with_one_model_is_unchanged(
    two_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["inspect", str(two_files[0]), "--json"], capsys)

    assert code == 0
    assert json.loads(out)["schema"] == "qcompiler.inspect/1"


@pytest.mark.parametrize(
    "options", [["--dot", "g.dot"], ["--html", "g.html"], ["--canonicalize"], ["--example", "x"]]
)
def test_cli_rejects_single_model_options_with_two_models(
    options: list[str], two_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["inspect", *map(str, two_files), *options], capsys)

    assert_one_line_error(code, err, options[0], "two models")
    assert out == ""


def test_cli_missing_second_file_is_one_line(
    two_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["inspect", str(two_files[0]), str(tmp_path / "nope.onnx")], capsys)

    assert_one_line_error(code, err, "nope.onnx", "no such file")


def test_cli_second_file_not_onnx_is_one_line(
    two_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")

    code, _, err = run_cli(["inspect", str(two_files[0]), str(text)], capsys)

    assert_one_line_error(code, err, "notes.onnx", "not a readable ONNX model")


# ---- real models -------------------------------------------------------------------------------


def test_minilm_canonicalization_fuses_gelu_and_upgrades_the_opset() -> None:
    path = example_path("minilm")
    before, after = load_onnx(path), load_onnx(path)
    canonicalize(after)

    result = diff_models(before, after).to_json()

    # Measured: the torch export already has its 13 LayerNormalization nodes, so
    # canonicalization fuses the 6 erf-GELUs (Div, Erf, Add, Mul, Mul each) and upgrades 18 → 21.
    added = Counter(node["op"] for node in result["nodes"]["added"])
    removed = Counter(node["op"] for node in result["nodes"]["removed"])
    assert added == {"Gelu": 6}
    assert removed == {"Div": 6, "Erf": 6, "Add": 6, "Mul": 12}
    assert {op: c["delta"] for op, c in result["ops"].items()} == {
        "Add": -6, "Div": -6, "Erf": -6, "Gelu": 6, "Mul": -12
    }  # fmt: skip
    assert "LayerNormalization" not in result["ops"]
    assert result["opset_imports"] == {"": {"before": 18, "after": 21}}
    assert (result["before"]["nodes"], result["after"]["nodes"]) == (309, 285)
    assert names(result["initializers"]["removed"]) == ["val_151", "val_154", "val_156"]  # √2, 1, ½
    assert result["initializers"]["changed"] == []  # no weight was touched


def test_dinov2_canonicalization_adds_layer_norms_and_removes_their_decomposition(
    dinov2_path: Path,
) -> None:
    before, after = load_onnx(dinov2_path), load_onnx(dinov2_path)
    canonicalize(after)

    result = diff_models(before, after).to_json()

    # Measured: 25 decomposed LayerNorms (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul,
    # Add) become LayerNormalization; 12 GELUs fuse; 430 Constant nodes become initializers.
    added = Counter(node["op"] for node in result["nodes"]["added"])
    removed = Counter(node["op"] for node in result["nodes"]["removed"])
    assert added == {"LayerNormalization": 25, "Gelu": 12}
    assert removed["ReduceMean"] == 50
    assert removed["Sqrt"] == removed["Sub"] == 25
    assert removed["Pow"] == 26
    assert removed["Constant"] == 430
    assert sum(removed.values()) == 731
    assert result["ops"]["LayerNormalization"] == {"before": 0, "after": 25, "delta": 25}
    assert result["opset_imports"] == {"": {"before": 14, "after": 21}}
    assert len(result["initializers"]["added"]) == 341
