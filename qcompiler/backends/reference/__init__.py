"""The reference backend: small numpy integer kernels that define, bit for bit, what a
hardware backend (CUDA, later) computes for the operations ONNX Runtime can only simulate."""

from qcompiler.backends.reference.log_matmul import (
    ShiftAccumulators,
    fraction_bits,
    log_matmul,
    shift_accumulators,
)

__all__ = ["ShiftAccumulators", "fraction_bits", "log_matmul", "shift_accumulators"]
