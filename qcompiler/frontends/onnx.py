"""ONNX files and ModelProtos → ``onnx_ir.Model``.

Files load through ``onnx_ir.load``: the protobuf holds the graph, and weights stored as external
data stay on disk, memory-mapped, until a pass reads them, so a model over 2 GB never goes through
one protobuf. Every way a file can be wrong (missing, not ONNX, truncated, external data missing
or short) becomes one :class:`ModelLoadError` line that names the file and what to do.
The input file is only read.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from qcompiler.errors import ModelLoadError, first_line


def load_onnx(
    source: str | os.PathLike[str] | onnx.ModelProto, base_dir: str | None = None
) -> ir.Model:
    """Load an ONNX file or ModelProto into the IR.

    ``base_dir`` is where a ModelProto's external data files live (files use their own folder).
    """
    if isinstance(source, onnx.ModelProto):
        model = _from_proto(source, "the ModelProto")
        _check_external_data(model, Path(base_dir) if base_dir else Path.cwd(), "the ModelProto")
        return model
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file (give the path of an .onnx file)")
    try:
        model = ir.load(path)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(
            f"{path}: not a readable ONNX model, the file is truncated or not ONNX "
            f"({first_line(error)})"
        ) from error
    _check_graph(model, str(path))
    _check_external_data(model, path.parent, str(path))
    return model


def _from_proto(proto: onnx.ModelProto, label: str) -> ir.Model:
    try:
        model = ir.from_proto(proto)
    except Exception as error:
        raise ModelLoadError(f"{label}: not a valid ONNX model ({first_line(error)})") from error
    _check_graph(model, label)
    return model


def _check_graph(model: ir.Model, label: str) -> None:
    """An empty or foreign protobuf parses as a ModelProto without a graph; reject it."""
    if model.ir_version == 0 or not model.graph.outputs:
        raise ModelLoadError(
            f"{label}: not an ONNX model (no ir_version or no graph outputs); the file is "
            "truncated, empty, or another format"
        )


def _check_external_data(model: ir.Model, base_dir: Path, label: str) -> None:
    """Every external-data tensor's file must exist and hold its byte range."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = Path(tensor.base_dir or base_dir) / tensor.location
        if not location.is_file():
            raise ModelLoadError(
                f"{label}: external data file '{tensor.location}' for initializer "
                f"'{value.name}' is missing (expected at {location}); keep the data file beside "
                "the model"
            )
        end = (tensor.offset or 0) + (tensor.length or 0)
        if location.stat().st_size < end:
            raise ModelLoadError(
                f"{label}: external data file '{tensor.location}' is shorter than initializer "
                f"'{value.name}' needs ({location.stat().st_size} < {end} bytes); it is truncated"
            )
