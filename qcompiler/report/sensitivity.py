"""Where the quantization error comes from: per layer, measured on the float model.

Two measurements per quantized layer, both on the float model canonicalized as ``compile`` did
(so its node and tensor names are the plan's):

- **own SQNR** of the layer's activation: the tensor is made a graph output
  (:func:`~qcompiler.ir.edit.expose_outputs` on a copy), fake-quantized with the plan's
  calibrated parameters (dynamic layers: each batch's own range, as DynamicQuantizeLinear does)
  and compared with itself, over all the data. The same pass measures each activation channel's
  range (last axis) and the **outlier ratio** max/median channel range: large when a few channels
  dominate the per-tensor range, which is what reparameterization (RepQ-ViT, notes/algorithms.md
  §1–2) and smoothing (SmoothQuant, §6) address.
- **sensitivity**: the end-to-end output error when *only* that layer is quantized. One model per
  layer is built from a copy of the float model with the plan reduced to that layer and the one
  materializer (:class:`~qcompiler.passes.materialize.MaterializeQDQ`), and run on a small fixed
  batch: 1 − mean cosine and SQNR of the output against the float output.

:func:`remedy` turns both into a suggestion (thresholds below, measured on MiniLM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qcompiler.backends.ort.session import make_session
from qcompiler.calibrate.data import CalibrationStream, Feeds, model_inputs
from qcompiler.errors import QCompilerError
from qcompiler.ir.edit import expose_outputs
from qcompiler.passes.analyses.norm_linear import SITE_KINDS, find_norm_sites
from qcompiler.passes.materialize import MaterializeQDQ
from qcompiler.quant.plan import LinearDecision, QuantPlan
from qcompiler.quant.spec import QuantParams, QuantSpec
from qcompiler.quant.uniform import compute_params, fake_quantize
from qcompiler.report.evaluate import Pool, load_session, pooled, run_outputs
from qcompiler.report.metrics import ErrorEnergy, cosine_per_sample, sqnr_db
from qcompiler.report.sensitivity_cache import SensitivityCache

SENSITIVITY_SAMPLES = 16
"""Samples in the fixed batch each single-layer model runs on."""
OUTLIER_RATIO = 8.0
"""Max/median channel range from which outlier channels dominate a per-tensor range: the median
channel then uses at most 1/8 of the grid (3 of 8 bits lost). MiniLM on 64 (256) sentences: FFN
inputs (post-attention LayerNorm, GELU) 8.2–16.4 (8.1–13.9) with own SQNR ≤ 25.6 dB; Q/K/V and
out-proj inputs 2.1–6.2. The ratio depends on the data: more samples widen every range."""
SENSITIVE_SQNR_DB = 30.0
"""Output SQNR below which one layer alone costs too much: 30 dB ⇔ normwise 0.032 ⇔
1 − cos ≈ 5e-4 (§18); MiniLM's worst single layer measures 25.5 dB, its median 42 dB."""
NONLINEAR_OPS = frozenset({"Gelu", "Relu", "Erf", "Sigmoid", "Tanh", "Softmax"})
"""Producers the inverse smoothing scales cannot be folded through (§6: "after GELU there is
nowhere to fold: insert a Mul")."""
DYNAMIC_ACTIVATIONS = QuantSpec(ir.DataType.UINT8, symmetric=False)
"""What DynamicQuantizeLinear does: uint8, asymmetric, the batch's own [min, max]."""


class PlanMismatchError(QCompilerError):
    """The float model given to ``report`` is not the one the sidecar's plan was made for."""


@dataclass(frozen=True)
class ActivationStats:
    tensor: str
    own_sqnr_db: float
    outlier_ratio: float
    """Max over median of the per-channel ranges (last axis); 1 when channels are alike."""


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    one_minus_cosine: float
    sqnr_db: float


@dataclass(frozen=True)
class Sensitivities:
    layers: dict[str, LayerSensitivity]
    output: str
    samples: int
    seconds: float
    reused: int = 0
    """Layers read from the cache instead of measured again."""


def check_plan_fits(model: ir.Model, plan: QuantPlan) -> None:
    """Every quantized layer of ``plan`` is a node of ``model`` reading the planned tensors."""
    nodes = {node.name: node for node in model.graph}
    for decision in plan.quantized():
        node = nodes.get(decision.node)
        inputs = [v.name if v is not None else None for v in node.inputs] if node else []
        if inputs[:2] != [decision.activation, decision.weight]:
            raise PlanMismatchError(
                f"the float model has no node '{decision.node}' reading '{decision.activation}' "
                f"and '{decision.weight}' as the plan says: give the model that was compiled"
            )


def activation_origins(model: ir.Model) -> dict[str, str]:
    """Tensor → what produces it: a norm's site kind (``post-norm/residual``, ``pre-norm``,
    ``no-linear``) for norm outputs, else the producer's op type (``Gelu``, ``Reshape``)."""
    origins = {str(value.name): node.op_type for node in model.graph for value in node.outputs}
    origins.update((site.output, site.kind) for site in find_norm_sites(model).sites)
    return origins


def activation_stats(
    model: ir.Model, plan: QuantPlan, data: object, batch_size: int
) -> dict[str, ActivationStats]:
    """Own SQNR and outlier ratio of every quantized layer's activation, over all of ``data``."""
    quantizers = {d.activation: _Quantizer.of(d, plan) for d in plan.quantized()}
    names = list(quantizers)
    session = load_session(expose_outputs(model.clone(), names), "float")
    stream = CalibrationStream(data, model_inputs(model), batch_size)
    for index, feeds in enumerate(stream):
        for name, array in run_outputs(session, names, feeds, index).items():
            quantizers[name].add(array)
    return {name: quantizer.stats(name) for name, quantizer in quantizers.items()}


