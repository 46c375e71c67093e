"""Read the sidecar ``<model>.qcompiler.json`` that ``compile`` writes next to its output.

The sidecar (schema ``qcompiler.compile/1``, see qcompiler/compiler.py) is what ``report`` knows
about a compiled model: the plan with every layer's decision and specs, the calibrated
activation parameters and ranges, and the kernel ONNX Runtime runs for each quantized weight.
A missing file, bad JSON, another schema or a missing field is a one-line error: a report built
from a half-understood file would mislead. Fields a later version adds within the schema are
ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompiler.backends.ort.fusibility import LayerKernel
from qcompiler.compiler import SIDECAR_SCHEMA, SIDECAR_SUFFIX
from qcompiler.errors import QCompilerError, first_line
from qcompiler.passes.materialize import float_weight_name
from qcompiler.quant.plan import QuantPlan


class SidecarError(QCompilerError):
    """The sidecar is missing, unreadable or not a ``qcompiler.compile/1`` document."""


@dataclass(frozen=True)
class Sidecar:
    """The parts of a compile sidecar that the report reads."""

    path: Path
    provenance: dict[str, str]
    plan: QuantPlan
    ranges: dict[str, tuple[Any, Any]]
    """Calibrated (min, max) per activation tensor (floats, or lists per channel)."""
    kernels: dict[str, LayerKernel]
    """By float weight name (the sidecar keys them by the integer initializer's name)."""


def sidecar_path(model: Path) -> Path:
    return model.with_name(model.name + SIDECAR_SUFFIX)


def read_sidecar(model: Path) -> Sidecar:
    """The sidecar of the compiled model at ``model``."""
    path = sidecar_path(model)
    document = _load_json(path)
    schema = document.get("schema") if isinstance(document, dict) else None
    if schema != SIDECAR_SCHEMA:
        raise SidecarError(
            f"{path} has schema {schema!r}, not {SIDECAR_SCHEMA!r}: it was not written by this "
            "qcompiler's compile; recompile the model"
        )
    try:
        return _parse(path, document)
    except (KeyError, TypeError, ValueError) as error:
        raise SidecarError(
            f"{path} is a {SIDECAR_SCHEMA} document with a missing or malformed field "
            f"({type(error).__name__}: {first_line(error)}); recompile the model"
        ) from error


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise SidecarError(
            f"no sidecar {path}: report reads the .qcompiler.json that `qcompiler compile` "
            "writes next to its output; compile the model again or put the file beside it"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SidecarError(f"{path} is not valid JSON ({first_line(error)})") from error


def _parse(path: Path, document: dict[str, Any]) -> Sidecar:
    calibration = document["calibration"] or {"tensors": {}}
    kernels = (LayerKernel.from_json(k) for k in document["kernels"])
    return Sidecar(
        path=path,
        provenance={str(k): str(v) for k, v in document["provenance"].items()},
        plan=QuantPlan.from_json(document["plan"]),
        ranges={
            name: (tensor["min"], tensor["max"]) for name, tensor in calibration["tensors"].items()
        },
        kernels={float_weight_name(k.weight): k for k in kernels},
    )
