"""Calibration: data sources and their checks, the engine, its cache, and MiniLM end to end.

The engine must measure the graph it is given without altering it (notes/algorithms.md §19 trap
30), exclude the masked-attention sentinel (trap 9), reject non-finite data in one line (trap 10)
and keep memory at one batch however many batches there are (DESIGN.md §8).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qcompiler.calibrate import (
    CalibrationDataError,
    CalibrationRequestError,
    CalibrationStats,
    CalibrationStream,
    Sentences,
    calibrate,
    model_inputs,
)
from qcompiler.calibrate import engine as engine_module
from qcompiler.examples import example_path
from qcompiler.examples.minilm import minilm_feeds
from qcompiler.examples.text import calibration_sentences
from qcompiler.ir.fingerprint import graph_fingerprint
from qcompiler.quant.observers import NonFiniteCalibrationError
from qcompiler.quant.spec import QuantSpec, per_channel
from tests.graphs import build

U8 = QuantSpec(ir.DataType.UINT8, symmetric=False)
S8 = QuantSpec(ir.DataType.INT8, symmetric=True)
FLT_MAX = 3.4028235e38

MLP = """<ir_version: 8, opset_import: ["" : 18]>
mlp (float[N, 4] x) => (float[N, 3] y)
    <float[4, 3] w = {0.5, -1, 2, 1, 0.25, -0.5, -2, 1, 0.75, 1.5, -0.25, 1}> {
    h = MatMul(x, w)
    y = Relu(h)
}"""

MASKED_ATTENTION = """<ir_version: 8, opset_import: ["" : 18]>
masked (float[B, 4, 4] scores, bool[B, 1, 4] mask) => (float[B, 4, 4] probs) {
    fill = Constant <value = float {-3.4028235e38}> ()
    masked = Where(mask, scores, fill)
    probs = Softmax <axis = -1> (masked)
}"""

NUMERICS = """<ir_version: 8, opset_import: ["" : 18]>
numerics (float[N, 4] x) => (float[N, 4] root, float[N, 4] grown) {
    root = Sqrt(x)
    grown = Exp(x)
}"""


def mlp_arrays(samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(samples, 4)).astype(np.float32)}


def mlp_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    w = np.array([[0.5, -1, 2], [1, 0.25, -0.5], [-2, 1, 0.75], [1.5, -0.25, 1]], np.float32)
    h = x @ w
    return {"x": x, "h": h, "y": np.maximum(h, 0)}


def assert_one_line(error: pytest.ExceptionInfo[BaseException], *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------
# The engine on small graphs


def test_minmax_ranges_equal_numpy_over_all_batches() -> None:
    model = build(MLP)
    x = mlp_arrays(40)["x"]
    stats = calibrate(model, {"x": x}, {"x": U8, "h": U8, "y": U8}, batch_size=16, threads=1)
    for name, values in mlp_reference(x).items():
        rmin, rmax = stats.range(name)
        assert (float(rmin), float(rmax)) == pytest.approx(
            (values.min(), values.max()), rel=1e-6
        ), name
    assert stats.batches == 3  # 16 + 16 + 8 samples
    assert stats["h"].observer.stats.count == 40 * 3


def test_per_channel_ranges_follow_the_spec_axis() -> None:
    model = build(MLP)
    x = mlp_arrays(40)["x"]
    stats = calibrate(model, {"x": x}, {"h": QuantSpec(ir.DataType.INT8, True, per_channel(1))})
    rmin, rmax = stats.range("h")
    h = mlp_reference(x)["h"]
    np.testing.assert_allclose(rmin, h.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(rmax, h.max(axis=0), rtol=1e-6)


def test_graph_fingerprint_sees_attributes_names_and_weights() -> None:
    fingerprint = graph_fingerprint(build(MASKED_ATTENTION))
    assert graph_fingerprint(build(MASKED_ATTENTION)) == fingerprint
    variants = [
        MASKED_ATTENTION.replace("<axis = -1>", "<axis = 1>"),
        MASKED_ATTENTION.replace("masked = ", "renamed = ").replace("(masked)", "(renamed)"),
        MASKED_ATTENTION.replace("-3.4028235e38", "-1e4"),
    ]
    assert len({graph_fingerprint(build(text)) for text in variants} - {fingerprint}) == 3


def test_calibration_leaves_the_model_unchanged() -> None:
    """Trap 30: intermediates are exposed on a copy; the compiled model keeps its fingerprint."""
    model = build(MLP)
    before = graph_fingerprint(model)
    stats = calibrate(model, mlp_arrays(8), {"h": U8})
    assert graph_fingerprint(model) == before == stats.graph_fingerprint
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_masked_attention_scores_carry_the_sentinel_and_keep_a_small_scale() -> None:
    """Trap 9: the −FLT_MAX fill is excluded (scale < 1e3, observed ≈ 0.03) and flagged; the
    Softmax output is clean."""
    model = build(MASKED_ATTENTION)
    rng = np.random.default_rng(1)
    scores = rng.normal(scale=3.0, size=(6, 4, 4)).astype(np.float32)
    mask = np.ones((6, 1, 4), dtype=bool)
    mask[:, :, 3] = False  # the last key position is padding
    stats = calibrate(model, {"scores": scores, "mask": mask}, {"masked": U8, "probs": U8})
    rmin, rmax = stats.range("masked")
    scale = (max(float(rmax), 0.0) - min(float(rmin), 0.0)) / 255
    assert scale < 1e3
    assert float(rmin) == pytest.approx(scores[:, :, :3].min(), rel=1e-6)
    assert stats["masked"].sentinel
    assert stats["masked"].observer.stats.sentinel_count == 6 * 4
    assert not stats["probs"].sentinel
    assert stats.flagged("sentinel") == ["masked"]


def test_infinity_is_excluded_and_flagged() -> None:
    model = build(NUMERICS)
    x = np.array([[0.0, 1.0, 2.0, 100.0]], np.float32)  # Exp(100) overflows float32
    stats = calibrate(model, [{"x": x}], {"grown": U8, "root": U8})
    assert stats["grown"].nonfinite
    assert float(stats.range("grown")[1]) == pytest.approx(np.exp(np.float32(2.0)), rel=1e-6)
    assert not stats["root"].nonfinite


def test_nan_computed_by_the_model_names_the_tensor_and_batch() -> None:
    model = build(NUMERICS)
    batches = [{"x": np.ones((2, 4), np.float32)}, {"x": -np.ones((1, 4), np.float32)}]
    with pytest.raises(NonFiniteCalibrationError) as error:
        calibrate(model, batches, {"root": U8})
    assert_one_line(error, "NaN in tensor 'root' at calibration batch 1")


def test_all_zero_tensors_are_degenerate() -> None:
    model = build(MLP)
    stats = calibrate(model, {"x": np.zeros((8, 4), np.float32)}, {"x": U8, "h": U8, "y": U8})
    assert stats.flagged("degenerate") == ["x", "h", "y"]
    assert calibrate(model, mlp_arrays(8), {"h": U8}).flagged("degenerate") == []


def test_batches_may_vary_in_size_and_length() -> None:
    model = build(MASKED_ATTENTION)
    rng = np.random.default_rng(2)
    batches = [
        {
            "scores": rng.normal(size=(n, 4, 4)).astype(np.float32),
            "mask": np.ones((n, 1, 4), dtype=bool),
        }
        for n in (1, 5, 3)
    ]
    done: list[int] = []
    stats = calibrate(model, batches, {"probs": U8}, progress=done.append)
    assert done == [1, 2, 3]
    assert stats["probs"].observer.stats.count == 9 * 16


def test_unknown_and_weight_requests_are_refused() -> None:
    model = build(MLP)
    with pytest.raises(CalibrationRequestError) as error:
        calibrate(model, mlp_arrays(4), {"nope": U8})
    assert_one_line(error, "cannot calibrate tensor 'nope'")
    with pytest.raises(CalibrationRequestError) as error:
        calibrate(model, mlp_arrays(4), {"w": U8})
    assert_one_line(error, "'w' is an initializer")


def test_runtime_failure_names_the_batch() -> None:
    model = build(MASKED_ATTENTION)
    feeds = {"scores": np.zeros((2, 4, 4), np.float32), "mask": np.ones((3, 1, 4), bool)}
    with pytest.raises(CalibrationDataError) as error:
        calibrate(model, [feeds], {"probs": U8})
    assert_one_line(error, "ONNX Runtime failed on calibration batch 0")


# ---------------------------------------------------------------------------------------------
# Data sources


def stream_of(model: ir.Model, data: object, batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    return list(CalibrationStream(data, model_inputs(model), batch_size))


def test_arrays_are_cut_into_batches_of_batch_size() -> None:
    batches = stream_of(build(MLP), mlp_arrays(40))
    assert [b["x"].shape[0] for b in batches] == [16, 16, 8]


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streams_the_same_batches_as_the_arrays(tmp_path: Path, compressed: bool) -> None:
    model = build(MASKED_ATTENTION)
    rng = np.random.default_rng(3)
    arrays = {
        "scores": rng.normal(size=(37, 4, 4)).astype(np.float32),
        "mask": rng.random((37, 1, 4)) > 0.3,
    }
    path = tmp_path / "calib.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, scores=arrays["scores"], mask=arrays["mask"])
    from_file = CalibrationStream(path, model_inputs(model), 8)
    from_arrays = CalibrationStream(arrays, model_inputs(model), 8)
    for a, b in zip(from_file, from_arrays, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert from_file.fingerprint == from_arrays.fingerprint is not None


def test_tuples_map_onto_the_input_order() -> None:
    model = build(MASKED_ATTENTION)
    scores, mask = np.zeros((2, 4, 4), np.float32), np.ones((2, 1, 4), bool)
    (batch,) = stream_of(model, [(scores, mask)])
    assert batch["scores"] is scores and batch["mask"] is mask


def test_torch_dataloader_batches_become_numpy() -> None:
    torch = pytest.importorskip("torch")
    model = build(MLP)
    x = mlp_arrays(10)["x"]
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    stats = calibrate(model, loader, {"x": U8})
    assert stats.batches == 3
    assert float(stats.range("x")[1]) == pytest.approx(x.max())
    dict_loader = torch.utils.data.DataLoader([{"x": row} for row in dataset.tensors[0]], 4)
    assert stats.data_fingerprint == calibrate(model, dict_loader, {"x": U8}).data_fingerprint


def test_the_onnx_path_never_imports_torch(tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, x=mlp_arrays(8)["x"])
    script = f"""
