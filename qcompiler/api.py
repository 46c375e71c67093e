"""The Python entry points: ``load``, ``canonicalize``, ``inspect``.

``load`` brings any supported input into one IR (``onnx_ir.Model``): ONNX files and ModelProtos
through the ONNX frontend, torch modules, ExportedPrograms and FX GraphModules through
torch.export and the dynamo ONNX exporter. The ONNX path never imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from qcompiler.errors import QCompilerError
from qcompiler.frontends.onnx import load_onnx
from qcompiler.passes.canonicalize import DEFAULT_TARGET_OPSET, canonicalization_passes
from qcompiler.passes.manager import Instrument, PassManager, PipelineResult

ModelSource = str | os.PathLike[str] | onnx.ModelProto | ir.Model | Any


def load(
    source: ModelSource,
    example_inputs: tuple[Any, ...] | None = None,
    **export_options: Any,
) -> ir.Model:
    """Bring ``source`` into the IR.

    ``source`` is a path to an ONNX file, an ``onnx.ModelProto``, an ``onnx_ir.Model`` (returned
    as is), or a torch ``nn.Module`` / ``ExportedProgram`` / ``GraphModule``; torch inputs take
    ``example_inputs`` and the options of :func:`qcompiler.frontends.torch.from_torch`.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, (str, os.PathLike, onnx.ModelProto)):
        return load_onnx(source)
    if _is_torch_object(source):
        from qcompiler.frontends.torch import from_torch

        return from_torch(source, example_inputs, **export_options)
    raise QCompilerError(
        f"cannot load a {type(source).__name__}: give an ONNX path or ModelProto, an "
        "onnx_ir.Model, or a torch nn.Module / ExportedProgram / GraphModule"
    )


def _is_torch_object(source: object) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(source, (torch.nn.Module, torch.export.ExportedProgram))


def canonicalize(
    model: ir.Model,
    *,
    target_opset: int = DEFAULT_TARGET_OPSET,
    verify: bool = False,
    verify_feeds: Mapping[str, np.ndarray] | None = None,
    instruments: Sequence[Instrument] = (),
) -> PipelineResult:
    """Run the canonicalization pipeline on ``model`` in place (see passes/canonicalize)."""
    manager = PassManager(
        canonicalization_passes(target_opset),
        verify_each=verify,
        verify_feeds=verify_feeds,
        instruments=instruments,
    )
    return manager.run(model)
