"""Quantization: specs, the uniform quantizer, observers, plans and recipes (DESIGN.md §4)."""
