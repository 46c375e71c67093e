"""Compile: a float model in, a quantized ONNX model out, with provenance and a sidecar.

One pass pipeline (DESIGN.md §5): canonicalize → plan-linear → [plan-channelwise] → calibrate
(static recipes) → [reparameterize] → materialize → [quantize-softmax] → clean-up. The RepQ
passes run for recipes with a ``[channelwise]`` table, quantize-softmax for a ``[softmax]``
one. Then the ORT backend check reads ORT's optimized graph to say which layers run as integer
kernels and which are float simulations (backends/ort/fusibility.py).

The output model carries its provenance in ``metadata_props`` (input hash, recipe, data
fingerprint, versions, simulated layers); the sidecar ``<output>.qcompiler.json`` (schema
``qcompiler.compile/1``) holds what ``report`` needs: the plan, calibration ranges and flags, the
pass log and the kernels.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompiler.backends.ort.fusibility import LayerKernel, layer_kernels
from qcompiler.calibrate.engine import CalibrationStats
from qcompiler.errors import QCompilerError
from qcompiler.ir.io import save_model_atomic, write_bytes_atomic
from qcompiler.passes.canonicalize import (
    DEFAULT_TARGET_OPSET,
    canonicalization_passes,
    simplification,
)
from qcompiler.passes.manager import Instrument, Pass, PassManager, PassRecord
from qcompiler.passes.materialize import MaterializeQDQ, float_weight_name, quantized_weight_name
from qcompiler.passes.quantize.calibrate_activations import CalibrateActivations
from qcompiler.passes.quantize.plan_linear import PlanLinearQuantization
from qcompiler.passes.quantize.softmax_log import QuantizeSoftmaxOutputs
from qcompiler.passes.repq.plan_channelwise import PlanChannelwiseActivations
from qcompiler.passes.repq.reparameterize import ReparameterizeChannels
from qcompiler.quant.plan import QuantPlan
from qcompiler.quant.recipe import Recipe, SoftmaxRule

SIDECAR_SCHEMA = "qcompiler.compile/1"
SIDECAR_SUFFIX = ".qcompiler.json"
VERSIONED_PACKAGES = ("qcompiler", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy")


@dataclass
class CompileResult:
    model: ir.Model
    recipe: Recipe
    plan: QuantPlan
    records: list[PassRecord]
    kernels: list[LayerKernel]
    stats: CalibrationStats | None
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def simulated(self) -> list[LayerKernel]:
        return [k for k in self.kernels if not k.integer]

    def sidecar(self) -> dict[str, Any]:
        return {
            "schema": SIDECAR_SCHEMA,
            "provenance": self.provenance,
            "recipe": self.recipe.to_json(),
            "plan": self.plan.to_json(),
            "calibration": _calibration_json(self.stats),
            "kernels": [k.to_json() for k in self.kernels],
            "passes": [r.to_json() for r in self.records],
        }


def compile_model(
    model: ir.Model,
    recipe: Recipe,
    calibration: object = None,
    *,
    input_sha256: str,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    target_opset: int = DEFAULT_TARGET_OPSET,
    instruments: Sequence[Instrument] = (),
) -> CompileResult:
    """Quantize ``model`` in place with ``recipe``; static recipes need ``calibration`` data."""
    if recipe.mode == "static" and calibration is None:
        raise QCompilerError(
            f"recipe {recipe.name} is static and needs calibration data (--calib FILE.npz, or "
            "--calib-text for the example models); w8-dynamic needs none"
        )
    plan = QuantPlan(recipe.name, recipe.mode)
    calibrate = CalibrateActivations(plan, calibration, batch_size=batch_size, cache_dir=cache_dir)
    passes = compile_passes(recipe, plan, calibrate, target_opset)
    result = PassManager(passes, instruments=instruments).run(model)
    quantized_weights = [quantized_weight_name(d.weight) for d in plan.quantized()]
    kernels = layer_kernels(model, dict.fromkeys(quantized_weights)) if quantized_weights else []
    compiled = CompileResult(model, recipe, plan, result.records, kernels, calibrate.stats)
    compiled.provenance = _provenance(compiled, input_sha256, target_opset)
    _stamp(model, compiled.provenance)
    return compiled


def compile_passes(
    recipe: Recipe, plan: QuantPlan, calibrate: CalibrateActivations, target_opset: int
) -> list[Pass]:
    """The compile pipeline; its length is what progress displays count."""
    channelwise = recipe.channelwise
    return [
        *canonicalization_passes(target_opset),
        PlanLinearQuantization(recipe, plan),
        *([PlanChannelwiseActivations(channelwise, plan)] if channelwise else []),
        calibrate,
        *([ReparameterizeChannels(plan)] if channelwise and channelwise.reparameterizes else []),
        MaterializeQDQ(plan),
        *([_softmax_pass(recipe.softmax)] if recipe.softmax else []),
        simplification(),
    ]


def _softmax_pass(rule: SoftmaxRule) -> Pass:
    return QuantizeSoftmaxOutputs(rule.quantizer, rule.bits, rule.scale)


def save_compiled(result: CompileResult, output: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the model and its sidecar atomically; returns both paths."""
    path = save_model_atomic(result.model, output)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    write_bytes_atomic(sidecar, json.dumps(result.sidecar(), indent=1, default=str).encode())
    return path, sidecar


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance(result: CompileResult, input_sha256: str, target_opset: int) -> dict[str, str]:
    recipe_json = json.dumps(result.recipe.to_json(), sort_keys=True)
    simulated = [float_weight_name(k.weight) for k in result.simulated]
    return {
        "qcompiler.input_sha256": input_sha256,
        "qcompiler.recipe": result.recipe.name,
        "qcompiler.recipe_sha256": hashlib.sha256(recipe_json.encode()).hexdigest(),
        "qcompiler.target_opset": str(target_opset),
        "qcompiler.data_fingerprint": result.stats.data_fingerprint if result.stats else "",
        "qcompiler.versions": json.dumps(_versions(), sort_keys=True),
        "qcompiler.layers_quantized": str(len(result.plan.quantized())),
        "qcompiler.layers_integer": str(len(result.kernels) - len(simulated)),
        "qcompiler.layers_simulated": json.dumps(simulated),
    }


def _versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _stamp(model: ir.Model, provenance: dict[str, str]) -> None:
    model.metadata_props.update(provenance)


def _calibration_json(stats: CalibrationStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    tensors = {}
    for name, tensor in stats.items():
        rmin, rmax = tensor.range()
        tensors[name] = {
            "min": np.asarray(rmin).tolist(),
            "max": np.asarray(rmax).tolist(),
            "sentinel": tensor.sentinel,
            "nonfinite": tensor.nonfinite,
            "degenerate": tensor.degenerate,
            "spec": tensor.spec.to_json(),
        }
    return {
        "graph_fingerprint": stats.graph_fingerprint,
        "data_fingerprint": stats.data_fingerprint,
        "batches": stats.batches,
        "from_cache": stats.from_cache,
        "tensors": tensors,
    }
