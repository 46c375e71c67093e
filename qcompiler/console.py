"""Rich rendering shared by the CLI: pass progress and the pass-log table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx_ir as ir
from rich.console import Console, Group
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from qcompiler.passes.manager import Pass, PassRecord

if TYPE_CHECKING:
    from qcompiler.compiler import CompileResult


class PassProgress:
    """An instrument that shows one progress bar over a pipeline's passes."""

    def __init__(self, console: Console, description: str = "compiling") -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[current]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task(description, total=None, current="")

    def __enter__(self) -> PassProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def begin(self, passes: Sequence[Pass]) -> None:
        self._progress.update(self._task, total=len(passes), completed=0)

    def before_pass(self, pass_: Pass, model: ir.Model) -> None:
        del model
        self._progress.update(self._task, current=pass_.name)

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        del pass_, model, record
        self._progress.advance(self._task)


def pass_log_table(records: Sequence[PassRecord]) -> Table:
    """One row per pass: what it promised, whether it changed the graph, what it did."""
    table = Table(title="Pass log", show_lines=False)
    for column in ("pass", "semantics", "changed", "what changed", "skipped", "time", "max error"):
        table.add_column(column, justify="right" if column in ("time", "skipped") else "left")
    for record in records:
        done = ", ".join(f"{k}={v}" for k, v in sorted(record.counters.items()))
        if record.notes:
            done = "; ".join([*record.notes, done] if done else record.notes)
        error = (
            f"{max(record.output_errors.values()):.2g}"
            if record.output_errors
            else ("—" if record.modified else "")
        )
        table.add_row(
            record.name,
            record.semantics.value,
            "yes" if record.modified else "no",
            done,
            str(len(record.skips)) if record.skips else "",
            f"{record.seconds:.2f}s",
            error,
        )
    return table


def compile_summary(result: CompileResult, source: Path, output: Path) -> Group:
    """What a compile did: sizes, layers quantized, kernels, and every layer left float."""
    summary = Table(title=f"Compiled with {result.recipe.name}", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    before, after = source.stat().st_size, output.stat().st_size
    summary.add_row("model size", f"{before / 2**20:.1f} MiB → {after / 2**20:.1f} MiB")
    quantized = result.plan.quantized()
    summary.add_row("linear layers quantized", f"{len(quantized)} of {len(result.plan.linear)}")
    integer = len(result.kernels) - len(result.simulated)
    summary.add_row("run as ORT integer kernels", f"{integer} ({_kernel_names(result)})")
    summary.add_row("float simulations (Q→DQ)", str(len(result.simulated)))
    grid = _narrow_grids(result)
    if grid:
        summary.add_row("narrow grids", grid)
    sites = _reparameterized(result)
    if sites:
        summary.add_row("reparameterized (RepQ)", sites)
    softmax = result.recipe.softmax
    if softmax is not None:
        count = sum(r.counters.get("sites_quantized", 0) for r in result.records
                    if r.name == "quantize-softmax")  # fmt: skip
        summary.add_row(
            "softmax outputs (simulated)",
            f"{count} × {softmax.bits}-bit {softmax.quantizer}: a float simulation in ORT",
        )
    if result.stats is not None:
        cached = " (cached)" if result.stats.from_cache else ""
        summary.add_row("calibration batches", f"{result.stats.batches}{cached}")
    summary.add_row("compile time", f"{sum(r.seconds for r in result.records):.1f} s")
    summary.add_row("written", str(output))
    parts: list[Table] = [summary]
    left_float = [d for d in result.plan.linear.values() if not d.quantize]
    if left_float or result.simulated:
        skipped = Table(title="Not run as integer kernels")
        for column in ("layer", "why"):
            skipped.add_column(column)
        for decision in left_float:
            skipped.add_row(decision.node, f"float: {decision.reason}")
        for kernel in result.simulated:
            skipped.add_row(kernel.weight, f"simulated: {kernel.reason}")
        parts.append(skipped)
    return Group(*parts)


def _narrow_grids(result: CompileResult) -> str:
    """Specs whose b-bit grid lives in a wider type: exact b-bit values, 8-bit kernel cost."""
    recipe = result.recipe
    narrow = [
        f"{role} {spec.bits}-bit in {spec.dtype.name.lower()}"
        for role, spec in (("weights", recipe.weights), ("activations", recipe.activations))
        if spec is not None and spec.grid_bits
    ]
    if not narrow:
        return ""
    return f"{', '.join(narrow)}: the values of the narrow grid on 8-bit kernels (no b-bit speed)"


def _reparameterized(result: CompileResult) -> str:
    sites = [s for s in result.plan.channelwise.values() if s.reparameterized]
    if not sites:
        return ""
    counts = Counter(f"{s.producer_op} → {s.folded_into}" for s in sites)
    ops = sum(s.float_ops_added for s in sites)
    listed = ", ".join(f"{n}× {kind}" for kind, n in counts.most_common())
    return f"{listed}; {ops} float ops added"


def _kernel_names(result: CompileResult) -> str:
    counts = Counter(k.kernel for k in result.kernels if k.integer)
    return ", ".join(f"{n}× {kernel}" for kernel, n in counts.most_common()) or "none"