import sys
from qcompiler.calibrate import calibrate
from tests.graphs import build
from tests.test_calibrate import MLP, U8
stats = calibrate(build(MLP), {str(path)!r}, {{"h": U8}})
assert stats.batches == 1
print("torch" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False", result.stderr


def test_sentence_batches_are_padded_per_batch() -> None:
    model = ir.load(example_path("minilm"))
    sentences = calibration_sentences(32)
    batches = stream_of(model, Sentences(sentences), batch_size=8)
    lengths = {b["input_ids"].shape[1] for b in batches}
    assert len(batches) == 4 and len(lengths) > 1
    np.testing.assert_array_equal(
        batches[1]["input_ids"], minilm_feeds(sentences[8:16])["input_ids"]
    )


def test_fingerprint_depends_on_every_byte() -> None:
    model = build(MLP)
    x = mlp_arrays(8)
    changed = {"x": x["x"].copy()}
    changed["x"][7, 3] = np.nextafter(changed["x"][7, 3], np.float32(np.inf))
    fingerprints = set()
    for data, batch_size in ((x, 8), (x, 4), (changed, 8)):
        stream = CalibrationStream(data, model_inputs(model), batch_size)
        list(stream)
        fingerprints.add(stream.fingerprint)
    assert len(fingerprints) == 3  # same data in other batches differs too: batching is observable


def generator_of(arrays: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    yield arrays


BAD_DATA = {
    "empty list": ([], "the calibration data is empty"),
    "no samples": ({"x": np.zeros((0, 4), np.float32)}, "the calibration data is empty"),
    "unknown input": (
        [{"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)}],
        "calibration batch 0 has unknown input(s) 'z'; the model's inputs are x",
    ),
    "missing input": ([{}], "calibration batch 0 has missing input(s) 'x'"),
    "wrong dtype": (
        [{"x": np.zeros((1, 4), np.float64)}],
        "input 'x' in calibration batch 0 is float64; the model expects float32[?, 4]",
    ),
    "wrong rank": (
        [{"x": np.zeros((1, 4), np.float32)}, {"x": np.zeros((1, 4, 1), np.float32)}],
        "input 'x' in calibration batch 1 has shape [1, 4, 1]; the model expects float32[?, 4]",
    ),
    "wrong static dim": (
        [{"x": np.zeros((2, 5), np.float32)}],
        "has shape [2, 5]; the model expects float32[?, 4]",
    ),
    "empty batch": (
        [{"x": np.zeros((1, 4), np.float32)}, {"x": np.zeros((0, 4), np.float32)}],
        "input 'x' in calibration batch 1 is empty (shape [0, 4])",
    ),
    "nan": (
        {"x": np.where(np.arange(40)[:, None] == 35, np.nan, np.ones((40, 4), np.float32))},
        "input 'x' in calibration batch 1 holds 4 NaN values",  # batches of 32 rows
    ),
    "inf": (
        [{"x": np.array([[1, 2, np.inf, -np.inf]], np.float32)}],
        "input 'x' in calibration batch 0 holds 2 ±inf values",
    ),
    "too many values": (
        [(np.zeros((1, 4), np.float32), np.zeros(1))],
        "calibration batch 0 has 2 values but the model takes 1 inputs (x)",
    ),
    "not an array": ([{"x": [[1.0, 2.0, 3.0, 4.0]]}], "input 'x' in calibration batch 0 is a list"),
    "not a batch": ([42], "calibration batch 0 is a int"),
    "unsupported source": (3.5, "calibration data of type float is not supported"),
    "missing file": (Path("/nonexistent/calib.npz"), "calibration file /nonexistent/calib.npz"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_one_clear_line(case: str) -> None:
    data, message = BAD_DATA[case]
    with pytest.raises(CalibrationDataError) as error:
        calibrate(build(MLP), data, {"h": U8})
    assert_one_line(error, message)


def test_npz_problems_are_one_clear_line(tmp_path: Path) -> None:
    text = tmp_path / "calib.npz"
    text.write_text("not a zip")
    with pytest.raises(CalibrationDataError) as error:
        calibrate(build(MLP), text, {"h": U8})
    assert_one_line(error, "is not an .npz archive")
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, scores=np.zeros((4, 4, 4), np.float32), mask=np.ones((3, 1, 4), bool))
    with pytest.raises(CalibrationDataError) as error:
        calibrate(build(MASKED_ATTENTION), uneven, {"probs": U8})
    assert_one_line(error, "differ in sample count ('scores': 4, 'mask': 3)")


def test_a_one_shot_iterator_cannot_be_cached(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError) as error:
        calibrate(build(MLP), generator_of(mlp_arrays(4)), {"h": U8}, cache_dir=tmp_path)
    assert_one_line(error, "one-shot iterator")
    assert calibrate(build(MLP), generator_of(mlp_arrays(4)), {"h": U8}).batches == 1


# ---------------------------------------------------------------------------------------------
# The on-disk cache


@pytest.fixture
def session_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the ORT sessions the engine creates."""
    created: list[int] = []
    real = engine_module._exposing_session

    def counting(model: ir.Model, names: list[str], threads: int | None) -> object:
        created.append(1)
        return real(model, names, threads)

    monkeypatch.setattr(engine_module, "_exposing_session", counting)
    return created


def assert_same_stats(a: CalibrationStats, b: CalibrationStats) -> None:
    assert a.keys() == b.keys()
    assert (a.graph_fingerprint, a.data_fingerprint, a.batches) == (
        b.graph_fingerprint,
        b.data_fingerprint,
        b.batches,
    )
    for name in a:
        for x, y in zip(a.range(name), b.range(name), strict=True):
            np.testing.assert_array_equal(x, y)
        assert a[name].observer.stats == b[name].observer.stats
        assert (a[name].sentinel, a[name].nonfinite) == (b[name].sentinel, b[name].nonfinite)


def test_cache_hit_returns_equal_stats_without_running(
    tmp_path: Path, session_counter: list[int]
) -> None:
    model = build(MLP)
    requests = {"h": U8, "y": QuantSpec(ir.DataType.INT8, True, observer="percentile")}
    first = calibrate(model, mlp_arrays(64), requests, batch_size=16, cache_dir=tmp_path)
    second = calibrate(model, mlp_arrays(64), requests, batch_size=16, cache_dir=tmp_path)
    assert session_counter == [1]
    assert (first.from_cache, second.from_cache) == (False, True)
    assert_same_stats(first, second)
    assert len(list(tmp_path.glob("calibration-*.json"))) == 1


def test_cache_misses_when_graph_data_or_specs_change(
    tmp_path: Path, session_counter: list[int]
) -> None:
    model = build(MLP)
    calibrate(model, mlp_arrays(16), {"h": U8}, cache_dir=tmp_path)
    calibrate(model, mlp_arrays(16, seed=1), {"h": U8}, cache_dir=tmp_path)
    calibrate(model, mlp_arrays(16), {"h": S8}, cache_dir=tmp_path)
    weight = model.graph.initializers["w"]
    assert weight.const_value is not None
    weight.const_value = ir.tensor(weight.const_value.numpy() * 2, name="w")
    calibrate(model, mlp_arrays(16), {"h": U8}, cache_dir=tmp_path)
    assert len(session_counter) == 4
    assert len(list(tmp_path.glob("calibration-*.json"))) == 4


class Reshuffled:
    """A re-iterable source that yields other data on every read, like a shuffling DataLoader."""

    def __init__(self) -> None:
        self.reads = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.reads += 1
        yield mlp_arrays(8, seed=self.reads)


def test_data_that_changes_between_reads_is_not_cached(tmp_path: Path) -> None:
    source = Reshuffled()
    stats = calibrate(build(MLP), source, {"h": U8}, cache_dir=tmp_path)
    assert source.reads == 2
    assert any("changed between its two reads" in note for note in stats.notes)
    assert not list(tmp_path.glob("calibration-*.json"))


def test_an_unreadable_cache_entry_is_recomputed_with_a_note(tmp_path: Path) -> None:
    model = build(MLP)
    first = calibrate(model, mlp_arrays(16), {"h": U8}, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("calibration-*.json")
    entry.write_bytes(b"garbage")
    again = calibrate(model, mlp_arrays(16), {"h": U8}, cache_dir=tmp_path)
    assert not again.from_cache
    assert again.notes and "was unreadable and was recomputed" in again.notes[0]
    assert_same_stats(first, again)
    assert calibrate(model, mlp_arrays(16), {"h": U8}, cache_dir=tmp_path).from_cache


# ---------------------------------------------------------------------------------------------
# MiniLM: the real model on real sentences

SENTENCES = 64
BATCH = 16


@pytest.fixture(scope="module")
def minilm() -> ir.Model:
    return ir.load(example_path("minilm"))


def float_node_outputs(model: ir.Model) -> list[str]:
    return [
        str(v.name) for node in model.graph for v in node.outputs if v.dtype == ir.DataType.FLOAT
    ]


def input_name(node: ir.Node, index: int) -> str:
    value = node.inputs[index]
    assert value is not None and value.name is not None
    return value.name


def linear_inputs(model: ir.Model) -> list[str]:
    """The activation inputs of MatMuls with a constant weight (the linear layers), once each."""
    names = (
        input_name(node, 0)
        for node in model.graph
        if node.op_type == "MatMul"
        and node.inputs[1] is not None
        and node.inputs[1].is_initializer()
    )
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def minilm_stats(minilm: ir.Model) -> CalibrationStats:
    """Every float tensor of MiniLM over 64 real sentences, batches of 16, variable lengths."""
    requests = dict.fromkeys(float_node_outputs(minilm), U8)
    return calibrate(
        minilm, Sentences(calibration_sentences(SENTENCES)), requests, batch_size=BATCH
    )


def test_minilm_exactly_the_mask_fill_tensors_carry_the_sentinel(
    minilm: ir.Model, minilm_stats: CalibrationStats
) -> None:
    """The additive mask (Where → −FLT_MAX) and the six pre-Softmax scores it is added to."""
    softmax_inputs = {input_name(n, 0) for n in minilm.graph if n.op_type == "Softmax"}
    mask_fills = {
        str(n.outputs[0].name)
        for n in minilm.graph
        if n.op_type == "Where"
        and any(
            i is not None and i.const_value is not None and i.const_value.numpy().min() < -1e30
            for i in n.inputs
        )
    }
    flagged = set(minilm_stats.flagged("sentinel"))
    assert flagged == softmax_inputs | mask_fills
    assert len(flagged) == 7
    for name in softmax_inputs:
        rmin, rmax = minilm_stats.range(name)
        assert -1e3 < float(rmin) < float(rmax) < 1e3, (name, rmin, rmax)
    softmax_outputs = [str(n.outputs[0].name) for n in minilm.graph if n.op_type == "Softmax"]
    assert not any(minilm_stats[name].sentinel for name in softmax_outputs)


def test_minilm_linear_inputs_match_a_direct_run(
    minilm: ir.Model, minilm_stats: CalibrationStats
) -> None:
    from qcompiler.backends.ort.session import make_session

    names = linear_inputs(minilm)
    assert len(names) == 24  # Q, K, V share one input: 6 layers × (QKV, out, up, down)
    picked = names[:3]
    copy = ir.from_proto(ir.to_proto(minilm))
    values = ir.convenience.create_value_mapping(copy.graph)
    copy.graph.outputs.extend(values[n] for n in picked)
    session = make_session(copy)
    sentences = calibration_sentences(SENTENCES)
    batches = [minilm_feeds(sentences[i : i + BATCH]) for i in range(0, SENTENCES, BATCH)]
    runs = [dict(zip(picked, session.run(picked, feeds), strict=True)) for feeds in batches]
    tokens = sum(f["input_ids"].size for f in batches)
    for name in picked:
        rmin, rmax = minilm_stats.range(name)
        # Exposing other outputs changes which fusions ORT applies: observed 2.5e-7 relative.
        assert float(rmin) == pytest.approx(min(float(r[name].min()) for r in runs), rel=1e-6)
        assert float(rmax) == pytest.approx(max(float(r[name].max()) for r in runs), rel=1e-6)
        assert minilm_stats[name].observer.stats.count == tokens * runs[0][name].shape[-1]
        assert not minilm_stats[name].sentinel


def test_minilm_graph_fingerprint_is_fast(minilm: ir.Model) -> None:
    """Hashing the 91 MB model: observed 0.09-0.10 s; allowed 1 s (shared machines vary 3×)."""
    start = time.perf_counter()
    graph_fingerprint(minilm)
    assert time.perf_counter() - start < 1.0


def test_minilm_streaming_equals_one_big_batch(minilm: ir.Model) -> None:
    """MinMax streams exactly: 4 batches of 16 give the range of one batch of 64 (same padding).

    Observed: identical ranges; allowed: 1e-6 relative (GEMM blocking may depend on the rows)."""
    arrays = minilm_feeds(calibration_sentences(SENTENCES))
    requests = dict.fromkeys(linear_inputs(minilm)[:6], U8)
    streamed = calibrate(minilm, arrays, requests, batch_size=BATCH)
    whole = calibrate(minilm, arrays, requests, batch_size=SENTENCES)
    assert (streamed.batches, whole.batches) == (4, 1)
    for name in requests:
        np.testing.assert_allclose(streamed.range(name), whole.range(name), rtol=1e-6)


def test_minilm_cache_hit_is_fast_and_runs_nothing(
    minilm: ir.Model, tmp_path: Path, session_counter: list[int]
) -> None:
    requests = dict.fromkeys(linear_inputs(minilm), U8)
    data = Sentences(calibration_sentences(SENTENCES))
    start = time.perf_counter()
    run = calibrate(minilm, data, requests, batch_size=BATCH, cache_dir=tmp_path)
    run_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hit = calibrate(minilm, data, requests, batch_size=BATCH, cache_dir=tmp_path)
    hit_seconds = time.perf_counter() - start
    assert session_counter == [1] and hit.from_cache
    assert_same_stats(run, hit)
    assert hit_seconds < run_seconds / 3, (hit_seconds, run_seconds)


RSS_SCRIPT = """
import json, resource, sys, time
import onnx_ir as ir
from qcompiler.calibrate import Sentences, calibrate
from qcompiler.examples import example_path
from qcompiler.examples.text import calibration_sentences
from qcompiler.quant.spec import QuantSpec
from tests.test_calibrate import float_node_outputs
model = ir.load(example_path("minilm"))
requests = dict.fromkeys(float_node_outputs(model), QuantSpec(ir.DataType.UINT8, False))
sentences = Sentences(calibration_sentences(int(sys.argv[1])), max_length=16)
start = time.perf_counter()
stats = calibrate(model, sentences, requests, batch_size=16)
print(json.dumps({"seconds": time.perf_counter() - start, "batches": stats.batches,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow
def test_minilm_peak_memory_does_not_grow_with_batches() -> None:
    """Peak RSS with 512 sentences (32 batches) equals that with 64 (4 batches): every MiniLM
    float tensor (241) requested, batches of 16 truncated to 16 tokens, so that every batch has
    the same shape and only their number differs (without truncation the peak follows the
    longest batch: 1158 MB at 63 tokens, 1233 MB at 71).

    Observed: 658 MB and 658 MB (1.4 s and 6.8 s); allowed: 16 MB more at 512.
    """
    runs = {}
    for n in (64, 512):
        result = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(n)], capture_output=True, text=True, check=True
        )
        runs[n] = json.loads(result.stdout.strip().splitlines()[-1])
    assert (runs[64]["batches"], runs[512]["batches"]) == (4, 32)
    assert runs[512]["max_rss_mb"] - runs[64]["max_rss_mb"] < 16, runs
