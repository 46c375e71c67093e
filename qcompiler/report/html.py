"""``report --html``: the report as one self-contained HTML page (no scripts, no network).

The page is built from the same :class:`~qcompiler.report.layers.Report` that the terminal
tables show (:mod:`qcompiler.report.render`), plus the compile sidecar's pass log, and uses the
table writer and style sheet of ``inspect --html`` (:mod:`qcompiler.inspect.graphview`). Its
sections, each a ``<section>`` with a stable id:

- ``summary``: the model and its provenance as ``compile`` stamped it (recipe and its sha256,
  the float input's sha256, the calibration data's fingerprint, target opset, package versions,
  layers quantized / run as ORT integer kernels / simulated in float), from the sidecar.
- ``pass-log``: one row per compile pass from the sidecar's ``passes`` (what the pass manager
  recorded: whether it changed the graph, its counters, skips and notes, time and peak RSS).
- ``layers``: one row per quantized layer: the activation's calibrated range (sidecar
  calibration), the range its quantization grid covers, [(qmin − z)·s, (qmax − z)·s] from the
  plan's scale and zero point, the activation and weight types (bits, symmetry, granularity)
  and the kernel ORT runs (integer, or a float simulation with the reason: the fusibility).
- ``kept-float`` (collapsed: a partial recipe keeps most of a model float) and ``repq-sites``
  when the plan has such layers or RepQ sites (r1/r2 ranges from the sidecar; SQNR per-tensor
  vs reparameterized when measured).
- Measured (``--float`` and data) only: ``sensitivity``, the table worst first with each
  layer's own SQNR, outlier ratio, end-to-end 1 − cos and output SQNR and the suggested remedy
  (:mod:`qcompiler.report.sensitivity`); ``sensitivity-chart``, an SVG bar per layer of
  1 − cos on a log axis, coloured by remedy; and ``histograms``, one SVG (class ``histogram``)
  per activation of the worst layers: its values on the sensitivity batch (the float model,
  folded as compiled, run once more by :func:`activation_histograms`) in 64 bins over the
  values and the grid's clip range together, counts on a log scale, the clip range marked and
  the fraction of values beyond it given.

Every string that comes from the model or the sidecar is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompiler.inspect.graphview import PAGE_CSS as INSPECT_CSS
from qcompiler.inspect.graphview import html_section
from qcompiler.inspect.render import SectionTable
from qcompiler.ir.edit import expose_outputs
from qcompiler.ir.io import write_bytes_atomic
from qcompiler.report.evaluate import load_session, run_outputs
from qcompiler.report.layers import INPUT_SHA_KEY, LayerRow, Report
from qcompiler.report.render import describe_spec, format_db, format_number, sensitivity_cells
from qcompiler.report.sensitivity import first_batch

HISTOGRAMS = 6
"""Activations shown as histograms: those of the first (worst, when measured) rows."""
HISTOGRAM_BINS = 64
REMEDY_STYLES = {
    "": ("no remedy needed", "#7da7d9"),
    "keep": ("keep float", "#d9534f"),
    "smooth": ("smooth (SmoothQuant)", "#f0ad4e"),
    "reparameterize": ("reparameterize (RepQ)", "#9b72cf"),
}
"""Legend and bar colour by the remedy's first word (:func:`~qcompiler.report.sensitivity.remedy`
says "keep float", "smooth (…)", "reparameterize (…)" or nothing)."""
_PROVENANCE = "qcompiler."

PAGE_CSS = (
    INSPECT_CSS
    + """
