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
DEFAULT_CALIBRATION_SENTENCES = 256

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


def _input_path(model: Path | None, example: str | None) -> tuple[Path, str]:
    """The file named by exactly one of a path and ``--example``, with a label for reports."""
    if (model is None) == (example is None):
        raise QCompilerError("give either a MODEL path or --example NAME (not both, not neither)")
    if example is not None:
        from qcompiler.examples import example_path

        return example_path(example), f"example:{example}"
    assert model is not None
    return model, str(model)


def _load_onnx(path: Path) -> ir.Model:
    from qcompiler.frontends.onnx import load_onnx

    return load_onnx(path)


def _load_input(model: Path | None, example: str | None) -> tuple[ir.Model, str]:
    path, source = _input_path(model, example)
    return _load_onnx(path), source


def _calibration_data(calib: Path | None, calib_text: int | None, example: str | None) -> object:
    """The calibration source the options name (checked later, batch by batch, by the engine)."""
    if calib is not None and calib_text is not None:
        raise QCompilerError("give --calib or --calib-text, not both")
    if calib is not None:
        if not calib.is_file():
            raise QCompilerError(f"{calib}: no such calibration file")
        return calib
    if calib_text is not None or example == "minilm":
        if example != "minilm":
            raise QCompilerError("--calib-text works with --example minilm; give --calib FILE.npz")
        from qcompiler.calibrate.data import Sentences
        from qcompiler.examples.text import calibration_sentences

        return Sentences(calibration_sentences(calib_text or DEFAULT_CALIBRATION_SENTENCES))
    return None


def _default_cache() -> Path:
    from qcompiler.cache import cache_root

    return cache_root() / "calibration"


def _canonicalize_with_progress(model: ir.Model, target_opset: int, verify: bool) -> Any:
    from qcompiler.api import canonicalize
    from qcompiler.console import PassProgress

    with PassProgress(stderr, "canonicalizing") as progress:
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


@app.command(name="compile")
def compile_command(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the model.")],
    model: ModelArgument = None,
    example: ExampleOption = None,
    recipe: Annotated[
        str, typer.Option(help="A built-in recipe (w8a8, w8-dynamic) or a recipe file.")
    ] = "w8a8",
    calib: Annotated[
        Path | None,
        typer.Option(help="Calibration data: .npz with one array per model input."),
    ] = None,
    calib_text: Annotated[
        int | None,
        typer.Option(help="Example models: calibrate on N built-in real sentences."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Calibration batch size.")] = 32,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where calibration statistics are cached.")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recalibrate.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Quantize a model with a recipe and write it with its provenance and sidecar."""
    from qcompiler.compiler import compile_model, file_sha256, save_compiled
    from qcompiler.console import PassProgress, compile_summary
    from qcompiler.quant.recipe import load_recipe

    chosen = load_recipe(recipe)
    path, source = _input_path(model, example)
    loaded = _load_onnx(path)
    data = _calibration_data(calib, calib_text, example) if chosen.mode == "static" else None
    with PassProgress(stderr, f"compiling {source}") as progress:
        result = compile_model(
            loaded,
            chosen,
            data,
            input_sha256=file_sha256(path),
            batch_size=batch_size,
            cache_dir=None if no_cache else (cache_dir or _default_cache()),
            instruments=[progress],
        )
    written, sidecar = save_compiled(result, output)
    if as_json:
        stdout.print_json(json.dumps({"output": str(written), "sidecar": str(sidecar),
                                      **result.sidecar()}, default=str))  # fmt: skip
    else:
        stdout.print(compile_summary(result, path, written))


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
