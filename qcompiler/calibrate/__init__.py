"""Calibration: the statistics that static quantization needs, gathered in one pass over data.

Passes request statistics (tensor name → QuantSpec); :func:`calibrate` runs the data through
ONNX Runtime once, on a copy of the graph, and returns :class:`CalibrationStats`. The data
sources it accepts and how they are checked live in :mod:`qcompiler.calibrate.data`; the engine
and its on-disk cache in :mod:`qcompiler.calibrate.engine`.
"""

from qcompiler.calibrate.data import (
    CalibrationDataError,
    CalibrationStream,
    ModelInput,
    Sentences,
    model_inputs,
)
from qcompiler.calibrate.engine import (
    CalibrationRequestError,
    CalibrationStats,
    TensorStats,
    calibrate,
)

__all__ = [
    "CalibrationDataError",
    "CalibrationRequestError",
    "CalibrationStats",
    "CalibrationStream",
    "ModelInput",
    "Sentences",
    "TensorStats",
    "calibrate",
    "model_inputs",
]