td { font-variant-numeric: tabular-nums; }
#summary td:nth-child(2), #layers td:nth-child(2), #repq-sites td:nth-child(1),
#kept-float td:nth-child(1) { overflow-wrap: anywhere; min-width: 16em; }
#layers td:nth-child(n+3):nth-child(-n+7) { white-space: nowrap; }
section { margin-bottom: 1.5em; }
.histograms { display: grid; grid-template-columns: repeat(3, 400px); gap: 12px; }
figure.histogram { margin: 0; padding: 6px; border: 1px solid #ccc; }
figure.histogram figcaption { font-size: 12px; overflow-wrap: anywhere; }
.legend span { font-size: 12px; }
details summary { cursor: pointer; color: #555; }
"""
)


@dataclass(frozen=True)
class Histogram:
    """The values one activation took on the sensitivity batch, against its grid."""

    counts: np.ndarray
    edges: np.ndarray
    clip: tuple[float, float]
    """What the quantizer represents: the grid's range, or the batch's for a dynamic layer."""
    outside: float
    """Fraction of the values beyond ``clip`` (clipped by the quantizer)."""


def activation_histograms(
    float_model: ir.Model, report: Report, data: object, count: int = HISTOGRAMS
) -> dict[str, Histogram]:
    """Histograms of the activations of the first ``count`` rows on the sensitivity batch.

    ``float_model`` is the model :func:`~qcompiler.report.layers.measured_report` measured: it
    canonicalizes and folds it in place, so it has the plan's tensor names.
    """
    rows = report.rows[:count]
    names = list(dict.fromkeys(row.activation for row in rows))
    session = load_session(expose_outputs(float_model.clone(), names), "float")
    values = run_outputs(session, names, first_batch(float_model, data), 0)
    return {row.activation: _histogram(values[row.activation], row) for row in rows}


def _histogram(values: np.ndarray, row: LayerRow) -> Histogram:
    x = values.astype(np.float64).ravel()
    clip = grid_range(row) or (min(float(x.min()), 0.0), max(float(x.max()), 0.0))
    bounds = (min(float(x.min()), clip[0]), max(float(x.max()), clip[1]))
    counts, edges = np.histogram(x, bins=HISTOGRAM_BINS, range=bounds)
    outside = float(np.mean((x < clip[0]) | (x > clip[1])))
    return Histogram(counts, edges, clip, outside)


def grid_range(row: LayerRow) -> tuple[float, float] | None:
    """[(qmin − z)·s, (qmax − z)·s], the widest over channels; None for a dynamic layer."""
    spec = row.activation_spec
    if spec is None or row.scale is None:
        return None
    scale = np.asarray(row.scale, dtype=np.float64)
    zero = np.asarray(row.zero_point, dtype=np.float64)
    return float(((spec.qmin - zero) * scale).min()), float(((spec.qmax - zero) * scale).max())


def write_report_html(
    report: Report, path: str | os.PathLike[str], histograms: dict[str, Histogram]
) -> Path:
    """Write the page for ``report`` atomically; ``histograms`` by activation (may be empty)."""
    return write_bytes_atomic(path, report_html(report, histograms).encode("utf-8"))


def report_html(report: Report, histograms: dict[str, Histogram]) -> str:
    title = f"qcompiler report: {html.escape(report.model)}"
    body = [f"<h1>{title}</h1>", *_sections(report, histograms)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _sections(report: Report, histograms: dict[str, Histogram]) -> Iterable[str]:
    yield _section("summary", _summary_table(report))
    yield _section("pass-log", _pass_table(report), "changed: the pass modified the graph")
    yield _section("layers", _layers_table(report), _layers_caption(report))
    if report.kept_float:
        yield _kept_section(report)
    if report.sites:
        yield _section("repq-sites", _sites_table(report), _SITES_CAPTION)
    if report.sensitivity is None:
        yield (
            '<p class="note" id="unmeasured">Give --float MODEL and --data FILE.npz (or '
            "--example-text N) for each layer's sensitivity and activation histograms.</p>"
        )
        return
    yield _section("sensitivity", _sensitivity_table(report), _sensitivity_caption(report))
    yield _chart_section(report)
    yield _histogram_section(report, histograms)


def _section(key: str, table: SectionTable, caption: str = "") -> str:
    note = f'<p class="note">{html.escape(caption)}</p>' if caption and table.rows else ""
    return f'<section id="{key}">\n{html_section(table)}\n{note}</section>'


# ---- tables ------------------------------------------------------------------------------------


def _summary_table(report: Report) -> SectionTable:
    provenance = report.sidecar.provenance
    known = {
        "model": report.model,
        "sidecar": str(report.sidecar.path),
        "recipe": f"{report.sidecar.plan.recipe} ({report.sidecar.plan.mode})",
        "layers": _layer_counts(report),
        "float input sha256": provenance.get(INPUT_SHA_KEY, "—"),
        "versions": _versions(provenance.get(f"{_PROVENANCE}versions", "{}")),
    }
    shown = {INPUT_SHA_KEY, f"{_PROVENANCE}versions", f"{_PROVENANCE}recipe"}
    shown |= {f"{_PROVENANCE}layers_{kind}" for kind in ("quantized", "integer", "simulated")}
    rest = {
        key.removeprefix(_PROVENANCE).replace("_", " "): value
        for key, value in sorted(provenance.items())
        if key not in shown
    }
    rows = tuple((key, value) for key, value in {**known, **rest}.items())
    return SectionTable("Model", ("field", "value"), rows, "")


def _layer_counts(report: Report) -> str:
    quantized = len(report.sidecar.plan.quantized())
    integer = sum(1 for kernel in report.sidecar.kernels.values() if kernel.integer)
    return (
        f"{quantized} quantized: {integer} on ORT integer kernels, {quantized - integer} "
        f"simulated in float; {len(report.kept_float)} kept float"
    )


def _versions(text: str) -> str:
    versions: dict[str, str] = json.loads(text)
    return ", ".join(f"{package} {version}" for package, version in versions.items())


def _pass_table(report: Report) -> SectionTable:
    document = json.loads(report.sidecar.path.read_text(encoding="utf-8"))
    columns = ("pass", "semantics", "changed", "seconds", "peak RSS MB", "counters", "skips",
               "notes")  # fmt: skip
    rows = tuple(_pass_row(record) for record in document.get("passes", []))
    return SectionTable("Pass log", columns, rows, "the sidecar records no passes")


def _pass_row(record: dict[str, Any]) -> tuple[str, ...]:
    skips = record["skips"]
    reasons = [f"{skip['site']}: {skip['reason']}" for skip in skips[:3]]
    more = [f"… {len(skips) - 3} more"] if len(skips) > 3 else []
    errors = record.get("output_errors") or {}
    checks = [f"output {name}: normwise error {error:.2e}" for name, error in errors.items()]
    return (
        record["name"],
        record["semantics"],
        "yes" if record["modified"] else "no",
        f"{record['seconds']:.3f}",
        f"{record['peak_rss_mb']:.0f}",
        "\n".join(f"{key} = {value}" for key, value in record["counters"].items()),
        "\n".join(reasons + more),
        "\n".join([*record["notes"], *checks]),
    )


def _layers_table(report: Report) -> SectionTable:
    columns = ("layer", "activation", "calibrated range", "grid range", "scale", "zero pt",
               "types (x · W)", "ORT kernel")  # fmt: skip
    folded = report.folded_activations
    rows = tuple(
        (
            row.label,
            row.activation,
            "folded (RepQ)" if row.activation in folded else _calibrated_range(row),
            _pair(grid_range(row)),
            format_number(row.scale),
            format_number(row.zero_point),
            f"{describe_spec(row.activation_spec)} · {describe_spec(row.weight_spec)}",
            f"{row.kernel} (integer)"
            if row.integer
            else f"simulated ({row.kernel}): {row.kernel_reason}",
        )
        for row in report.rows
    )
    return SectionTable(
        f"Quantized layers ({report.sidecar.plan.recipe})", columns, rows, "no layer is quantized"
    )


def _layers_caption(report: Report) -> str:
    shown = len(report.rows)
    total = len(report.sidecar.plan.quantized())
    order = "worst first" if report.sensitivity is not None else "in plan order"
    count = f"{shown} of {total} layers" if shown < total else f"{total} layers"
    return (
        f"{count}, {order}; grid range: what the quantizer represents, [(qmin − z)·s, "
        "(qmax − z)·s]; a RepQ-folded activation was calibrated per channel before the fold (see "
        "the RepQ table), its grid is the per-tensor one it has after"
    )


def _calibrated_range(row: LayerRow) -> str:
    """The calibrated [min, max]; for ranges per channel, the widest, with the channel count."""
    if row.activation_spec is None:
        return "per batch (dynamic)"
    if row.activation_range is None:
        return "—"
    low, high = (np.asarray(bound, dtype=np.float64) for bound in row.activation_range)
    widest = _pair((float(low.min()), float(high.max())))
    return widest if low.ndim == 0 else f"{widest} over {low.size} channels"


def _pair(bounds: Sequence[Any] | None) -> str:
    return "—" if bounds is None else f"[{format_number(bounds[0])}, {format_number(bounds[1])}]"


def _kept_section(report: Report) -> str:
    """The layers the plan keeps float, folded away (a partial recipe lists most of a model)."""
    kept = report.kept_float
    rows = tuple((d.node, d.op_type, d.reason) for d in kept)
    table = SectionTable("Kept float", ("node", "op", "reason"), rows, "")
    reasons = "; ".join(sorted({d.reason for d in kept}))
    summary = html.escape(f"{len(kept)} layers kept float ({reasons})")
    return (
        f'<section id="kept-float">\n<details><summary>{summary}</summary>\n'
        f"{html_section(table)}\n</details></section>"
    )


_SITES_CAPTION = (
    "r1 = s/s̃ scales the readers' weight rows, r2 = z − z̃ (integers) shifts their bias; "
    "float ops: the restoring Mul of a post-LN residual, or the Mul + Add of an explicit "
    "affine. SQNR of that activation on the sensitivity batch (with --float and data)."
)


def _sites_table(report: Report) -> SectionTable:
    columns = ("activation", "producer", "folded into", "float ops", "r1 range", "r2 range",
               "SQNR per-tensor", "SQNR RepQ")  # fmt: skip
    rows = tuple(
        (
            row.site.activation,
            row.site.producer_op,
            "γ/β" if row.site.folded_into == "LayerNormalization" else str(row.site.folded_into),
            str(row.site.float_ops_added),
            _pair(row.site.r1_range),
            _pair(row.site.r2_range),
            format_db(row.sqnr_per_tensor_db),
            format_db(row.sqnr_reparameterized_db),
        )
        for row in report.sites
    )
    return SectionTable("Reparameterized activations (RepQ)", columns, rows, "")


def _sensitivity_table(report: Report) -> SectionTable:
    assert report.sensitivity is not None
    columns = ("layer", "own SQNR", "outliers", "1 − cos", "output SQNR", "remedy")
    rows = tuple(sensitivity_cells(row, report.diagnoses[row.node]) for row in report.rows)
    title = f"Sensitivity of '{report.sensitivity.output}', worst first"
    return SectionTable(title, columns, rows, "")


def _sensitivity_caption(report: Report) -> str:
    assert report.sensitivity is not None
    sensitivity = report.sensitivity
    return (
        f"{len(sensitivity.layers)} single-layer models (only that layer quantized) on "
        f"{sensitivity.samples} samples in {sensitivity.seconds:.1f} s; own SQNR: the activation "
        "against its own fake-quantized copy; outliers: max/median channel range"
    )


# ---- SVG ---------------------------------------------------------------------------------------

_FONT = 'font-family="sans-serif"'
LABEL_WIDTH, PLOT_WIDTH, VALUE_WIDTH, BAR_STEP, AXIS_HEIGHT = 300, 560, 80, 16, 28
HIST_WIDTH, HIST_HEIGHT, HIST_LEFT, HIST_BOTTOM, HIST_TOP = 388, 190, 44, 34, 10


def _svg(width: float, height: float, label: str, parts: Iterable[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{html.escape(label)}">'
        + "".join(parts)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, size: int = 11, anchor: str = "start") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" {_FONT} font-size="{size}" text-anchor="{anchor}">'
        f"{html.escape(text)}</text>"
    )


def _line(x1: float, y1: float, x2: float, y2: float, style: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {style}/>'


def _chart_section(report: Report) -> str:
    legend = "".join(
        f'<span style="background:{color}">{html.escape(label)}</span>'
        for label, color in REMEDY_STYLES.values()
    )
    return (
        '<section id="sensitivity-chart">\n<h2>Per-layer error: 1 − cos of the output with only '
        f'that layer quantized (log scale)</h2>\n<div class="legend">{legend}</div>\n'
        f"{sensitivity_svg(report)}\n</section>"
    )


def sensitivity_svg(report: Report) -> str:
    """One horizontal bar per row (worst first) of 1 − cos on a log axis."""
    errors = [report.diagnoses[row.node].sensitivity.one_minus_cosine for row in report.rows]
    low, high = _decades(errors)
    span = math.log10(high) - math.log10(low)

    def x_of(value: float) -> float:
        return LABEL_WIDTH + PLOT_WIDTH * (math.log10(max(value, low)) - math.log10(low)) / span

    parts = []
    height = AXIS_HEIGHT + BAR_STEP * len(errors) + 6
    for exponent in range(round(math.log10(low)), round(math.log10(high)) + 1):
        x = x_of(10.0**exponent)
        parts.append(_line(x, AXIS_HEIGHT - 4, x, height, 'stroke="#ddd"'))
        parts.append(_text(x, AXIS_HEIGHT - 8, f"1e{exponent}", 10, "middle"))
    for index, (row, error) in enumerate(zip(report.rows, errors, strict=True)):
        parts.append(_bar(row, report, index, x_of(error)))
    width = LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH
    return _svg(width, height, "per-layer sensitivity, 1 − cos, log scale", parts)


def _bar(row: LayerRow, report: Report, index: int, end: float) -> str:
    diagnosis = report.diagnoses[row.node]
    top = AXIS_HEIGHT + index * BAR_STEP
    _, color = REMEDY_STYLES.get(diagnosis.remedy.split(" ")[0], REMEDY_STYLES[""])
    error = diagnosis.sensitivity.one_minus_cosine
    tip = f"{row.node}\n1 − cos {error:.3e}; output SQNR {format_db(diagnosis.sensitivity.sqnr_db)}"
    return (
        f'<g class="bar"><title>{html.escape(tip)}</title>'
        + _text(LABEL_WIDTH - 6, top + 11, row.label, 11, "end")
        + f'<rect x="{LABEL_WIDTH}" y="{top + 2:.1f}" width="{max(end - LABEL_WIDTH, 1):.1f}" '
        f'height="{BAR_STEP - 4}" fill="{color}"/>'
        + _text(end + 4, top + 11, f"{error:.1e}", 10)
        + "</g>"
    )


def _decades(values: Sequence[float]) -> tuple[float, float]:
    """Powers of ten around the positive values (at least one decade apart)."""
    positive = [v for v in values if v > 0] or [1e-6]
    low = 10.0 ** math.floor(math.log10(min(positive)))
    high = 10.0 ** math.ceil(math.log10(max(positive)))
    return low, max(high, low * 10)


def _histogram_section(report: Report, histograms: dict[str, Histogram]) -> str:
    figures = [
        _histogram_figure(row, report, histograms[row.activation])
        for row in report.rows
        if row.activation in histograms
    ]
    return (
        '<section id="histograms">\n<h2>Activations of the worst layers on the sensitivity batch'
        '</h2>\n<p class="note">Counts on a log scale; red: the range the quantizer represents '
        "(values beyond it are clipped).</p>\n"
        f'<div class="histograms">{"".join(figures)}</div>\n</section>'
    )


def _histogram_figure(row: LayerRow, report: Report, histogram: Histogram) -> str:
    sqnr = format_db(report.diagnoses[row.node].activation.own_sqnr_db)
    caption = (
        f"<b>{html.escape(row.label)}</b><br>{html.escape(row.activation)}<br>own SQNR {sqnr}; "
        f"grid {_pair(histogram.clip)}, {100 * histogram.outside:.3g} % of the values beyond it"
    )
    label = f"histogram of {row.activation}"
    return (
        f'<figure class="histogram">{histogram_svg(histogram, label)}'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def histogram_svg(histogram: Histogram, label: str) -> str:
    """Bars of log(1 + count) over the values, the clip range shaded outside and marked."""
    first, last = float(histogram.edges[0]), float(histogram.edges[-1])
    plot_width = HIST_WIDTH - HIST_LEFT - 10
    base = HIST_HEIGHT - HIST_BOTTOM
    plot_height = base - HIST_TOP

    def x_of(value: float) -> float:
        return HIST_LEFT + plot_width * (value - first) / ((last - first) or 1.0)

    peak = math.log1p(float(histogram.counts.max()))
    parts = [_line(HIST_LEFT, base, HIST_LEFT + plot_width, base, 'stroke="#555"')]
    for count, left, right in zip(
        histogram.counts, histogram.edges[:-1], histogram.edges[1:], strict=True
    ):
        if count:
            height = plot_height * math.log1p(float(count)) / peak
            parts.append(
                f'<rect x="{x_of(left):.1f}" y="{base - height:.1f}" '
                f'width="{max(x_of(right) - x_of(left) - 0.5, 0.5):.1f}" height="{height:.1f}" '
                'fill="#5b8fc7"/>'
            )
    parts += _clip_marks(histogram.clip, x_of, base)
    parts += [
        _text(HIST_LEFT, base + 14, f"{first:.3g}", 10),
        _text(HIST_LEFT + plot_width, base + 14, f"{last:.3g}", 10, "end"),
        _text(HIST_LEFT - 4, HIST_TOP + 8, _count(int(histogram.counts.max())), 10, "end"),
        _text(HIST_LEFT - 4, base, "0", 10, "end"),
        _text(HIST_LEFT + plot_width / 2, base + 28, "value (count: log scale)", 10, "middle"),
    ]
    return _svg(HIST_WIDTH, HIST_HEIGHT, label, parts)


def _clip_marks(
    clip: tuple[float, float], x_of: Callable[[float], float], base: float
) -> list[str]:
    """The values beyond the clip range shaded, each bound a dashed line."""
    low, high = x_of(clip[0]), x_of(clip[1])
    right = HIST_WIDTH - 10
    shade = 'fill="#d62728" fill-opacity="0.08"'
    marks = [
        f'<rect x="{left:.1f}" y="{HIST_TOP}" width="{width:.1f}" '
        f'height="{base - HIST_TOP:.1f}" {shade}/>'
        for left, width in ((HIST_LEFT, low - HIST_LEFT), (high, right - high))
        if width > 0.5
    ]
    dashed = 'class="clip" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4,3"'
    return marks + [_line(x, HIST_TOP, x, base, dashed) for x in (low, high)]


def _count(count: int) -> str:
    """``950``, ``27k``, ``1.2M``: a count in a few characters."""
    if count < 10_000:
        return str(count)
    return f"{count / 1000:.0f}k" if count < 1_000_000 else f"{count / 1e6:.1f}M"
