"""qcompiler: a graph-level quantization compiler for ONNX and PyTorch models."""

from qcompiler.api import canonicalize, compile, load
from qcompiler.errors import QCompilerError

__version__ = "0.1.0"

__all__ = ["QCompilerError", "__version__", "canonicalize", "compile", "load"]
