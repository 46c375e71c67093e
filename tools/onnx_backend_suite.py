"""Run every ONNX backend test case through canonicalization and write docs/onnx-backend-suite.md.

    python tools/onnx_backend_suite.py [--output docs/onnx-backend-suite.md]

Prints a table of counts (ran, passed, failed, skipped by reason) and the cases where stock ORT
disagrees with onnx's expected outputs, then writes the same with every list, the exact package
versions and this command to the docs page. Exits 1 when a case fails that is not in
``KNOWN_FAILURES`` or a known failure passes (the list is then stale), else 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from qcompiler.testing.onnx_backend import KNOWN_FAILURES, CaseOutcome, collect_cases, run_case

COMMAND = "python tools/onnx_backend_suite.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "onnx-backend-suite.md"
PACKAGES = ("onnx", "onnxruntime", "onnx-ir", "onnxscript", "numpy", "ml_dtypes")
ORT_SKIP = "ORT cannot run it"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown to write")
    args = parser.parse_args(argv)
    # onnxscript's optimizer and version converter log a warning per skipped site: noise here.
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    console = Console()
    start = time.perf_counter()
    cases = collect_cases()
    outcomes = [run_case(case) for case in track(cases, "cases", console=console)]
    seconds = time.perf_counter() - start
    console.print(counts_table(outcomes))
    disagreeing = [o.name for o in outcomes if o.stock_matches_expected is False]
    console.print(
        f"stock ORT disagrees with expected ({len(disagreeing)}): {', '.join(disagreeing)}"
    )
    args.output.write_text(render_markdown(outcomes, seconds))
    console.print(f"wrote {args.output} ({seconds:.0f} s)")
    unexpected = unexpected_results(outcomes)
    for line in unexpected:
        console.print(f"[red]{line}")
    return 1 if unexpected else 0


def counts(outcomes: Sequence[CaseOutcome]) -> list[tuple[str, int]]:
    """(label, count) rows: totals, then skipped by reason and failed by stage.

    "ran" counts the cases ORT could run before canonicalization; those are the ones
    canonicalization was tried on.
    """
    by_status = Counter(o.status for o in outcomes)
    rows = [
        ("total", len(outcomes)),
        ("ran", sum(not o.category.startswith(ORT_SKIP) for o in outcomes)),
        ("passed", by_status["passed"]),
        ("failed", by_status["failed"]),
        ("skipped", by_status["skipped"]),
    ]
    for status in ("skipped", "failed"):
        categories = Counter(o.category for o in outcomes if o.status == status)
        rows.extend((f"{status}: {c}", n) for c, n in sorted(categories.items()))
    rows.append(
        (
            "stock ORT disagrees with expected",
            sum(o.stock_matches_expected is False for o in outcomes),
        )
    )
    return rows


def counts_table(outcomes: Sequence[CaseOutcome]) -> Table:
    table = Table(title="ONNX backend cases through canonicalization")
    table.add_column("cases")
    table.add_column("count", justify="right")
    for label, count in counts(outcomes):
        table.add_row(label, str(count))
    return table


def unexpected_results(outcomes: Iterable[CaseOutcome]) -> list[str]:
    """Failures not in KNOWN_FAILURES, and known failures that no longer fail."""
    lines = []
    for outcome in outcomes:
        known = outcome.name in KNOWN_FAILURES
        if outcome.status == "failed" and not known:
            lines.append(f"unexpected failure {outcome.name}: {outcome.category}: {outcome.detail}")
        elif known and outcome.status != "failed":
            lines.append(
                f"known failure {outcome.name} now {outcome.status}: update KNOWN_FAILURES"
            )
    return lines


def render_markdown(outcomes: Sequence[CaseOutcome], seconds: float) -> str:
    """The docs page: counts, every list, the versions and the command that regenerates it."""
    sections = [
        _header(seconds),
        _counts_section(outcomes),
        _failures_section(outcomes),
        _disagreeing_section(outcomes),
        _skipped_section(outcomes),
        _changes_section(outcomes),
    ]
    return "\n\n".join(sections) + "\n"


def _header(seconds: float) -> str:
    versions = ", ".join(f"{name} {version(name)}" for name in PACKAGES)
    return "\n".join(
        [
            "# ONNX backend test suite through canonicalization",
            "",
            "Every test case that ships with the installed `onnx` package (node cases from",
            "`onnx.backend.test.case.node`, model files under `onnx/backend/test/data/{simple,",
            "pytorch-converted,pytorch-operator,light}`) goes through load → canonicalize",
            "(default pipeline, target opset 21, never downgrading) → `save_model_atomic` →",
            "`load_onnx`, and ONNX Runtime (CPU) must give the same outputs as on the original",
            "model, within the case's rtol/atol (NaN equals NaN; integers, bools and strings",
            "exactly), and the case's expected outputs where stock ORT matches them. The harness",
            "is `qcompiler/testing/onnx_backend.py`; `tests/test_onnx_backend_suite.py` runs a",
            "sample by default and every case with `-m slow`.",
            "",
            f"Regenerate: `{COMMAND}` (this run: {seconds:.0f} s on {platform.machine()},"
            f" {os.cpu_count()} cores).",
            "",
            f"Versions: Python {platform.python_version()}, {versions}.",
        ]
    )


def _counts_section(outcomes: Sequence[CaseOutcome]) -> str:
    lines = ["## Counts", "", "| cases | count |", "|---|---:|"]
    lines += [f"| {label} | {count} |" for label, count in counts(outcomes)]
    lines += [
        "",
        '"ran": ORT ran the original model, so canonicalization was tried. Skipped cases with a',
        "random op were canonicalized and run too; only their output shapes and dtypes are",
        "compared.",
    ]
    return "\n".join(lines)


def _failures_section(outcomes: Sequence[CaseOutcome]) -> str:
    failed = [o for o in outcomes if o.status == "failed"]
    lines = [
        "## Failures",
        "",
        "Grouped by cause: a bug in a pass, or a model a pass refuses on purpose. The tests mark",
        "them xfail(strict) with the cause below (`KNOWN_FAILURES` in the harness).",
    ]
    if not failed:
        return "\n".join([*lines, "", "None."])
    for reason, group in _group_by_reason(failed).items():
        lines += ["", f"**{reason}**", ""]
        lines += [f"- `{o.name}` ({o.category}): {o.detail}" for o in group]
    return "\n".join(lines)


def _group_by_reason(failed: Sequence[CaseOutcome]) -> dict[str, list[CaseOutcome]]:
    groups: dict[str, list[CaseOutcome]] = defaultdict(list)
    for outcome in failed:
        groups[KNOWN_FAILURES.get(outcome.name, "not yet explained")].append(outcome)
    return groups


def _disagreeing_section(outcomes: Sequence[CaseOutcome]) -> str:
    disagreeing = [o for o in outcomes if o.stock_matches_expected is False]
    lines = [
        f"## Stock ORT disagrees with expected ({len(disagreeing)})",
        "",
        "ORT's outputs on the original model differ from onnx's expected outputs beyond the",
        "case's tolerance (first difference shown). Canonicalization is still checked against",
        "ORT's original outputs.",
        "",
    ]
    return "\n".join(lines + [f"- `{o.name}`: {o.detail}" for o in disagreeing])


def _skipped_section(outcomes: Sequence[CaseOutcome]) -> str:
    lines = ["## Skipped, by reason"]
    groups: dict[str, list[CaseOutcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.status == "skipped":
            groups[outcome.category].append(outcome)
    for category, group in sorted(groups.items()):
        lines += ["", f"### {category} ({len(group)})", ""]
        lines += [f"- `{o.name}`: {o.detail}" for o in group]
    return "\n".join(lines)


def _changes_section(outcomes: Sequence[CaseOutcome]) -> str:
    changed = Counter(name for o in outcomes for name in o.changed_by)
    lines = [
        "## What canonicalization changed",
        "",
        "Cases each pass changed, among those whose canonicalized model ORT ran:",
        "",
        "| pass | cases |",
        "|---|---:|",
    ]
    return "\n".join(lines + [f"| {name} | {n} |" for name, n in changed.most_common()])


if __name__ == "__main__":
    raise SystemExit(main())
