"""``eval``: run a float and a quantized model on the same held-out data and compare outputs.

Both models run in ONNX Runtime with its default optimizations, i.e. the integer kernels a
deployment gets (backends/ort/session.py), batch by batch. The data is any source the calibration
stream accepts (an ``.npz`` with one array per input, a dict of arrays, :class:`Sentences` for
MiniLM), checked against the float model's inputs batch by batch with the same one-line errors.
Each compared output streams into an :class:`~qcompiler.report.metrics.OutputComparison`; with
``pool=MEAN`` a ``[batch, seq, dim]`` output is first mean-pooled over the attention mask (the
sentence embedding of all-MiniLM-L6-v2) and top-k becomes neighbour retrieval among the samples.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from qcompiler.backends.ort.session import make_session
from qcompiler.calibrate.data import CalibrationStream, Feeds, ModelInput, model_inputs
from qcompiler.errors import QCompilerError, first_line
from qcompiler.report.metrics import Comparison, OutputComparison, mean_pool

EVAL_SCHEMA = "qcompiler.eval/1"
MASK_INPUT = "attention_mask"


class EvaluationError(QCompilerError):
    """The models or the data cannot be compared as asked (one line naming what and why)."""


class Pool(enum.Enum):
    """How a ``[batch, seq, dim]`` output is reduced before comparing."""

    NONE = "none"
    MEAN = "mean"


@dataclass(frozen=True)
class Evaluation:
    comparisons: list[Comparison]
    batches: int
    pool: Pool

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": EVAL_SCHEMA,
            "pool": self.pool.value,
            "batches": self.batches,
            "outputs": [c.to_json() for c in self.comparisons],
        }


def evaluate(
    reference: ir.Model,
    candidate: ir.Model,
    data: object,
    *,
    outputs: Sequence[str] = (),
    pool: Pool = Pool.NONE,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Compare ``candidate`` with ``reference`` on ``data`` (every reference output by default)."""
    inputs = shared_inputs(reference, candidate)
    names = list(outputs) or [str(v.name) for v in reference.graph.outputs]
    for model, role in ((reference, "float"), (candidate, "quantized")):
        check_outputs(model, names, role)
    sessions = (load_session(reference, "float"), load_session(candidate, "quantized"))
    comparisons = {name: OutputComparison(name, retrieval=pool is Pool.MEAN) for name in names}
    batches = 0
    for index, feeds in enumerate(CalibrationStream(data, inputs, batch_size)):
        expected, actual = (run_outputs(s, names, feeds, index) for s in sessions)
        for name, comparison in comparisons.items():
            _compare(comparison, expected[name], actual[name], feeds, pool, index)
        batches = index + 1
        if progress is not None:
            progress(batches)
    return Evaluation([c.result() for c in comparisons.values()], batches, pool)


def _compare(
    comparison: OutputComparison,
    expected: np.ndarray,
    actual: np.ndarray,
    feeds: Feeds,
    pool: Pool,
    index: int,
) -> None:
    name = comparison.output
    a, b = pooled(expected, feeds, pool, name), pooled(actual, feeds, pool, name)
    if a.shape != b.shape:
        raise EvaluationError(
            f"output '{name}' has shape {list(a.shape)} in the float model and {list(b.shape)} "
            f"in the quantized one on batch {index}"
        )
    comparison.update(a, b)


def shared_inputs(reference: ir.Model, candidate: ir.Model) -> tuple[ModelInput, ...]:
    """The float model's inputs, after checking the quantized model takes the same ones."""
    expected, actual = model_inputs(reference), model_inputs(candidate)
    if [i.name for i in expected] != [i.name for i in actual]:
        raise EvaluationError(
            f"the models take different inputs: float {', '.join(i.name for i in expected)}; "
            f"quantized {', '.join(i.name for i in actual)}"
        )
    return expected


def check_outputs(model: ir.Model, names: Sequence[str], role: str) -> None:
    """Every name is a graph output of ``model``; otherwise say which and suggest --expose."""
    present = [str(v.name) for v in model.graph.outputs]
    for name in names:
        if name not in present:
            close = difflib.get_close_matches(name, present, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise EvaluationError(
                f"the {role} model has no output '{name}'{hint}; its outputs are "
                f"{', '.join(present)}; --expose {name} makes an intermediate value an output"
            )


def load_session(model: ir.Model, role: str) -> ort.InferenceSession:
    """An ORT session on ``model``; a model ORT rejects is a one-line error naming ``role``."""
    try:
        return make_session(model)
    except Exception as error:  # ORT raises its own pybind types, all with a message
        raise EvaluationError(
            f"ONNX Runtime cannot load the {role} model: {first_line(error)}"
        ) from error


def run_outputs(
    session: ort.InferenceSession, names: Sequence[str], feeds: Feeds, index: int
) -> dict[str, np.ndarray]:
    """Run one batch; an ORT failure becomes a one-line error naming the batch's shapes."""
    try:
        arrays = session.run(list(names), dict(feeds))
    except Exception as error:  # ORT raises its own pybind types, all with a message
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        raise EvaluationError(
            f"ONNX Runtime failed on batch {index} ({shapes}): {first_line(error)}"
        ) from error
    return dict(zip(names, arrays, strict=True))


def pooled(
    output: np.ndarray, feeds: Mapping[str, np.ndarray], pool: Pool, name: str
) -> np.ndarray:
    """``output`` as compared: mean-pooled over the attention mask with ``Pool.MEAN``."""
    if pool is Pool.NONE:
        return output
    mask = feeds.get(MASK_INPUT)
    if output.ndim != 3 or (mask is not None and mask.shape != output.shape[:2]):
        raise EvaluationError(
            f"--pool mean needs [batch, seq, dim] outputs matching the {MASK_INPUT} input; "
            f"'{name}' has shape {list(output.shape)}: give --pool none or --output NAME"
        )
    return mean_pool(output, mask)
