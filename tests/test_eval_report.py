"""eval and report: metrics in closed form, and both commands on MiniLM compiled to w8a8.

MiniLM is compiled once per module from 32 calibration sentences; eval and report run on
evaluation sentences, which are disjoint from them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompiler.api import canonicalize
from qcompiler.backends.ort.session import make_session
from qcompiler.calibrate.data import Sentences
from qcompiler.cli import main
from qcompiler.compiler import compile_model, file_sha256, save_compiled
from qcompiler.examples import example_path
from qcompiler.examples.minilm import minilm_feeds
from qcompiler.examples.text import calibration_sentences, evaluation_sentences
from qcompiler.frontends.onnx import load_onnx
from qcompiler.ir.edit import expose_outputs
from qcompiler.quant.recipe import load_recipe
from qcompiler.quant.spec import QuantSpec
from qcompiler.quant.uniform import compute_params, fake_quantize
from qcompiler.report.evaluate import Pool
from qcompiler.report.layers import measured_report, sidecar_report
from qcompiler.report.metrics import (
    ErrorEnergy,
    OutputComparison,
    cosine_per_sample,
    max_abs_error,
    mean_pool,
    retrieval_scores,
    sqnr_db,
    topk_agreement,
)
from qcompiler.report.sensitivity import PlanMismatchError
from qcompiler.report.sidecar import read_sidecar
from tests.graphs import build

TINY = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,-2,3,4,5,-6,7,8,9,10,-11,12}> {
    [matmul] y = MatMul(x, w)
}
"""

# ---------------------------------------------------------------- metrics, closed form


def test_cosine_of_orthogonal_parallel_and_opposite_samples() -> None:
    a = np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
    b = np.array([[0.0, 3.0], [2.0, 4.0], [-1.0, -2.0], [0.0, 0.0]])
    np.testing.assert_allclose(cosine_per_sample(a, b), [0.0, 1.0, -1.0, 1.0], atol=1e-15)


def test_cosine_flattens_each_sample() -> None:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1
    b = a.copy()
    b[1] *= -1
    np.testing.assert_allclose(cosine_per_sample(a, b), [1.0, -1.0], atol=1e-12)


def test_sqnr_of_a_known_error() -> None:
    x = np.ones((10, 100))
    assert sqnr_db(x, x + 0.01) == pytest.approx(40.0)  # ‖x‖² = 1000, ‖e‖² = 0.1
    assert sqnr_db(x, x) == math.inf
    assert max_abs_error(x, x - 0.25) == 0.25


def test_streamed_error_energy_equals_the_one_shot_sqnr() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5))
    noisy = x + 0.1 * rng.standard_normal(x.shape)
    energy = ErrorEnergy()
    energy.add(x[:2], noisy[:2])
    energy.add(x[2:], noisy[2:])
    assert energy.sqnr_db == pytest.approx(sqnr_db(x, noisy), rel=1e-12)
    assert energy.normwise_error == pytest.approx(np.linalg.norm(noisy - x) / np.linalg.norm(x))


def test_uint8_on_uniform_data_gives_about_6_db_per_bit() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 1_000_000).astype(np.float32)
    spec = QuantSpec(ir.DataType.UINT8, symmetric=False)
    quantized = fake_quantize(x, compute_params(x.min(), x.max(), spec), spec)
    # notes/algorithms.md §18: 6.02·b dB; measured 48.16 dB at 8 bits
    assert sqnr_db(x, quantized) == pytest.approx(48.16, abs=0.05)


