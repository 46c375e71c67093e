"""On-disk cache of per-layer sensitivities, written after every layer so a report resumes.

One single-layer model per quantized layer makes ``report --float`` the slowest command after
calibration (MiniLM: 36 models, 20–45 s). Results are stored as JSON under a key that is the
sha256 of everything they depend on: the float model's computation (graph fingerprint, after
the canonicalization and RepQ fold the report applies), the plan, the batch (names, dtypes,
shapes and bytes of every array), the measured output and the pooling. The entry is rewritten
atomically after each layer, so an interrupted report computes only the layers it lacks; an
unreadable entry is ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompiler.calibrate.data import Feeds
from qcompiler.ir.fingerprint import graph_fingerprint
from qcompiler.ir.io import write_bytes_atomic
from qcompiler.quant.plan import QuantPlan

FORMAT = "qcompiler.sensitivity-cache/1"


class SensitivityCache:
    """The stored (1 − cos, SQNR dB) of each layer for one model, plan, batch and output."""

    def __init__(
        self,
        directory: Path,
        model: ir.Model,
        plan: QuantPlan,
        feeds: Feeds,
        output: str,
        pool: str,
    ) -> None:
        key = {
            "format": FORMAT,
            "graph": graph_fingerprint(model),
            "plan": plan.to_json(),
            "feeds": _feeds_digest(feeds),
            "output": output,
            "pool": pool,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.path = directory / f"sensitivity-{digest[:32]}.json"

    def load(self) -> dict[str, tuple[float, float]]:
        """Layer → (1 − cos, SQNR dB) measured before; empty on a miss or a bad entry."""
        try:
            document = json.loads(self.path.read_text())
            if document["format"] != FORMAT:
                return {}
            return {str(k): (float(v[0]), float(v[1])) for k, v in document["layers"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return {}

    def store(self, layers: Mapping[str, tuple[float, float]]) -> None:
        document: dict[str, Any] = {"format": FORMAT, "layers": dict(layers)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, json.dumps(document).encode())


def _feeds_digest(feeds: Feeds) -> str:
    digest = hashlib.sha256()
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
