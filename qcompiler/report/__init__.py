"""Evaluation and reports: how far a quantized model is from its float model, and why.

``metrics`` defines the output-error metrics, ``evaluate`` compares two models on data (``qcompiler
eval``), ``sidecar`` reads what ``compile`` recorded, ``sensitivity`` measures each layer's own
quantization error and its effect on the output, ``layers`` assembles the per-layer report and
``render`` draws both as rich tables (``qcompiler report``).
"""
