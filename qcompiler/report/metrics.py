"""Output-error metrics between a reference (float) and a candidate (quantized) output.

Definitions (notes/algorithms.md §18), every one over a leading sample axis:

- **cosine** ⟨a, b⟩ / (‖a‖‖b‖) per sample over the flattened output, then averaged (and the
  minimum, the worst sample). Two all-zero samples count as 1, one all-zero sample as 0.
- **SQNR** 10·log10(‖x‖² / ‖x − x̂‖²) dB = −20·log10(normwise error), with x the reference and the
  norms over every sample together (∞ when x̂ = x).
- **normwise error** ‖x̂ − x‖ / ‖x‖ (:func:`qcompiler.passes.verify.normwise_error`).
- **max abs error** max |x − x̂|.
- **top-k agreement** |topk(a) ∩ topk(b)| / k per sample (top-1 is the argmax match rate), over
  the last axis of class scores, or over the neighbours of each sample for embeddings
  (:func:`retrieval_scores`: which other samples are the k most similar).

Outputs come in batches (the sequence length of a text model differs from batch to batch), so
:class:`OutputComparison` streams: it keeps per-sample sums and a few numbers, never the outputs,
except the pooled embeddings that retrieval top-k needs (samples × dim).
:func:`mean_pool` turns a ``[batch, seq, dim]`` output into sentence embeddings over the attention
mask, the pooling of sentence-transformers (all-MiniLM-L6-v2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from qcompiler.passes.verify import normwise_error

TOP_K = (1, 5)
"""The k of the top-k agreements reported (a k needs more than k candidates to mean anything)."""

TopKKind = Literal["classes", "retrieval"]


def cosine_per_sample(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened output, in float64: shape ``[samples]``."""
    a, b = _flat(reference), _flat(candidate)
    dot = np.einsum("ij,ij->i", a, b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    cosine = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return np.where(both_zero, 1.0, cosine)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10·log10(‖x‖² / ‖x − x̂‖²) in dB over the whole arrays; ∞ when they are equal."""
    return sqnr_from_normwise(normwise_error(candidate, reference))


def sqnr_from_normwise(error: float) -> float:
    """SQNR in dB from a normwise error: −20·log10(error) (∞ at 0, −∞ at ∞)."""
    if error == 0.0:
        return math.inf
    return -20.0 * math.log10(error) if math.isfinite(error) else -math.inf


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    diff = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    return float(np.abs(diff).max(initial=0.0))


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int) -> np.ndarray:
    """|topk(a) ∩ topk(b)| / k per row of ``[samples, classes]`` scores: shape ``[samples]``."""
    if reference.ndim != 2 or reference.shape != candidate.shape:
        raise ValueError(f"top-k needs two [samples, classes] arrays, got {reference.shape}")
    if not 0 < k <= reference.shape[1]:
        raise ValueError(f"top-{k} of {reference.shape[1]} classes")
    top_a = np.argpartition(-reference, k - 1, axis=1)[:, :k]
    top_b = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
    shared = (top_a[:, :, None] == top_b[:, None, :]).any(axis=2).sum(axis=1)
    return np.asarray(shared / k, dtype=np.float64)


def retrieval_scores(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every sample to every other one, ``[samples, samples]``; a sample's
    similarity to itself is −∞ so that it is never its own neighbour."""
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    return scores


def mean_pool(hidden: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``[batch, seq, dim]`` over the positions where ``mask`` ``[batch, seq]`` is set
    (every position without a mask): ``[batch, dim]`` sentence embeddings."""
    if hidden.ndim != 3:
        raise ValueError(f"mean pooling needs a [batch, seq, dim] output, got {hidden.shape}")
    weights = np.ones(hidden.shape[:2]) if mask is None else np.asarray(mask, dtype=np.float64)
    if weights.shape != hidden.shape[:2]:
        raise ValueError(f"mask {weights.shape} does not fit an output of shape {hidden.shape}")
    total = np.einsum("bs,bsd->bd", weights, hidden.astype(np.float64))
    counts = np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    return np.asarray(total / counts, dtype=np.float32)


@dataclass(frozen=True)
class Comparison:
    """The metrics of one output over every evaluated sample."""

    output: str
    samples: int
    cosine_mean: float
    cosine_min: float
    sqnr_db: float
    normwise_error: float
    max_abs_error: float
    topk: dict[int, float]
    """k → mean agreement; empty when the output is neither class scores nor embeddings."""
    topk_kind: TopKKind | None

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "samples": self.samples,
            "cosine_mean": self.cosine_mean,
            "cosine_min": self.cosine_min,
            "sqnr_db": self.sqnr_db,
            "normwise_error": self.normwise_error,
            "max_abs_error": self.max_abs_error,
            "topk": {f"top{k}": value for k, value in self.topk.items()},
            "topk_kind": self.topk_kind,
        }


@dataclass
class ErrorEnergy:
    """Streaming ‖x‖² and ‖x − x̂‖² (float64), for the normwise error and SQNR of many batches."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        x = np.asarray(reference, dtype=np.float64)
        self.signal += float(np.square(x).sum())
        self.noise += float(np.square(x - np.asarray(candidate, dtype=np.float64)).sum())

    @property
    def normwise_error(self) -> float:
        """√(noise / signal), with :func:`~qcompiler.passes.verify.normwise_error`'s edge cases."""
        if self.signal == 0.0:
            return 0.0 if self.noise == 0.0 else math.inf
        return math.sqrt(self.noise / self.signal)

    @property
    def sqnr_db(self) -> float:
        return sqnr_from_normwise(self.normwise_error)


@dataclass
class OutputComparison:
    """Accumulates the metrics of one output over batches of ``[samples, ...]`` arrays.

    ``retrieval`` says that the arrays are ``[samples, dim]`` embeddings (pooled): top-k is then
    over neighbours among all samples, computed at the end. Otherwise 2-D arrays are class
    scores and top-k runs per batch over the last axis; other ranks get no top-k.
    """

    output: str
    retrieval: bool = False
    _cosines: list[np.ndarray] = field(default_factory=list)
    _energy: ErrorEnergy = field(default_factory=ErrorEnergy)
    _max_abs: float = 0.0
    _class_hits: dict[int, list[np.ndarray]] = field(default_factory=dict)
    _embeddings: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if reference.shape != candidate.shape:
            raise ValueError(
                f"output '{self.output}' has shape {list(reference.shape)} in the reference and "
                f"{list(candidate.shape)} in the candidate"
            )
        self._cosines.append(cosine_per_sample(reference, candidate))
        self._energy.add(reference, candidate)
        self._max_abs = max(self._max_abs, max_abs_error(reference, candidate))
        if self.retrieval:
            self._embeddings.append((reference, candidate))
        elif reference.ndim == 2:
            for k in _useful_k(reference.shape[1]):
                self._class_hits.setdefault(k, []).append(topk_agreement(reference, candidate, k))

    def result(self) -> Comparison:
        """The metrics over every sample seen (at least one :meth:`update` first)."""
        cosines = np.concatenate(self._cosines)
        topk, kind = self._retrieval_topk() if self.retrieval else self._class_topk()
        return Comparison(
            output=self.output,
            samples=int(cosines.size),
            cosine_mean=float(cosines.mean()),
            cosine_min=float(cosines.min()),
            sqnr_db=self._energy.sqnr_db,
            normwise_error=self._energy.normwise_error,
            max_abs_error=self._max_abs,
            topk=topk,
            topk_kind=kind,
        )

    def _retrieval_topk(self) -> tuple[dict[int, float], TopKKind]:
        reference = retrieval_scores(np.concatenate([a for a, _ in self._embeddings]))
        candidate = retrieval_scores(np.concatenate([b for _, b in self._embeddings]))
        neighbours = len(reference) - 1
        agreement = {
            k: float(topk_agreement(reference, candidate, k).mean()) for k in _useful_k(neighbours)
        }
        return agreement, "retrieval"

    def _class_topk(self) -> tuple[dict[int, float], TopKKind | None]:
        if not self._class_hits:
            return {}, None
        return {k: float(np.concatenate(h).mean()) for k, h in self._class_hits.items()}, "classes"


def _useful_k(candidates: int) -> list[int]:
    """The k of :data:`TOP_K` that leave something out of ``candidates`` (top-C of C is 1)."""
    return [k for k in TOP_K if k < candidates]


def _flat(x: np.ndarray) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    return array.reshape(array.shape[0], -1)
