"""Calibrate the plan's activation tensors and derive their quantization parameters.

Matches: the activation tensors of the plan's statically quantized layers
(``QuantPlan.calibration_requests``). Runs the calibration engine (calibrate/engine.py: ORT on a
copy of the graph with those tensors exposed, one streaming observer per tensor; the model is
not changed) and turns each range into per-tensor parameters (quant/uniform.py).
Skips (layers stay float, logged): tensors that carried sentinel values (|x| ≥ 1e30, e.g. an
attention-mask fill of −3.4e38: min/max would put every real value on one code, and saturating
the sentinel would un-mask positions; notes/algorithms.md §12, trap 9) and tensors with ±inf.
Degenerate ranges (all zeros, constant) get the safe parameters and a note.
Semantics: EXACT (writes the plan; ``modified`` is always False). The statistics stay on
``self.stats`` for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir

from qcompiler.calibrate.engine import CalibrationStats, TensorStats, calibrate
from qcompiler.passes.manager import Pass, Semantics
from qcompiler.quant.plan import QuantPlan
from qcompiler.quant.uniform import compute_params


class CalibrateActivations(Pass):
    name = "calibrate"
    semantics = Semantics.EXACT

    def __init__(
        self,
        plan: QuantPlan,
        data: object,
        *,
        batch_size: int = 32,
        cache_dir: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.data = data
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.progress = progress
        self.stats: CalibrationStats | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        requests = self.plan.calibration_requests()
        if not requests:
            return ir.passes.PassResult(model, modified=False)
        self.stats = calibrate(
            model,
            self.data,
            requests,
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
            progress=self.progress,
        )
        self.log.notes.extend(self.stats.notes)
        if self.stats.from_cache:
            self.log.note("statistics read from the cache")
        self.log.count("batches", self.stats.batches)
        for tensor, stats in self.stats.items():
            self._resolve(tensor, stats)
        return ir.passes.PassResult(model, modified=False)

    def _resolve(self, tensor: str, stats: TensorStats) -> None:
        problem = _why_unquantizable(stats)
        if problem:
            for node in self.plan.skip_activation(tensor, problem):
                self.log.skip(node, problem)
            return
        rmin, rmax = stats.range()
        params = compute_params(rmin, rmax, stats.spec)
        if params.degenerate:
            self.log.note(f"{tensor}: degenerate range [{rmin}, {rmax}], scale set to 1")
        self.plan.activation_params[tensor] = params
        self.log.count("tensors_calibrated")


def _why_unquantizable(stats: TensorStats) -> str:
    if stats.sentinel:
        return "activation carries sentinel values (|x| ≥ 1e30, a mask fill): kept float"
    if stats.nonfinite:
        return "activation carries ±inf: kept float"
    return ""
