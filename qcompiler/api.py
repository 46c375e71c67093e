"""The Python entry points: ``load``, ``canonicalize``, ``compile``.

``load`` brings any supported input into one IR (``onnx_ir.Model``): ONNX files and ModelProtos
through the ONNX frontend, torch modules, ExportedPrograms and FX GraphModules through
torch.export and the dynamo ONNX exporter. The ONNX path never imports torch.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from qcompiler.errors import QCompilerError
from qcompiler.frontends.onnx import load_onnx
from qcompiler.passes.canonicalize import DEFAULT_TARGET_OPSET, canonicalization_passes
from qcompiler.passes.manager import Instrument, PassManager, PipelineResult
from qcompiler.quant.recipe import Recipe

if TYPE_CHECKING:
    from qcompiler.compiler import CompileResult

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


def compile(
    source: ModelSource,
    recipe: str | os.PathLike[str] | Recipe = "repq-w8a8",
    calibration: object = None,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    target_opset: int = DEFAULT_TARGET_OPSET,
    instruments: Sequence[Instrument] = (),
    **export_options: Any,
) -> CompileResult:
    """Quantize ``source`` with ``recipe``; returns the result (save it with ``save_compiled``).

    ``source`` is anything :func:`load` takes (an ONNX path or proto, an IR model, a torch
    module with ``example_inputs`` and the exporter's options such as ``dynamic_shapes`` and
    ``input_names``); an ``onnx_ir.Model`` is quantized in place. ``calibration`` is what static
    recipes need: an iterable of feed dicts, a dict of arrays (first axis = samples), an ``.npz``
    path, or a torch DataLoader.
    """
    from qcompiler.compiler import compile_model
    from qcompiler.quant.recipe import load_recipe

    model = load(source, example_inputs, **export_options)
    return compile_model(
        model,
        recipe if isinstance(recipe, Recipe) else load_recipe(recipe),
        calibration,
        input_sha256=input_fingerprint(source, model),
        batch_size=batch_size,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        target_opset=target_opset,
        instruments=instruments,
    )


def input_fingerprint(source: ModelSource, model: ir.Model) -> str:
    """sha256 of the input file, or of the serialized model for in-memory inputs."""
    if isinstance(source, (str, os.PathLike)):
        from qcompiler.compiler import file_sha256

        return file_sha256(source)
    payload = ir.to_proto(model).SerializeToString(deterministic=True)
    return hashlib.sha256(payload).hexdigest()
