"""The ``qcompiler`` command line: parses, calls the API, renders with rich.

Errors a user can cause print one line on stderr and exit with code 2 (``--debug`` shows the
traceback instead). Reports go to stdout (``--json`` for tools); progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import onnx_ir as ir
import typer
from rich.console import Console
from typer.exceptions import TyperException

from qcompiler.errors import QCompilerError
from qcompiler.quant.recipe import builtin_recipes

if TYPE_CHECKING:
    from qcompiler.report.evaluate import Pool

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
DEFAULT_RECIPE = "repq-w8a8"
"""The most accurate recipe that runs every linear layer on ORT's 8-bit integer kernels."""

ModelArgument = Annotated[
    Path | None, typer.Argument(help="An ONNX file.", show_default=False, dir_okay=False)
]
ExampleOption = Annotated[
    str | None, typer.Option("--example", help="A built-in example model: minilm, dinov2.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
ExposeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--expose",
        help="Make this intermediate value a graph output (repeatable).",
        metavar="NAME",
        show_default=False,
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="Held-out data: .npz with one array per model input."),
]
ExampleTextOption = Annotated[
    int | None,
    typer.Option(help="MiniLM: N built-in sentences disjoint from calibration (pools by mean)."),
]
OutputNameOption = Annotated[
    list[str] | None,
    typer.Option(
        "--output",
        help="Compare this output (repeatable; default: all).",
        metavar="NAME",
        show_default=False,
    ),
]
PoolOption = Annotated[
    str | None,
    typer.Option(
        help="mean: average token outputs (batch × seq × dim) over the attention mask; none. "
        "Default: mean with --example-text, else none.",
        metavar="mean|none",
        show_default=False,
    ),
]
EvalBatchOption = Annotated[int, typer.Option(help="Evaluation batch size.")]


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


def _evaluation_data(
    data: Path | None, example_text: int | None, model: ir.Model
) -> tuple[object, str]:
    """The held-out data the options name, with a label for reports."""
    if data is not None and example_text is not None:
        raise QCompilerError("give --data or --example-text, not both")
    if data is not None:
        if not data.is_file():
            raise QCompilerError(f"{data}: no such data file")
        return data, str(data)
    if example_text is None:
        raise QCompilerError("give the data to measure on: --data FILE.npz or --example-text N")
    from qcompiler.calibrate.data import Sentences, model_inputs
    from qcompiler.examples.minilm import INPUT_NAMES
    from qcompiler.examples.text import evaluation_sentences

    names = tuple(i.name for i in model_inputs(model))
    if names != INPUT_NAMES:
        raise QCompilerError(
            f"--example-text feeds MiniLM's inputs ({', '.join(INPUT_NAMES)}); the model takes "
            f"{', '.join(names)}: give --data FILE.npz"
        )
    return Sentences(evaluation_sentences(example_text)), f"{example_text} evaluation sentences"


def _pool(pool: str | None, example_text: int | None) -> Pool:
    from qcompiler.report.evaluate import Pool

    if pool is None:
        return Pool.MEAN if example_text is not None else Pool.NONE
    try:
        return Pool(pool)
    except ValueError:
        raise QCompilerError(f"unknown --pool {pool!r}; use mean or none") from None


def _expose(model: ir.Model, names: list[str] | None) -> ir.Model:
    from qcompiler.ir.edit import expose_outputs

    return expose_outputs(model, names or [])


