"""``report``: one row per quantized layer, from the sidecar, optionally measured on data.

Without a float model the report says what ``compile`` decided and what ORT runs: per layer the
activation's calibrated range, scale and zero point, both tensors' type, bits and granularity,
and the kernel (integer, or a float simulation with the reason). With the float model and data
it adds, per layer, the activation's own quantization SQNR and outlier ratio, the end-to-end
sensitivity and a suggested remedy (:mod:`qcompiler.report.sensitivity`), and sorts the layers
worst first. A RepQ compile adds one row per reparameterized activation
(:mod:`qcompiler.report.repq`); its float model is folded the same way before it is measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from qcompiler.api import canonicalize
from qcompiler.ir.edit import expose_outputs
from qcompiler.ir.provenance import module_name
from qcompiler.quant.plan import LinearDecision
from qcompiler.quant.spec import QuantSpec
from qcompiler.report.evaluate import Pool
from qcompiler.report.repq import (
    SiteRow,
    measured_site_rows,
    replay_reparameterization,
    site_rows,
)
from qcompiler.report.sensitivity import (
    ActivationStats,
    LayerSensitivity,
    PlanMismatchError,
    Sensitivities,
    activation_origins,
    activation_stats,
    check_plan_fits,
    first_batch,
    layer_sensitivities,
    remedy,
)
from qcompiler.report.sidecar import Sidecar

REPORT_SCHEMA = "qcompiler.report/1"
INPUT_SHA_KEY = "qcompiler.input_sha256"


@dataclass(frozen=True)
class LayerRow:
    """What the sidecar says about one quantized layer."""

    node: str
    module: str | None
    label: str
    """The module path without the prefix all layers share (``layer.0.attention.self.query``),
    or the node name."""
    op_type: str
    activation: str
    activation_range: tuple[Any, Any] | None
    """Calibrated (min, max); None for dynamic activations (measured per batch at run time)."""
    scale: Any
    zero_point: Any
    activation_spec: QuantSpec | None
    """None when the activation is quantized dynamically (DynamicQuantizeLinear, uint8)."""
    weight_spec: QuantSpec | None
    kernel: str
    integer: bool
    kernel_reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "module": self.module,
            "label": self.label,
            "op_type": self.op_type,
            "activation": self.activation,
            "activation_range": list(self.activation_range) if self.activation_range else None,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "activations": _spec_json(self.activation_spec),
            "dynamic": self.activation_spec is None,
            "weights": _spec_json(self.weight_spec),
            "kernel": self.kernel,
            "integer": self.integer,
            "kernel_reason": self.kernel_reason,
        }


@dataclass(frozen=True)
class Diagnosis:
    """What the data says about one layer."""

    activation: ActivationStats
    sensitivity: LayerSensitivity
    remedy: str

    def to_json(self) -> dict[str, Any]:
        return {
            "own_sqnr_db": self.activation.own_sqnr_db,
            "outlier_ratio": self.activation.outlier_ratio,
            "sensitivity": {
                "one_minus_cosine": self.sensitivity.one_minus_cosine,
                "sqnr_db": self.sensitivity.sqnr_db,
            },
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class Report:
    model: str
    sidecar: Sidecar
    rows: list[LayerRow]
    """Quantized layers: graph order, or worst first when measured."""
    diagnoses: dict[str, Diagnosis]
    sensitivity: Sensitivities | None
    sites: list[SiteRow]
    """Reparameterized activations (RepQ), measured when the report is."""

    @property
    def folded_activations(self) -> set[str]:
        """Tensors RepQ reparameterized: calibrated per channel, quantized per tensor after."""
        channelwise = self.sidecar.plan.channelwise.values()
        return {str(s.reparameterized) for s in channelwise if s.reparameterized}

    @property
    def kept_float(self) -> list[LinearDecision]:
        return [d for d in self.sidecar.plan.linear.values() if not d.quantize]

    def top(self, count: int | None) -> Report:
        """The same report with only the first ``count`` rows (all with None)."""
        rows = self.rows if count is None else self.rows[:count]
        return dataclasses.replace(self, rows=rows)

    def to_json(self) -> dict[str, Any]:
        plan = self.sidecar.plan
        return {
            "schema": REPORT_SCHEMA,
            "model": self.model,
            "sidecar": str(self.sidecar.path),
            "recipe": plan.recipe,
            "mode": plan.mode,
            "layers_quantized": len(plan.quantized()),
            "layers": [
                {
                    **row.to_json(),
                    **(self.diagnoses[row.node].to_json() if row.node in self.diagnoses else {}),
                }
                for row in self.rows
            ],
            "kept_float": [{"node": d.node, "reason": d.reason} for d in self.kept_float],
            "reparameterized": [row.to_json() for row in self.sites],
            "sensitivity": None
            if self.sensitivity is None
            else {
                "output": self.sensitivity.output,
                "samples": self.sensitivity.samples,
                "seconds": self.sensitivity.seconds,
                "reused": self.sensitivity.reused,
            },
        }


def sidecar_report(name: str, sidecar: Sidecar, quantized: ir.Model) -> Report:
    """The unmeasured report: one row per quantized layer in plan order, with torch module
    names read from the ``quantized`` model's nodes."""
    modules = {node.name: module_name(node) for node in quantized.graph if node.name}
    decisions = sidecar.plan.quantized()
    labels = _labels({d.node: modules.get(d.node) for d in decisions})
    rows = [_row(d, sidecar, modules.get(d.node), labels[d.node]) for d in decisions]
    return Report(name, sidecar, rows, {}, None, site_rows(sidecar.plan))


