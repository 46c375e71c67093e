"""Per-pass verification: the ONNX checker and the numerical contract on a fixed batch.

The contract compares every graph output after a pass with the outputs before it, as the
normwise relative error ‖after − before‖ / ‖before‖ (element-wise rtol fails on values near zero,
see notes/algorithms.md §19 trap 3). ORT runs the graphs with its own rewrites disabled, so the
numbers describe the graph the pass produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from qcompiler.backends.ort.session import run_model
from qcompiler.errors import QCompilerError, first_line
from qcompiler.passes.manager import Pass, PassFailure

SYMBOLIC_DIM_SIZE = 2
"""Size given to symbolic dimensions (batch, sequence) in the synthesized verification batch."""


def normwise_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64; 0 when both are zero, inf when only one is."""
    a = np.asarray(actual, dtype=np.float64).ravel()
    b = np.asarray(expected, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return float("inf")
    diff = float(np.linalg.norm(a - b))
    norm = float(np.linalg.norm(b))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def verification_feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic batch for the graph inputs: N(0,1) floats, ones for integers, True for bools.

    Ones keep integer inputs valid for the common cases (token ids, attention masks, indices).
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.inputs:
        name = value.name
        if name is None or value.const_value is not None or name in model.graph.initializers:
            continue
        shape = tuple(d if isinstance(d, int) else SYMBOLIC_DIM_SIZE for d in (value.shape or ()))
        if value.dtype is None:
            raise ValueError(f"graph input '{name}' has no element type")
        dtype = value.dtype.numpy()
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = np.ones(shape, dtype=dtype)
    return feeds


def check_model(model: ir.Model) -> None:
    """Run the ONNX checker (with shape inference) on the serialized model."""
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


CHECKER_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
"""What the full ONNX check raises: structure errors and type/shape inference errors."""


@dataclass
class ContractReference:
    """Outputs before the next pass, so each pass is measured against its own input."""

    feeds: Mapping[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    @classmethod
    def start(cls, model: ir.Model, feeds: Mapping[str, np.ndarray] | None) -> ContractReference:
        """Check the input model and run it once, so no pass is blamed for what it inherited."""
        try:
            check_model(model)
        except CHECKER_ERRORS as error:
            raise QCompilerError(
                f"the input model fails the ONNX checker before any pass ran: {first_line(error)}"
            ) from error
        batch = dict(feeds) if feeds is not None else verification_feeds(model)
        try:
            outputs = run_model(model, batch, optimize=False)
        except Exception as error:
            raise QCompilerError(
                f"verification needs ONNX Runtime to run the input model, and it cannot: "
                f"{first_line(error)}"
            ) from error
        return cls(batch, outputs)

    def check(self, pass_: Pass, model: ir.Model, history: Sequence[str]) -> dict[str, float]:
        """Check the changed model; raise PassFailure on a checker error or a broken contract."""
        try:
            check_model(model)
        except CHECKER_ERRORS as error:
            message = f"ONNX checker: {first_line(error)}"
            raise PassFailure(pass_.name, history, message, None) from error
        outputs = run_model(model, self.feeds, optimize=False)
        errors = {name: normwise_error(outputs[name], ref) for name, ref in self.outputs.items()}
        bound = pass_.contract_bound()
        if bound is not None:
            for name, deviation in errors.items():
                if not deviation <= bound:
                    raise PassFailure(
                        pass_.name,
                        history,
                        f"{pass_.semantics.value} contract broken on output '{name}': "
                        f"normwise error {deviation:.3g} > {bound:.3g}",
                        None,
                    )
        self.outputs = outputs
        return errors
