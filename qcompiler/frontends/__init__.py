"""Frontends: bring ONNX files and torch programs into the IR (``onnx_ir.Model``)."""