def measured_report(
    report: Report,
    float_model: ir.Model,
    float_sha256: str,
    data: object,
    *,
    target_opset: int,
    output: str | None,
    pool: Pool,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    cache_dir: Path | None = None,
) -> Report:
    """``report`` with every layer measured on ``data``.

    ``float_model`` (whose file has ``float_sha256``) is canonicalized in place to
    ``target_opset``, the quantized model's opset, as ``compile`` did, so that it has the plan's
    node and tensor names. ``output`` (default: the first graph output) may be any value of that
    graph: it is exposed as an output. With ``cache_dir``, sensitivities measured before for
    the same model, plan, batch and output are reused (an interrupted report resumes).
    """
    sidecar = report.sidecar
    _check_same_input(sidecar, float_sha256)
    output = output or str(float_model.graph.outputs[0].name)
    canonicalize(float_model, target_opset=target_opset)
    expose_outputs(float_model, [output])
    plan = sidecar.plan
    sites = measured_site_rows(float_model, plan, data)
    replay_reparameterization(float_model, plan)
    check_plan_fits(float_model, plan)
    stats = activation_stats(float_model, plan, data, batch_size)
    feeds = first_batch(float_model, data)
    sensitivities = layer_sensitivities(float_model, plan, feeds, output, pool, progress, cache_dir)
    origins = activation_origins(float_model)
    diagnoses = {
        d.node: Diagnosis(
            stats[d.activation],
            sensitivities.layers[d.node],
            remedy(stats[d.activation], sensitivities.layers[d.node], origins.get(d.activation)),
        )
        for d in plan.quantized()
    }
    rows = sorted(report.rows, key=lambda r: -diagnoses[r.node].sensitivity.one_minus_cosine)
    return Report(report.model, sidecar, rows, diagnoses, sensitivities, sites)


def _row(decision: LinearDecision, sidecar: Sidecar, module: str | None, label: str) -> LayerRow:
    params = sidecar.plan.activation_params.get(decision.activation)
    kernel = sidecar.kernels.get(decision.weight)
    return LayerRow(
        node=decision.node,
        module=module,
        label=label,
        op_type=decision.op_type,
        activation=decision.activation,
        activation_range=sidecar.ranges.get(decision.activation),
        scale=params.scale.tolist() if params else None,
        zero_point=params.zero_point.astype(int).tolist() if params else None,
        activation_spec=decision.activations,
        weight_spec=decision.weights,
        kernel=kernel.kernel if kernel else "unknown",
        integer=bool(kernel and kernel.integer),
        kernel_reason=kernel.reason if kernel else "the sidecar lists no kernel for this weight",
    )


def _labels(modules: Mapping[str, str | None]) -> dict[str, str]:
    """Node → its module path without the leading parts every module shares (else the node);
    an index keeps its container's name (``layer.0.attention``, not ``0.attention``)."""
    paths = [m.split(".") for m in modules.values() if m]
    shared = 0
    while all(len(p) > shared + 1 for p in paths) and len({p[shared] for p in paths}) == 1:
        shared += 1
    if shared and any(p[shared].isdigit() for p in paths):
        shared -= 1
    return {node: ".".join(m.split(".")[shared:]) if m else node for node, m in modules.items()}


def _spec_json(spec: QuantSpec | None) -> dict[str, Any] | None:
    return None if spec is None else {**spec.to_json(), "bits": spec.bits}


def _check_same_input(sidecar: Sidecar, float_sha256: str) -> None:
    expected = sidecar.provenance.get(INPUT_SHA_KEY)
    if expected != float_sha256:
        raise PlanMismatchError(
            f"the --float model is not the one this model was compiled from (its sha256 "
            f"{float_sha256[:12]}… differs from {INPUT_SHA_KEY} {str(expected)[:12]}… in "
            f"{sidecar.path.name})"
        )
