"""Inspecting a model: a JSON-ready report, rich tables, and DOT / HTML graph views.

``inspect_model`` (summary.py) builds the report, ``render_inspection`` (render.py) prints it;
the graph views live in :mod:`qcompiler.inspect.graphview` (imported on demand: it needs networkx).
"""

from qcompiler.inspect.render import render_inspection
from qcompiler.inspect.summary import SCHEMA, inspect_model

__all__ = ["SCHEMA", "inspect_model", "render_inspection"]