def layer_sensitivities(
    model: ir.Model,
    plan: QuantPlan,
    feeds: Feeds,
    output: str,
    pool: Pool,
    progress: Callable[[int], None] | None = None,
    cache_dir: Path | None = None,
) -> Sensitivities:
    """The output error of ``model`` with each quantized layer alone quantized, on ``feeds``.

    With ``cache_dir``, layers measured before (even by an interrupted run) are read back and
    each new one is stored as soon as it is measured (:mod:`qcompiler.report.sensitivity_cache`).
    """
    start = time.perf_counter()
    cache = None if cache_dir is None else SensitivityCache(
        cache_dir, model, plan, feeds, output, pool.value
    )  # fmt: skip
    measured = cache.load() if cache is not None else {}
    reused = len(measured)
    reference = None
    for decision in plan.quantized():
        if decision.node not in measured:
            if reference is None:
                reference = _output(model, output, feeds, pool)
            measured[decision.node] = _single_layer_error(model, plan, decision, reference, feeds,
                                                          output, pool)  # fmt: skip
            if cache is not None:
                cache.store(measured)
        if progress is not None:
            progress(len(measured))
    layers = {d.node: LayerSensitivity(d.node, *measured[d.node]) for d in plan.quantized()}
    samples = len(next(iter(feeds.values())))
    return Sensitivities(layers, output, samples, time.perf_counter() - start, reused)


def _single_layer_error(
    model: ir.Model,
    plan: QuantPlan,
    decision: LinearDecision,
    reference: np.ndarray,
    feeds: Feeds,
    output: str,
    pool: Pool,
) -> tuple[float, float]:
    """(1 − mean cosine, SQNR dB) of the output with only ``decision``'s layer quantized."""
    single = model.clone()
    MaterializeQDQ(single_layer_plan(plan, decision))(single)
    actual = _output(single, output, feeds, pool)
    return float(1.0 - cosine_per_sample(reference, actual).mean()), sqnr_db(reference, actual)


def first_batch(model: ir.Model, data: object, samples: int = SENSITIVITY_SAMPLES) -> Feeds:
    """The first ``samples`` samples of ``data``, checked against the model's inputs."""
    return next(iter(CalibrationStream(data, model_inputs(model), samples)))


def single_layer_plan(plan: QuantPlan, decision: LinearDecision) -> QuantPlan:
    """``plan`` reduced to one layer (with its activation's parameters when static)."""
    params = {name: p for name, p in plan.activation_params.items() if name == decision.activation}
    return QuantPlan(plan.recipe, plan.mode, {decision.node: decision}, params)


def _output(model: ir.Model, output: str, feeds: Feeds, pool: Pool) -> np.ndarray:
    array = run_outputs(make_session(model), [output], feeds, 0)[output]
    return pooled(array, feeds, pool, output)


@dataclass
class _Quantizer:
    """Fake-quantizes one activation batch by batch and accumulates its error and ranges."""

    spec: QuantSpec
    params: QuantParams | None
    """None for dynamic layers: each batch gets its own (s, z)."""
    energy: ErrorEnergy = field(default_factory=ErrorEnergy)
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    @classmethod
    def of(cls, decision: LinearDecision, plan: QuantPlan) -> _Quantizer:
        if decision.activations is None:
            return cls(DYNAMIC_ACTIVATIONS, None)
        return cls(decision.activations, plan.activation_params[decision.activation])

    def add(self, x: np.ndarray) -> None:
        params = self.params or compute_params(x.min(), x.max(), self.spec)
        self.energy.add(x, fake_quantize(x, params, self.spec))
        channels = x.reshape(-1, x.shape[-1])
        low, high = channels.min(axis=0), channels.max(axis=0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    def stats(self, tensor: str) -> ActivationStats:
        assert self.low is not None and self.high is not None
        ranges = (self.high - self.low).astype(np.float64)
        median = float(np.median(ranges))
        ratio = float(ranges.max() / median) if median > 0 else float("inf")
        return ActivationStats(tensor, self.energy.sqnr_db, ratio)


def remedy(activation: ActivationStats, sensitivity: LayerSensitivity, origin: str | None) -> str:
    """A suggestion for one layer, from its data ("" when none is needed).

    An activation whose range is dominated by outlier channels (ratio ≥ ``OUTLIER_RATIO``) is
    reparameterized when a norm produces it (RepQ folds the per-channel scales into γ/β; a
    post-LN site also needs the residual restore, notes/algorithms.md §2), else smoothed into
    the weights (SmoothQuant, §6), through an inserted Mul after a nonlinearity, where there is
    nothing to fold the inverse scales into. A layer that is sensitive without outliers stays
    float.
    """
    if activation.outlier_ratio >= OUTLIER_RATIO:
        if origin == "post-norm/residual":
            return "reparameterize (RepQ, post-LN)"
        if origin in SITE_KINDS:
            return "reparameterize (RepQ)"
        if origin in NONLINEAR_OPS:
            return f"smooth (SmoothQuant, Mul after {origin})"
        return "smooth (SmoothQuant)"
    if sensitivity.sqnr_db < SENSITIVE_SQNR_DB:
        return "keep float"
    return ""
