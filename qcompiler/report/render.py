"""Rich tables for ``eval`` and ``report`` (the JSON forms come from the objects' ``to_json``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.table import Table

from qcompiler.quant.spec import QuantSpec
from qcompiler.report.evaluate import Evaluation, Pool
from qcompiler.report.layers import Diagnosis, LayerRow, Report
from qcompiler.report.metrics import TOP_K, TopKKind


def evaluation_table(evaluation: Evaluation, source: str) -> Table:
    """One row per compared output: cosine, SQNR, normwise and max error, top-k agreement."""
    pooled = " (mean-pooled)" if evaluation.pool is Pool.MEAN else ""
    table = Table(title=f"Quantized vs float{pooled} on {source}")
    for column in ("output", "samples", "cosine mean", "cosine min", "SQNR", "normwise",
                   "max |error|", *(f"top-{k}" for k in TOP_K)):  # fmt: skip
        table.add_column(column, justify="left" if column == "output" else "right")
    for c in evaluation.comparisons:
        table.add_row(
            c.output,
            str(c.samples),
            f"{c.cosine_mean:.5f}",
            f"{c.cosine_min:.5f}",
            format_db(c.sqnr_db),
            f"{c.normwise_error:.4f}",
            f"{c.max_abs_error:.4g}",
            *(f"{c.topk[k]:.3f}" if k in c.topk else "—" for k in TOP_K),
        )
    table.caption = _evaluation_caption({c.topk_kind for c in evaluation.comparisons})
    return table


def report_tables(report: Report) -> Group:
    """The layers table and, when measured, the sensitivity table (worst first)."""
    tables: list[Any] = [_layers_table(report)]
    if report.sites:
        tables.append(_sites_table(report))
    if report.sensitivity is not None:
        tables.append(_sensitivity_table(report))
    return Group(*tables)


def _sites_table(report: Report) -> Table:
    table = Table(title="Reparameterized activations (RepQ): per-channel codes, per-tensor kernels")
    columns = ("activation", "producer", "folded into", "float ops", "r1 range", "r2 range",
               "SQNR per-tensor", "SQNR RepQ")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in report.sites:
        site = row.site
        r1, r2 = site.r1_range, site.r2_range
        table.add_row(
            site.activation,
            site.producer_op,
            "γ/β" if site.folded_into == "LayerNormalization" else str(site.folded_into),
            str(site.float_ops_added),
            f"{r1[0]:.3g} … {r1[1]:.3g}" if r1 else "—",
            f"{r2[0]} … {r2[1]}" if r2 else "—",
            format_db(row.sqnr_per_tensor_db),
            format_db(row.sqnr_reparameterized_db),
        )
    table.caption = (
        "r1 = s/s̃ scales the readers' weight rows, r2 = z − z̃ (integers) shifts their bias; "
        "float ops: the restoring Mul of a post-LN residual, or the Mul + Add of an explicit "
        "affine. SQNR of that activation on the sensitivity batch (with --float and --data)."
    )
    return table


def _layers_table(report: Report) -> Table:
    plan = report.sidecar.plan
    table = Table(title=f"Quantized layers of {report.model} ({plan.recipe})")
    for column in ("layer", "activation", "range", "scale", "zero pt", "types (x · W)",
                   "ORT kernel"):  # fmt: skip
        table.add_column(column, justify="right" if column in ("scale", "zero pt") else "left")
    folded = report.folded_activations
    for row in report.rows:
        table.add_row(
            row.label,
            row.activation,
            "folded (RepQ)" if row.activation in folded else _range(row.activation_range),
            format_number(row.scale),
            format_number(row.zero_point),
            f"{describe_spec(row.activation_spec)} · {describe_spec(row.weight_spec)}",
            row.kernel if row.integer else f"simulated ({row.kernel}): {row.kernel_reason}",
        )
    table.caption = _layers_caption(report)
    return table


def _sensitivity_table(report: Report) -> Table:
    assert report.sensitivity is not None
    sensitivity = report.sensitivity
    table = Table(
        title=f"Sensitivity: '{sensitivity.output}' with only that layer quantized, worst first"
    )
    for column in ("layer", "own SQNR", "outliers", "1 − cos", "output SQNR", "remedy"):
        table.add_column(column, justify="left" if column in ("layer", "remedy") else "right")
    for row in report.rows:
        table.add_row(*sensitivity_cells(row, report.diagnoses[row.node]))
    table.caption = (
        f"{len(sensitivity.layers)} single-layer models on {sensitivity.samples} samples in "
        f"{sensitivity.seconds:.1f} s; own SQNR: the activation against its own fake-quantized "
        "copy; outliers: max/median channel range"
    )
    return table


def sensitivity_cells(row: LayerRow, diagnosis: Diagnosis) -> tuple[str, ...]:
    """One row of the sensitivity table: layer, own SQNR, outliers, 1 − cos, SQNR, remedy."""
    return (
        row.label,
        format_db(diagnosis.activation.own_sqnr_db),
        f"{diagnosis.activation.outlier_ratio:.1f}×",
        f"{diagnosis.sensitivity.one_minus_cosine:.2e}",
        format_db(diagnosis.sensitivity.sqnr_db),
        diagnosis.remedy or "—",
    )


def _layers_caption(report: Report) -> str:
    quantized = len(report.sidecar.plan.quantized())
    integer = sum(1 for k in report.sidecar.kernels.values() if k.integer)
    parts = [f"{quantized} layers quantized, {integer} run as ORT integer kernels"]
    if len(report.rows) < quantized:
        parts.append(f"{len(report.rows)} shown")
    kept = report.kept_float
    if kept:
        reasons = sorted({d.reason for d in kept})
        parts.append(f"{len(kept)} kept float ({'; '.join(reasons)})")
    return "; ".join(parts)


def _evaluation_caption(kinds: set[TopKKind | None]) -> str:
    notes = {
        "classes": "top-k over the last axis (class scores)",
        "retrieval": "top-k: each sample's nearest neighbours among the samples (cosine)",
    }
    metrics = "cosine per sample over the flattened output; SQNR and normwise over all samples"
    return "; ".join([metrics, *(notes[k] for k in sorted(k for k in kinds if k is not None))])


def describe_spec(spec: QuantSpec | None) -> str:
    """``s8 sym ch1``, ``u8 asym tensor``: type, symmetry and granularity in a few characters."""
    if spec is None:
        return "u8 dynamic"
    sign = "s" if spec.dtype.is_signed() else "u"
    symmetry = "sym" if spec.symmetric else "asym"
    granularity = spec.granularity
    where = {"per-tensor": "tensor", "per-channel": f"ch{granularity.axis}"}.get(
        granularity.kind, f"group{granularity.group_size}/{granularity.axis}"
    )
    return f"{sign}{spec.bits} {symmetry} {where}"


def _range(bounds: tuple[Any, Any] | None) -> str:
    if bounds is None:
        return "per batch"
    return f"[{format_number(bounds[0])}, {format_number(bounds[1])}]"


def format_number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, Sequence):
        return f"{len(value)} channels"
    return f"{value:.3g}"


def format_db(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) and value > 0 else f"{value:.1f} dB"
