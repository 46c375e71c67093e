"""Small graph edits shared by passes and commands: new initializers, exposed outputs.

:func:`add_initializer` registers a constant under a stable name (passes derive names from the
tensor they act on, so a compile is reproducible).

Evaluating a quantized model often needs a tensor the model does not return: DINOv2's backbone
features (``/backbone/layernorm/Add_1_output_0``) under its saliency head, a layer's activation.
:func:`expose_outputs` makes such values graph outputs (``--expose NAME`` on ``compile`` and
``eval``), so ONNX Runtime returns them next to the model's own outputs. Names are the stable
identifiers of the graph (DESIGN.md §3); an unknown one is a one-line error suggesting the
closest names, since exporter names are long and easy to mistype.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from qcompiler.errors import QCompilerError

MAX_SUGGESTIONS = 3


class UnknownValueError(QCompilerError):
    """A name that no graph input or node output of the main graph carries."""


def expose_outputs(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """Append the values called ``names`` to the graph outputs, in place; returns ``model``.

    A value must be a graph input or a node output of the main graph. One that already is a
    graph output stays as it is, so exposing twice changes nothing. Values the file carried no
    type for (DINOv2's intermediates) get their inferred types.
    """
    graph = model.graph
    values = _computed_values(graph)
    for name in names:
        value = values.get(name)
        if value is None:
            raise UnknownValueError(_unknown_message(name, graph, values))
        if not value.is_graph_output():
            graph.outputs.append(value)
    if any(values[name].type is None for name in names):
        _infer_types(model)
    return model


def _infer_types(model: ir.Model) -> None:
    """Give untyped values their inferred types: a graph output must have one (ONNX checker)."""
    from qcompiler.passes.canonicalize.shape_inference import InferShapes

    InferShapes()(model)


def _computed_values(graph: ir.Graph) -> dict[str, ir.Value]:
    """Graph inputs and node outputs of the main graph, by name."""
    values = {value.name: value for value in graph.inputs if value.name}
    values.update((value.name, value) for node in graph for value in node.outputs if value.name)
    return values


def _unknown_message(name: str, graph: ir.Graph, values: dict[str, ir.Value]) -> str:
    if name in graph.initializers:
        return f"cannot expose '{name}': it is an initializer (a constant), not a computed value"
    close = difflib.get_close_matches(name, list(values), n=MAX_SUGGESTIONS, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"cannot expose '{name}': no graph input or node output of the main graph has that "
        f"name{hint} (`qcompiler inspect MODEL --html` shows every value)"
    )


def add_initializer(
    graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType | None = None
) -> ir.Value:
    """Register ``array`` as initializer ``name`` (of ``dtype`` if given) and return its value."""
    data = np.asarray(array)
    tensor = ir.tensor(data, dtype=dtype, name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(data.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value
