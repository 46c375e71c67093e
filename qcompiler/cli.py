"""The ``qcompiler`` command line: parses, calls the API, renders with rich.

Errors a user can cause print one line on stderr and exit with code 2 (``--debug`` shows the
traceback instead). Reports go to stdout (``--json`` for tools); progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import onnx_ir as ir
import typer
from rich.console import Console
from typer.exceptions import TyperException

from qcompiler.errors import QCompilerError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="qcompiler: a graph-level quantization compiler for ONNX and PyTorch models.",
)
stdout = Console()
stderr = Console(stderr=True)
_options = {"debug": False}

ModelArgument = Annotated[
    Path | None, typer.Argument(help="An ONNX file.", show_default=False, dir_okay=False)
]
ExampleOption = Annotated[
    str | None, typer.Option("--example", help="A built-in example model: minilm, dinov2.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _options["debug"] = debug


def _load_input(model: Path | None, example: str | None) -> tuple[ir.Model, str]:
    """The model named by exactly one of a path and ``--example``, with a label for reports."""
    if (model is None) == (example is None):
        raise QCompilerError("give either a MODEL path or --example NAME (not both, not neither)")
    from qcompiler.frontends.onnx import load_onnx

    if example is not None:
        from qcompiler.examples import example_path

        path = example_path(example)
        return load_onnx(path), f"example:{example}"
    assert model is not None
    return load_onnx(model), str(model)


def _canonicalize_with_progress(model: ir.Model, target_opset: int, verify: bool) -> Any:
    from qcompiler.api import canonicalize
    from qcompiler.console import PassProgress
    from qcompiler.passes.canonicalize import canonicalization_passes

    total = len(canonicalization_passes(target_opset))
    with PassProgress(stderr, total, "canonicalizing") as progress:
        return canonicalize(model, target_opset=target_opset, verify=verify, instruments=[progress])


@app.command()
def inspect(
    model: ModelArgument = None,
    example: ExampleOption = None,
    as_json: JsonOption = False,
    dot: Annotated[Path | None, typer.Option(help="Write the graph as Graphviz DOT.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML view.")] = None,
    canonical: Annotated[
        bool, typer.Option("--canonicalize", help="Inspect the canonicalized graph.")
    ] = False,
) -> None:
    """Summarize a model: ops, parameters, linear layers, norm→linear groups, quantization."""
    from qcompiler.inspect import inspect_model, render_inspection
    from qcompiler.inspect.graphview import graph_of, write_dot, write_html
    from qcompiler.passes.canonicalize import DEFAULT_TARGET_OPSET

    loaded, source = _load_input(model, example)
    if canonical:
        _canonicalize_with_progress(loaded, DEFAULT_TARGET_OPSET, verify=False)
    report = inspect_model(loaded, source=source)
    if dot is not None or html is not None:
        graph = graph_of(loaded)
        if dot is not None:
            write_dot(graph, dot)
        if html is not None:
            write_html(graph, report, html)
    if as_json:
        stdout.print_json(json.dumps(report))
    else:
        render_inspection(report, stdout)


@app.command()
def canonicalize(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the model.")],
    model: ModelArgument = None,
    example: ExampleOption = None,
    target_opset: Annotated[int, typer.Option(help="ONNX opset to upgrade to (≥ 20).")] = 21,
    verify: Annotated[
        bool, typer.Option(help="Check each pass: ONNX checker and its numerical contract.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Canonicalize a model (opset upgrade, folding, clean-up, norm/GELU fusion) and save it."""
    from qcompiler.console import pass_log_table
    from qcompiler.ir.io import save_model_atomic

    loaded, _ = _load_input(model, example)
    result = _canonicalize_with_progress(loaded, target_opset, verify)
    written = save_model_atomic(loaded, output)
    if as_json:
        records = [r.to_json() for r in result.records]
        stdout.print_json(json.dumps({"output": str(written), "passes": records}))
    else:
        stdout.print(pass_log_table(result.records))
        stdout.print(f"wrote {written}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qcompiler`` console script; returns the exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="qcompiler", standalone_mode=False)
    except typer.Exit as exit_:
        return int(exit_.exit_code)
    except typer.Abort:
        stderr.print("qcompiler: aborted")
        return 130
    except TyperException as error:  # bad arguments: click's usage errors, exit code 2
        _print_error(error.format_message())
        return error.exit_code
    except QCompilerError as error:
        if _options["debug"]:
            raise
        _print_error(str(error))
        return 2
    return 0


def _print_error(message: str) -> None:
    stderr.print(f"qcompiler: error: {message}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
