"""Where a node came from: the torch module that produced it.

Reports name quantization sites by the torch module a user wrote (``encoder.layer.0.attention
.self.query``), not by an exporter's node name (``node_MatMul_82``). Two sources carry it:

- the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset >= 18) writes node metadata
  ``pkg.torch.onnx.name_scopes``: the repr of a list of module paths from the root (``''``) down
  to the innermost module, followed by the FX node name of the op itself, e.g.
  ``"['', 'm', 'm.encoder', ..., 'm.encoder.layer.0.attention.self.query', 'linear']"``;
- the TorchScript exporter (older ONNX files such as the DINOv2 example) encodes the path in the
  node name: ``/backbone/encoder/layer.0/attention/attention/query/MatMul``.

This module is torch-free: reports on plain ONNX files use it too.
"""

from __future__ import annotations

import ast

import onnx_ir as ir

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def module_name(node: ir.Node) -> str | None:
    """The dotted path of the innermost torch module that produced ``node``, if known.

    Returns None for nodes outside any named submodule (ops in the root module's own
    ``forward``) and for nodes with no provenance at all.
    """
    scopes = _name_scopes(node)
    if scopes is not None:
        # The last entry names the op itself; the entries before it are module paths.
        modules = [scope for scope in scopes[:-1] if scope]
        return modules[-1] if modules else None
    return _torchscript_module(node.name)


def _name_scopes(node: ir.Node) -> list[str] | None:
    """The parsed ``pkg.torch.onnx.name_scopes`` list, or None if absent or malformed."""
    raw = node.metadata_props.get(NAME_SCOPES_KEY)
    if raw is None:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        return None
    return scopes


def _torchscript_module(node_name: str | None) -> str | None:
    """``/a/b.0/c/MatMul`` → ``a.b.0.c``: the module path in a TorchScript exporter node name."""
    if not node_name or not node_name.startswith("/"):
        return None
    parts = node_name.strip("/").split("/")[:-1]
    return ".".join(parts) if parts else None
