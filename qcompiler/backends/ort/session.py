"""ONNX Runtime sessions on IR models.

The one place that turns an ``onnx_ir.Model`` into an ``onnxruntime.InferenceSession``. Sessions
run on the CPU provider; ``optimize=False`` disables ORT's graph rewrites so that what runs is the
graph qcompiler produced, which is what numerical contracts are about.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort


def make_session(
    model: ir.Model | bytes,
    *,
    optimize: bool = True,
    threads: int | None = None,
    optimized_model_path: Path | None = None,
) -> ort.InferenceSession:
    """A CPU session on an IR model, or on an already serialized ModelProto.

    ``optimized_model_path`` makes ORT write the graph it will execute there (fusions applied).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: qcompiler reports ORT's errors in one line
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    payload = model if isinstance(model, bytes) else ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def run_model(
    model: ir.Model, feeds: Mapping[str, np.ndarray], *, optimize: bool = True
) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``feeds``; returns outputs by name."""
    session = make_session(model, optimize=optimize)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))
