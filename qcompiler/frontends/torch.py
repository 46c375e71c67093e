"""torch → IR: nn.Module, ``torch.export.ExportedProgram`` or ``torch.fx.GraphModule``.

Every input goes through ``torch.onnx.export(..., dynamo=True)``, which runs ``torch.export`` and
translates the program to ONNX; its ``ONNXProgram.model`` is already an ``onnx_ir.Model``, the
IR every pass works on. The exporter records each node's torch module path in the node metadata
``pkg.torch.onnx.name_scopes`` (read it with :func:`qcompiler.ir.provenance.module_name`), but only
at opset >= 18: for a lower opset it exports at 18 and runs the ONNX version converter, which
drops that metadata, so lower opsets are refused rather than silently losing module names.

Failures become one-line :class:`ExportError` messages that say why and what to change; the
original exception stays chained for ``--debug``. The exporter's console chatter (progress lines,
logged warnings, graph dumps of failed attempts) is swallowed.

torch is imported inside the functions only, so that nothing on the ONNX path loads it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from qcompiler.errors import ExportError, first_line

if TYPE_CHECKING:
    import torch

MIN_OPSET = 18

_TRACE = "torch.export could not trace"


def from_torch(
    obj: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: tuple[Any, ...] | None = None,
    *,
    dynamic_shapes: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset_version: int = MIN_OPSET,
) -> ir.Model:
    """Export a torch module, ExportedProgram or FX GraphModule to an ``onnx_ir.Model``.

    ``example_inputs`` (a tuple of ``forward`` arguments) and ``dynamic_shapes`` (as for
    ``torch.export.export``) are required / allowed for modules and GraphModules; an
    ExportedProgram already fixes both, so it takes neither. Modules are exported in eval mode
    (dropout off, norms in inference form) and their training flags are restored afterwards.
    """
    import torch

    _check_opset(opset_version)
    args = _export_args(obj, example_inputs, dynamic_shapes)
    with _eval_mode(obj), _quiet_console():
        try:
            program = torch.onnx.export(
                obj,
                args,
                dynamo=True,
                opset_version=opset_version,
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=output_names,
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(_describe_failure(obj, exc)) from exc
    assert program is not None  # None only comes from the legacy (dynamo=False) exporter
    return program.model


def _check_opset(opset_version: int) -> None:
    """Refuse opsets below 18: the exporter would drop the torch module names on conversion."""
    if opset_version < MIN_OPSET:
        raise ExportError(
            f"opset_version={opset_version} is too low: the torch exporter emits opset "
            f">= {MIN_OPSET} and down-converts, which drops the torch module names "
            f"(pkg.torch.onnx.name_scopes); export at opset >= {MIN_OPSET} "
            "(canonicalization handles the opset from there)"
        )


def _export_args(obj: object, example_inputs: object, dynamic_shapes: object) -> tuple[Any, ...]:
    """The positional ``args`` for ``torch.onnx.export``, after checking what ``obj`` needs."""
    import torch

    if isinstance(obj, torch.export.ExportedProgram):
        if example_inputs is not None or dynamic_shapes is not None:
            raise ExportError(
                "an ExportedProgram already fixes its inputs and dynamic shapes: "
                "pass neither example_inputs nor dynamic_shapes with it"
            )
        return ()
    if not isinstance(obj, torch.nn.Module):
        raise ExportError(
            f"cannot export a {type(obj).__name__}: give an nn.Module or torch.fx.GraphModule "
            "with example_inputs, or a torch.export.ExportedProgram"
        )
    if not isinstance(example_inputs, tuple):
        raise ExportError(
            f"exporting {_label(obj)} needs example_inputs as a tuple of forward() arguments, "
            f"e.g. (x,); got {type(example_inputs).__name__}"
        )
    return example_inputs


@contextlib.contextmanager
def _eval_mode(obj: object) -> Iterator[None]:
    """Put a module (and all its submodules) in eval mode, restoring each one's flag after."""
    import torch

    if not isinstance(obj, torch.nn.Module):
        yield
        return
    flags = [(module, module.training) for module in obj.modules()]
    obj.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    """Discard everything written to stdout/stderr, and all warnings, while the block runs.

    The exporter prints from Python (progress lines), through logging handlers bound to the
    process's real streams (registration warnings, graph dumps of failed tracing attempts) and
    from C++, so the redirect is done on file descriptors 1 and 2 as well as on ``sys.stdout``
    and ``sys.stderr``.
    """
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    with tempfile.TemporaryFile(mode="w+") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _flush(streams)
        saved = (os.dup(1), os.dup(2))
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            _flush(streams)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _flush(streams: Sequence[Any]) -> None:
    """Flush Python-level buffers so nothing crosses the redirect boundary."""
    for stream in streams:
        if stream is not None:
            stream.flush()


def _describe_failure(obj: object, exc: Exception) -> str:
    """One line: which stage failed on what, the first line of the cause, and what to do."""
    stage = _stage(exc)
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    reason = first_line(cause)
    return f"{stage} {_label(obj)}: {reason}; {_hint(stage, cause, reason)}"


def _stage(exc: Exception) -> str:
    """The exporter step that failed, from its error class (tracing, or translation to ONNX)."""
    classes = {cls.__name__ for cls in type(exc).__mro__}
    if "TorchExportError" in classes:
        return _TRACE
    if "ConversionError" in classes:
        return "the ONNX exporter could not convert"
    return "exporting to ONNX failed for"


def _hint(stage: str, cause: Exception, reason: str) -> str:
    """What the user can change, judged from the cause."""
    if "data-dependent" in reason or type(cause).__name__.startswith("GuardOnDataDependent"):
        return (
            "remove data-dependent control flow (Python branches on tensor values; "
            "torch.cond can express them) or check the example inputs"
        )
    if "dynamic_shapes" in reason or "Constraints violated" in reason:
        return "fix dynamic_shapes so they match forward()'s arguments and the model's shapes"
    if stage == _TRACE:
        return "check the example inputs and dynamic_shapes, or remove data-dependent control flow"
    return "an operator may lack an ONNX translation; rerun with --debug for the full error"


def _label(obj: object) -> str:
    """How a message names the thing being exported: its class name."""
    return type(obj).__name__