@contextlib.contextmanager
def _counting(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields a callback taking the number of items done."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done)


def _default_cache(kind: str) -> Path:
    """The cache folder for ``kind`` (calibration statistics, sensitivities)."""
    from qcompiler.cache import cache_root

    return cache_root() / kind


def _canonicalize_with_progress(model: ir.Model, target_opset: int, verify: bool) -> Any:
    from qcompiler.api import canonicalize
    from qcompiler.console import PassProgress

    with PassProgress(stderr, "canonicalizing") as progress:
        return canonicalize(model, target_opset=target_opset, verify=verify, instruments=[progress])


@app.command()
def inspect(
    model: ModelArgument = None,
    other: Annotated[
        Path | None,
        typer.Argument(
            help="A second ONNX file: show what changed from the first to it.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    example: ExampleOption = None,
    as_json: JsonOption = False,
    dot: Annotated[Path | None, typer.Option(help="Write the graph as Graphviz DOT.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML view.")] = None,
    canonical: Annotated[
        bool, typer.Option("--canonicalize", help="Inspect the canonicalized graph.")
    ] = False,
) -> None:
    """Summarize a model: ops, parameters, linear layers, norm→linear groups, quantization.

    With two models, show what changed from the first to the second (ops, nodes, initializers,
    inputs/outputs, opsets, metadata, Q/DQ).
    """
    if other is not None:
        given = {"--example": example is not None, "--dot": dot is not None,
                 "--html": html is not None, "--canonicalize": canonical}  # fmt: skip
        if any(given.values()):
            flags = ", ".join(flag for flag, present in given.items() if present)
            raise QCompilerError(f"{flags} cannot be used when comparing two models (inspect A B)")
        assert model is not None
        _print_diff(model, other, as_json)
        return
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


def _print_diff(before: Path, after: Path, as_json: bool) -> None:
    """``inspect A B``: the differences from model A to model B, as tables or JSON."""
    from qcompiler.inspect.diff import diff_models
    from qcompiler.inspect.diff_render import render_diff

    diff = diff_models(_load_onnx(before), _load_onnx(after), sources=(str(before), str(after)))
    if as_json:
        stdout.print_json(json.dumps(diff.to_json()))
    else:
        render_diff(diff, stdout)


@app.command()
def canonicalize(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the model.")],
    model: ModelArgument = None,
    example: ExampleOption = None,
    target_opset: Annotated[
        int, typer.Option(help="ONNX opset to upgrade to (≥ 20: Gelu).", min=20)
    ] = 21,
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
        str,
        typer.Option(help=f"A built-in recipe ({', '.join(builtin_recipes())}) or a recipe file."),
    ] = DEFAULT_RECIPE,
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
    expose: ExposeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Quantize a model with a recipe and write it with its provenance and sidecar."""
    from qcompiler.compiler import compile_model, file_sha256, save_compiled
    from qcompiler.console import PassProgress, compile_summary
    from qcompiler.quant.recipe import load_recipe

    chosen = load_recipe(recipe)
    path, source = _input_path(model, example)
    loaded = _expose(_load_onnx(path), expose)
    data = _calibration_data(calib, calib_text, example) if chosen.mode == "static" else None
    with PassProgress(stderr, f"compiling {source}") as progress:
        result = compile_model(
            loaded,
            chosen,
            data,
            input_sha256=file_sha256(path),
            batch_size=batch_size,
            cache_dir=None if no_cache else (cache_dir or _default_cache("calibration")),
            instruments=[progress],
        )
    written, sidecar = save_compiled(result, output)
    if as_json:
        stdout.print_json(json.dumps({"output": str(written), "sidecar": str(sidecar),
                                      **result.sidecar()}, default=str))  # fmt: skip
    else:
        stdout.print(compile_summary(result, path, written))


@app.command(name="eval")
def eval_command(
    float_model: Annotated[Path, typer.Argument(help="The float ONNX model.", dir_okay=False)],
    quantized: Annotated[Path, typer.Argument(help="The quantized ONNX model.", dir_okay=False)],
    data: DataOption = None,
    example_text: ExampleTextOption = None,
    output: OutputNameOption = None,
    pool: PoolOption = None,
    expose: ExposeOption = None,
    batch_size: EvalBatchOption = 32,
    as_json: JsonOption = False,
) -> None:
    """Compare a quantized model with its float model on held-out data, output by output."""
    from qcompiler.report.evaluate import evaluate
    from qcompiler.report.render import evaluation_table

    reference = _expose(_load_onnx(float_model), expose)
    candidate = _expose(_load_onnx(quantized), expose)
    chosen_pool = _pool(pool, example_text)
    source, label = _evaluation_data(data, example_text, reference)
    with _counting("evaluating (batches)") as progress:
        result = evaluate(
            reference, candidate, source, outputs=output or (), pool=chosen_pool,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
    if as_json:
        document = {"float": str(float_model), "quantized": str(quantized), "data": label}
        stdout.print_json(json.dumps({**result.to_json(), **document}))
    else:
        stdout.print(evaluation_table(result, label))


@app.command()
def report(
    model: Annotated[
        Path, typer.Argument(help="A model written by qcompiler compile.", dir_okay=False)
    ],
    float_model: Annotated[
        Path | None,
        typer.Option("--float", help="The float model it was compiled from: measure each layer."),
    ] = None,
    data: DataOption = None,
    example_text: ExampleTextOption = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", help="The value to measure (default: the first output).", metavar="NAME"
        ),
    ] = None,
    pool: PoolOption = None,
    batch_size: EvalBatchOption = 32,
    top: Annotated[
        int | None, typer.Option(help="Show the K worst layers only.", min=1, metavar="K")
    ] = None,
    as_json: JsonOption = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write the report as one self-contained HTML page, with plots.",
            dir_okay=False,
            metavar="PATH",
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Measure every layer again (no sensitivity cache).")
    ] = False,
) -> None:
    """Per quantized layer: ranges, scales, kernels; with --float and data, each layer's error."""
    from qcompiler.compiler import file_sha256
    from qcompiler.ir.graph import onnx_opset
    from qcompiler.report.html import Histogram, activation_histograms, write_report_html
    from qcompiler.report.layers import measured_report, sidecar_report
    from qcompiler.report.render import report_tables
    from qcompiler.report.sidecar import read_sidecar

    quantized = _load_onnx(model)
    sidecar = read_sidecar(model)
    result = sidecar_report(str(model), sidecar, quantized)
    histograms: dict[str, Histogram] = {}
    if float_model is not None or data is not None or example_text is not None:
        if float_model is None:
            raise QCompilerError("--data and --example-text measure layers against --float MODEL")
        reference = _load_onnx(float_model)
        source, _ = _evaluation_data(data, example_text, reference)
        with _counting("measuring layers", len(result.rows)) as progress:
            result = measured_report(
                result, reference, file_sha256(float_model), source,
                target_opset=onnx_opset(quantized), output=output,
                pool=_pool(pool, example_text), batch_size=batch_size, progress=progress,
                cache_dir=None if no_cache else _default_cache("sensitivity"),
            )  # fmt: skip
        if html is not None:
            histograms = activation_histograms(reference, result, source)
    result = result.top(top)
    if html is not None:
        write_report_html(result, html, histograms)
    if as_json:
        stdout.print_json(json.dumps(result.to_json()))
    else:
        stdout.print(report_tables(result))


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