def test_topk_agreement_counts_shared_indices() -> None:
    a = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    b = np.array([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(topk_agreement(a, b, 1), [1.0, 1.0])
    np.testing.assert_array_equal(topk_agreement(a, b, 2), [0.5, 1.0])  # {0,1} vs {0,2}
    np.testing.assert_array_equal(topk_agreement(a, -a, 2), [0.0, 0.0])


def test_retrieval_never_returns_the_sample_itself() -> None:
    embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    scores = retrieval_scores(embeddings)
    assert np.all(np.diag(scores) == -np.inf)
    np.testing.assert_array_equal(scores.argmax(axis=1), [1, 0, 1])


def test_mean_pool_averages_the_masked_positions_only() -> None:
    hidden = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    pooled = mean_pool(hidden, np.array([[1, 1, 0]]))
    np.testing.assert_allclose(pooled, [[2.0, 3.0, 4.0, 5.0]])  # mean of rows 0 and 1


def test_output_comparison_reports_class_topk_for_2d_outputs() -> None:
    comparison = OutputComparison("logits")
    reference = np.eye(6)[:4] * 5
    comparison.update(reference[:2], reference[:2])
    comparison.update(reference[2:], reference[2:][:, ::-1])
    result = comparison.result()
    assert (result.samples, result.topk_kind) == (4, "classes")
    assert result.topk[1] == 0.5 and result.cosine_min == 0.0 and result.cosine_mean == 0.5


# ---------------------------------------------------------------- MiniLM w8a8


@pytest.fixture(scope="module")
def minilm_float() -> Path:
    return example_path("minilm")


@pytest.fixture(scope="module")
def compiled(minilm_float: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_minilm(minilm_float, "w8a8", 32, tmp_path_factory.mktemp("minilm"))


def compile_minilm(float_path: Path, recipe: str, sentences: int, folder: Path) -> Path:
    result = compile_model(
        load_onnx(float_path),
        load_recipe(recipe),
        Sentences(calibration_sentences(sentences)),
        input_sha256=file_sha256(float_path),
    )
    output, _ = save_compiled(result, folder / "q.onnx")
    return output


def run_json(args: list[str]) -> Any:
    """Run the CLI with --json; returns the parsed stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--json"])
    assert code == 0
    return json.loads(out.getvalue())


def pooled_outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    (hidden,) = make_session(load_onnx(path)).run(None, feeds)
    mask = feeds["attention_mask"][..., None]
    return np.asarray((hidden * mask).sum(1) / mask.sum(1), dtype=np.float64)


def test_eval_on_held_out_sentences_equals_a_numpy_recomputation(
    minilm_float: Path, compiled: Path
) -> None:
    document = run_json(["eval", str(minilm_float), str(compiled), "--example-text", "64",
                         "--batch-size", "64"])  # fmt: skip
    (metrics,) = document["outputs"]
    assert document["pool"] == "mean" and metrics["samples"] == 64
    assert metrics["topk_kind"] == "retrieval"
    feeds = minilm_feeds(evaluation_sentences(64))
    a, b = pooled_outputs(minilm_float, feeds), pooled_outputs(compiled, feeds)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    similarity = [x @ x.T / np.outer(*[np.linalg.norm(x, axis=1)] * 2) for x in (a, b)]
    for s in similarity:
        np.fill_diagonal(s, -np.inf)
    expected = {
        "cosine_mean": cosines.mean(),
        "cosine_min": cosines.min(),
        "sqnr_db": 10 * np.log10((a**2).sum() / ((a - b) ** 2).sum()),
        "max_abs_error": np.abs(a - b).max(),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5), key
    top1 = np.mean(similarity[0].argmax(1) == similarity[1].argmax(1))
    assert metrics["topk"]["top1"] == pytest.approx(top1)
    # observed with 32 calibration sentences: cosine 0.9923 (min 0.9775), 18.2 dB, top-1 0.89
    assert 0.985 < metrics["cosine_mean"] < 0.9999 and metrics["cosine_min"] > 0.95
    assert 12 < metrics["sqnr_db"] < 40 and metrics["topk"]["top1"] > 0.7


def test_report_lists_every_layer_with_its_parameters_and_kernel(compiled: Path) -> None:
    document = run_json(["report", str(compiled)])
    layers = document["layers"]
    assert document["schema"] == "qcompiler.report/1" and len(layers) == 36
    assert {(layer["kernel"], layer["integer"]) for layer in layers} == {
        ("MatMulIntegerToFloat", True)
    }
    params = read_sidecar(compiled).plan.activation_params
    for layer in layers:
        low, high = layer["activation_range"]
        assert low < 0 < high
        assert layer["scale"] == pytest.approx(float(params[layer["activation"]].scale))
        assert layer["activations"]["bits"] == 8 and layer["weights"]["dtype"] == "INT8"
    assert layers[0]["label"] == "layer.0.attention.self.query"


@pytest.fixture(scope="module")
def measured(minilm_float: Path, compiled: Path) -> Any:
    return run_json(["report", str(compiled), "--float", str(minilm_float),
                     "--example-text", "32"])  # fmt: skip


def test_sensitivity_ranks_the_layers_worst_first(measured: Any) -> None:
    layers = measured["layers"]
    errors = [layer["sensitivity"]["one_minus_cosine"] for layer in layers]
    assert len(layers) == 36 and errors == sorted(errors, reverse=True)
    worst = layers[0]
    print(f"worst: {worst['label']} 1-cos {errors[0]:.2e}, {measured['sensitivity']}")
    # observed: layer.0.output.dense (fc2, reads GELU) 1.5e-3, 2× the next; min 4.4e-6; 19–28 s
    assert worst["label"].endswith(("output.dense", "intermediate.dense"))
    assert worst["remedy"].startswith(("smooth", "reparameterize"))
    assert 1e-4 < errors[0] < 1e-2 and errors[-1] < 1e-4
    assert measured["sensitivity"]["samples"] == 16


def test_own_sqnr_equals_a_numpy_fake_quantization(minilm_float: Path, measured: Any) -> None:
    layer = next(layer for layer in measured["layers"] if layer["activation"] == "gelu")
    model = load_onnx(minilm_float)
    canonicalize(model)
    expose_outputs(model, ["gelu"])
    feeds = minilm_feeds(evaluation_sentences(32))
    (x,) = make_session(model).run(["gelu"], feeds)
    scale, zero = layer["scale"], layer["zero_point"]
    x_hat = (np.clip(np.rint(x / np.float32(scale)) + zero, 0, 255) - zero) * np.float32(scale)
    expected = 10 * np.log10((x.astype(np.float64) ** 2).sum() / ((x - x_hat) ** 2).sum())
    # observed 19.0 dB: GELU output with outlier channels (ratio 16×) under one u8 scale
    assert layer["own_sqnr_db"] == pytest.approx(expected, abs=0.01)
    assert layer["outlier_ratio"] > 8


@pytest.fixture(scope="module")
def repq_measured(minilm_float: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    output = compile_minilm(minilm_float, "repq-w8a8", 128, tmp_path_factory.mktemp("repq"))
    return run_json(["report", str(output), "--float", str(minilm_float),
                     "--example-text", "16"])  # fmt: skip


def test_report_shows_every_repq_site_with_r1_and_sqnr_before_and_after(
    repq_measured: Any,
) -> None:
    sites = repq_measured["reparameterized"]
    assert Counter((s["producer_op"], s["folded_into"]) for s in sites) == {
        ("LayerNormalization", "LayerNormalization"): 12,
        ("Gelu", "explicit-affine"): 6,
    }
    gains = []
    for site in sites:
        low, high = site["r1_range"]
        assert 0 < low < 1 < high
        gains.append(site["sqnr_reparameterized_db"] - site["sqnr_per_tensor_db"])
    print(sorted(gains))
    assert min(gains) > 0
    # the float model was folded like the compiled one, so every layer could be measured
    assert len(repq_measured["layers"]) == 36
    assert all(layer["sensitivity"]["one_minus_cosine"] < 1e-2 for layer in repq_measured["layers"])


# ---------------------------------------------------------------- one-line errors


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qcompiler: error: "), lines
    return lines[0]


def test_report_without_sidecar(
    compiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lonely = shutil.copy(compiled, tmp_path / "q.onnx")
    assert "no sidecar" in one_line_error(["report", str(lonely)], capsys)


def test_report_with_another_schema(
    compiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = shutil.copy(compiled, tmp_path / "q.onnx")
    (tmp_path / "q.onnx.qcompiler.json").write_text('{"schema": "qcompiler.inspect/1"}')
    assert "has schema 'qcompiler.inspect/1'" in one_line_error(["report", str(model)], capsys)


def test_report_against_another_float_model(
    compiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "images.npz"
    np.savez(data, input_image=np.zeros((1, 3, 224, 224), np.float32))
    args = ["report", str(compiled), "--float", str(example_path("dinov2")), "--data", str(data)]
    assert "not the one this model was compiled from" in one_line_error(args, capsys)


def test_eval_data_that_does_not_fit_the_model(
    minilm_float: Path, compiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, input_ids=np.ones((4, 8), np.int32))
    line = one_line_error(["eval", str(minilm_float), str(compiled), "--data", str(data)], capsys)
    assert "input_ids" in line


def test_eval_unknown_exposed_name(
    minilm_float: Path, compiled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(minilm_float), str(compiled), "--example-text", "4", "--expose", "gelux"]
    assert "did you mean 'gelu'" in one_line_error(args, capsys)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ([], "give the data to measure on: --data FILE.npz or --example-text N"),
        (["--example-text", "4", "--data", "d.npz"], "not both"),
        (["--example-text", "4", "--output", "pooled"], "has no output 'pooled'"),
        (["--example-text", "4", "--pool", "max"], "unknown --pool 'max'"),
    ],
)
def test_eval_option_errors(
    minilm_float: Path,
    compiled: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    fragment: str,
) -> None:
    args = ["eval", str(minilm_float), str(compiled), *extra]
    assert fragment in one_line_error(args, capsys)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A model that is not MiniLM: one float input x[N, 4], one output y[N, 3]."""
    path = tmp_path / "tiny.onnx"
    ir.save(build(TINY), path)
    return path


def test_eval_models_with_different_inputs(
    compiled: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny.parent / "x.npz"
    np.savez(data, x=np.ones((2, 4), np.float32))
    line = one_line_error(["eval", str(tiny), str(compiled), "--data", str(data)], capsys)
    assert "the models take different inputs: float x; quantized input_ids" in line


@pytest.mark.parametrize(
    ("weight", "fragment"),
    [
        ("{1,2,3,4,5,6,7,8}", "output 'y' has shape [2, 3] in the float model and [2, 2]"),
        ("{1,2,3,4,5,6,7,8,9}", "ONNX Runtime cannot load the quantized model: "),  # 9 of 8
    ],
)
def test_eval_a_model_that_differs_from_the_float_one(
    tiny: Path, capsys: pytest.CaptureFixture[str], weight: str, fragment: str
) -> None:
    other = tiny.parent / "other.onnx"
    text = TINY.replace("float[N, 3] y", "float[N, 2] y").replace(
        "float[4, 3] w = {1,-2,3,4,5,-6,7,8,9,10,-11,12}", f"float[4, 2] w = {weight}"
    )
    onnx.save(onnx.parser.parse_model(text), other)  # unchecked: one variant is invalid
    data = tiny.parent / "x.npz"
    np.savez(data, x=np.ones((2, 4), np.float32))
    assert fragment in one_line_error(["eval", str(tiny), str(other), "--data", str(data)], capsys)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--example-text", "4"], "--example-text feeds MiniLM's inputs"),
        (["--data", "missing.npz"], "missing.npz: no such data file"),
        (["--data", "x.npz", "--pool", "mean"], "--pool mean needs [batch, seq, dim] outputs"),
    ],
)
def test_eval_data_errors_on_a_small_model(
    tiny: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    np.savez(tiny.parent / "x.npz", x=np.ones((2, 4), np.float32))
    extra = [str(tiny.parent / e) if e.endswith(".npz") else e for e in extra]
    assert fragment in one_line_error(["eval", str(tiny), str(tiny), *extra], capsys)


def test_eval_batch_that_ort_rejects(
    minilm_float: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "long.npz"
    tokens = np.ones((1, 600), np.int64)  # MiniLM has 512 positions
    np.savez(data, input_ids=tokens, attention_mask=tokens, token_type_ids=0 * tokens)
    args = ["eval", str(minilm_float), str(minilm_float), "--data", str(data)]
    assert "ONNX Runtime failed on batch 0 (input_ids[1, 600]" in one_line_error(args, capsys)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("{", "is not valid JSON"), ('{"schema": "qcompiler.compile/1"}', "malformed field")],
)
def test_report_with_a_damaged_sidecar(
    compiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, fragment: str
) -> None:
    model = shutil.copy(compiled, tmp_path / "q.onnx")
    (tmp_path / "q.onnx.qcompiler.json").write_text(text)
    assert fragment in one_line_error(["report", str(model)], capsys)


def test_a_float_model_without_the_planned_nodes(compiled: Path, tiny: Path) -> None:
    sidecar = read_sidecar(compiled)
    report = sidecar_report("q.onnx", sidecar, load_onnx(compiled))
    with pytest.raises(PlanMismatchError, match="has no node 'node_MatMul_"):
        measured_report(
            report, load_onnx(tiny), sidecar.provenance["qcompiler.input_sha256"], {},
            target_opset=21, output=None, pool=Pool.NONE, batch_size=4,
        )  # fmt: skip


def test_report_data_without_float(compiled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["report", str(compiled), "--example-text", "4"], capsys)
    assert "--float" in line
