"""Rich rendering shared by the CLI: pass progress and the pass-log table."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from qcompiler.passes.manager import Pass, PassRecord


class PassProgress:
    """An instrument that shows one progress bar over a pipeline's passes."""

    def __init__(self, console: Console, total: int, description: str = "compiling") -> None:
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
        self._task = self._progress.add_task(description, total=total, current="")

    def __enter__(self) -> PassProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

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
