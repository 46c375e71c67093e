"""Saving IR models atomically.

An output file either appears complete or not at all: the model is written into a temporary
directory beside the destination and moved into place with :func:`os.replace`. Models whose
tensors total more than ``EXTERNAL_DATA_THRESHOLD`` bytes are saved with their weights in one
external data file beside the model (``<name>.onnx.data``), since a protobuf cannot exceed 2 GB.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx_ir as ir

EXTERNAL_DATA_THRESHOLD = 1 << 30


def initializer_bytes(model: ir.Model) -> int:
    """Total size of the main graph's initializers in bytes."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)


def save_model_atomic(model: ir.Model, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` atomically; large models get an external data file."""
    destination = Path(path).resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    external = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = destination.name + ".data"
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".qcompiler-") as staging:
        staged = Path(staging) / destination.name
        ir.save(model, staged, external_data=data_name if external else None)
        if external:
            os.replace(Path(staging) / data_name, destination.parent / data_name)
        os.replace(staged, destination)
    return destination


def write_bytes_atomic(destination: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a staged file beside ``destination``, then move it into place.

    The file gets the permissions a plain ``open(..., "w")`` would (0666 less the umask), not
    the 0600 of a temporary file.
    """
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=path.parent, prefix=".qcompiler-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(staged, 0o666 & ~_umask())
        os.replace(staged, path)
    finally:
        Path(staged).unlink(missing_ok=True)
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
