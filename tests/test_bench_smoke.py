"""The pure parts of tools/bench_vs_ort.py: resampling, padding, metrics, kernel counts, tables.

The benchmark itself takes minutes (docs/benchmarks.md); these check the pieces its numbers
rest on, in milliseconds.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_vs_ort.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_vs_ort", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vs_ort"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def test_bilinear_upsampling_uses_half_pixel_centres(bench: ModuleType) -> None:
    # 2 → 4 with half-pixel centres samples at x = 0, 0.25, 0.75, 1 (edges clamped).
    resize = bench.bilinear_matrix(2, 4)
    np.testing.assert_allclose(resize @ np.array([0.0, 4.0]), [0.0, 1.0, 3.0, 4.0], atol=1e-12)
    np.testing.assert_allclose(bench.bilinear_matrix(28, 224).sum(axis=1), 1.0, atol=1e-12)


def test_preprocess_makes_normalized_three_channel_images(bench: ModuleType) -> None:
    images = np.full((2, 28, 28), 255, dtype=np.uint8)
    out = bench.preprocess(images)
    assert out.shape == (2, 3, 224, 224) and out.dtype == np.float32
    expected = (1.0 - bench.IMAGENET_MEAN) / bench.IMAGENET_STD
    np.testing.assert_allclose(out[0, :, 100, 100], expected, rtol=1e-6)


def test_pad_feeds_pads_and_truncates_to_the_length(bench: ModuleType) -> None:
    feeds = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.array([[1, 1, 1]])}
    padded = bench.pad_feeds(feeds, 5)
    assert padded["input_ids"].tolist() == [[101, 7, 102, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0]]
    assert bench.pad_feeds(feeds, 2)["input_ids"].tolist() == [[101, 7]]


def test_mean_pool_ignores_padded_tokens(bench: ModuleType) -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])
    pooled = bench.mean_pool(hidden, np.array([[True, True, False]]))
    np.testing.assert_allclose(pooled, [[2.0, 1.0]])


def test_fidelity_of_identical_outputs_is_perfect(bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    hidden = [rng.standard_normal((3, 4, 8)).astype(np.float32)]
    feeds = [{"attention_mask": np.ones((3, 4), dtype=np.int64)}]
    same = bench.minilm_fidelity(hidden, hidden, feeds)
    assert same.mean_cos == pytest.approx(1.0) and same.sqnr_db == float("inf")
    # Noise at 1/10 of the signal's norm is 20 dB (notes/algorithms.md §18).
    noisy = [hidden[0] * 1.1]
    assert bench.minilm_fidelity(hidden, noisy, feeds).sqnr_db == pytest.approx(20.0, abs=1e-4)


def test_kernel_count_separates_integer_kernels_from_leftover_qdq(bench: ModuleType) -> None:
    ops = Counter(
        {"MatMulIntegerToFloat": 36, "QLinearSoftmax": 6, "QuantizeLinear": 24,
         "DequantizeLinear": 2, "MatMul": 12, "FusedMatMul": 1, "LayerNormalization": 13}
    )  # fmt: skip
    count = bench.KernelCount.from_ops(ops)
    assert count.integer == Counter({"MatMulIntegerToFloat": 36, "QLinearSoftmax": 6})
    assert (count.quantize, count.dequantize, count.float_linear) == (24, 2, 13)
    assert count.integer_text() == "36 MatMulIntegerToFloat, 6 QLinearSoftmax"


def test_latency_ratios_are_relative_to_fp32_medians(bench: ModuleType) -> None:
    ratios = bench.latency_ratios({"fp32": [1.0, 2.0, 3.0], "q": [1.0, 1.0, 5.0]})
    assert ratios["fp32"].ratio == 1.0
    assert ratios["q"].ratio == pytest.approx(0.5) and ratios["q"].median_ms == 1000.0


def test_markdown_table_escapes_pipes(bench: ModuleType) -> None:
    table = bench.Table("t", ("a", "b"), [("x|y", "1")])
    assert table.markdown().splitlines() == ["| a | b |", "|---|---:|", "| x\\|y | 1 |"]


def test_main_configs_cover_the_requested_grid(bench: ModuleType) -> None:
    names = [c.name for c in bench.main_configs()]
    assert len(names) == len(set(names)) == 14
    assert "ORT Percentile, MatMul, no output Q" in names and "qcompiler w8a8" in names
    assert "qcompiler repq-w8a8" in names
    spec = bench.CompileSpec(bench.main_configs()[7], "m.onnx", "o.onnx", {"kind": "x"})
    assert bench.CompileSpec.from_json(spec.to_json()) == spec
