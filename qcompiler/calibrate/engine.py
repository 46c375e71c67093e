"""The calibration engine: one pass over the data gathers every statistic the passes asked for.

Passes say which tensors they need statistics for and how they will be quantized (a
``requests`` mapping, tensor name → :class:`~qcompiler.quant.spec.QuantSpec`); :func:`calibrate`
gathers them all in a single pass over the calibration data (the NNCF split: passes request,
the engine collects, notes/style.md).

How it runs:

- ONNX Runtime runs a *copy* of the graph in which the requested intermediates are extra graph
  outputs; the model being compiled is never altered (notes/algorithms.md §19 trap 30). Requested
  graph inputs are observed straight from the feeds. One session serves every batch; batch size
  and sequence length may vary from batch to batch.
- Each batch's requested tensors are reduced into one streaming observer per tensor
  (:mod:`qcompiler.quant.observers`, per-channel on the spec's axis) and dropped before the next
  batch runs, so memory is the model plus one batch whatever the number of batches (DESIGN.md §8).
- Observers exclude the masked-attention sentinel (|x| ≥ 1e30, e.g. the −3.4e38 fill of
  ``Where(mask, scores, -FLT_MAX)``) and ±inf, and count them; :class:`TensorStats` turns the
  counts into the ``sentinel`` and ``nonfinite`` flags that planning uses to keep such tensors in
  float (notes/algorithms.md §12 "Degenerate ranges", trap 9). NaN is an error naming the tensor
  and the batch.
- With ``cache_dir`` the result is stored on disk under a key made of the graph fingerprint, the
  data fingerprint and the requested specs; a later call with the same three returns the stored
  statistics without running ORT. Reading the data to fingerprint it costs one extra pass over
  the data (not the model) on every cached call.
- While measuring with ``cache_dir``, a checkpoint (the observers' states and the number of
  batches done) is written beside the entry every few batches or seconds. An interrupted
  calibration (a crash, a kill) run again with the same key resumes from it: the finished
  batches are read, to reach the next one and to check the data, but not run through the model.
  Observers resume bit for bit (``state()``), so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from qcompiler.backends.ort.session import make_session
from qcompiler.calibrate.data import (
    CalibrationDataError,
    CalibrationStream,
    Feeds,
    model_inputs,
)
from qcompiler.errors import QCompilerError, first_line
from qcompiler.ir.fingerprint import graph_fingerprint
from qcompiler.quant.observers import (
    NonFiniteCalibrationError,
    Observer,
    make_observer,
    observer_from_state,
)
from qcompiler.quant.spec import QuantSpec
from qcompiler.quant.uniform import FLOAT32_TINY

_CACHE_FORMAT = "qcompiler.calibration_cache/1"
_CHECKPOINT_FORMAT = "qcompiler.calibration_checkpoint/1"
CHECKPOINT_BATCHES = 16
CHECKPOINT_SECONDS = 5.0
"""Default checkpoint intervals: a kill loses at most 16 batches or 5 s of measuring. Measured
on MiniLM (24 tensors, 0.57 MB of JSON): a checkpoint takes 23 ms, 1.5 % of 16 batches of 4
sentences (0.1 s each) and 0.5 % of 5 s, the interval at 32 sentences a batch (1.3 s each)."""

T = TypeVar("T")


class CalibrationRequestError(QCompilerError):
    """A requested tensor cannot be calibrated (unknown name, or a weight)."""


class NaNInTensorError(NonFiniteCalibrationError):
    """A requested tensor held NaN although the inputs were checked finite: the model computes
    it on that batch (Log or Sqrt of a negative, 0/0). Names the tensor and the batch."""

    def __init__(self, tensor: str, batch: int, nan_count: int, size: int) -> None:
        super().__init__(nan_count, size, tensor)
        self.batch = batch
        self.args = (
            f"NaN in tensor '{tensor}' at calibration batch {batch}: {nan_count} of {size} "
            "values; the inputs were finite, so the model computes NaN on this batch",
        )


@dataclass
class TensorStats:
    """What calibration saw of one tensor: its streaming observer and the spec it serves."""

    spec: QuantSpec
    observer: Observer

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """(rmin, rmax) of the finite, non-sentinel values: shape () or (C,) per channel."""
        return self.observer.range()

    @property
    def sentinel(self) -> bool:
        """The tensor carried |x| ≥ 1e30 values (a mask fill): do not quantize it."""
        return self.observer.stats.has_sentinel

    @property
    def nonfinite(self) -> bool:
        """The tensor carried ±inf, excluded from the range."""
        return self.observer.stats.inf_count > 0

    @property
    def degenerate(self) -> bool:
        """Some channel's range, widened to include 0, has no width: all its values were zero,
        or none was left after the exclusions; its scale will be the placeholder 1."""
        rmin, rmax = self.range()
        return bool(np.any(np.maximum(rmax, 0) - np.minimum(rmin, 0) < FLOAT32_TINY))


@dataclass
class CalibrationStats(Mapping[str, TensorStats]):
    """Tensor name → :class:`TensorStats`, and which graph and data they were measured on."""

    tensors: dict[str, TensorStats]
    graph_fingerprint: str
    data_fingerprint: str
    batches: int
    from_cache: bool = False
    resumed_batches: int = 0
    """Batches taken from an interrupted run's checkpoint instead of being run again."""
    notes: list[str] = field(default_factory=list)
    """Things a caller should log (e.g. an unreadable cache entry that was recomputed)."""

    def __getitem__(self, name: str) -> TensorStats:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def range(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(rmin, rmax) of tensor ``name``."""
        return self.tensors[name].range()

    def flagged(self, flag: Literal["sentinel", "nonfinite", "degenerate"]) -> list[str]:
        """Names of the tensors whose ``sentinel``, ``nonfinite`` or ``degenerate`` flag is set."""
        return [name for name, stats in self.tensors.items() if getattr(stats, flag)]


def calibrate(
    model: ir.Model,
    data: object,
    requests: Mapping[str, QuantSpec],
    *,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> CalibrationStats:
    """Statistics of the ``requests``' tensors over ``data`` (module docstring).

    ``data`` is any source :class:`~qcompiler.calibrate.data.CalibrationStream` accepts;
    ``batch_size`` cuts arrays, ``.npz`` files and sentences into batches (iterables of batches
    keep their own). ``progress`` is called after each batch with the number of batches done.
    ``threads`` sets ORT's intra-op thread count (default: ORT's choice).
    """
    _check_requests(model, requests)
    stream = CalibrationStream(data, model_inputs(model), batch_size)
    fingerprint = graph_fingerprint(model)
    if cache_dir is None:
        return _measure(model, stream, requests, fingerprint, progress, threads)
    cache = _StatsCache(cache_dir, fingerprint, requests)
    return _calibrate_cached(model, stream, cache, progress, threads)


def _calibrate_cached(
    model: ir.Model,
    stream: CalibrationStream,
    cache: _StatsCache,
    progress: Callable[[int], None] | None,
    threads: int | None,
) -> CalibrationStats:
    """The stored stats for this graph, data and requests, or measure and store them.

    The data is read twice (fingerprint, then measurement); when the two reads differ (a
    shuffling DataLoader) the result is returned but not stored, with a note. Measurement
    resumes from this key's checkpoint if an interrupted run left one, and writes checkpoints
    as it goes; the checkpoint is deleted once the calibration is complete.
    """
    data_fingerprint = _data_fingerprint(stream)
    entry = cache.entry(data_fingerprint)
    cached = cache.load(entry)
    if cached is not None:
        return cached
    partial = cache.partial(entry)
    start = cache.load_checkpoint(partial, data_fingerprint)
    checkpointer = _Checkpointer(cache, partial, data_fingerprint, start)
    stats = _measure(
        model, stream, cache.requests, cache.fingerprint, progress, threads, start, checkpointer
    )
    stats.notes.extend(cache.notes)
    if stats.data_fingerprint == data_fingerprint:
        cache.store(entry, stats)
    else:
        stats.notes.append(
            "the calibration data changed between its two reads (a shuffling DataLoader?), "
            "so the statistics were not cached"
        )
    partial.unlink(missing_ok=True)
    return stats


def _check_requests(model: ir.Model, requests: Mapping[str, QuantSpec]) -> None:
    """Every requested name is a graph input or a node output of the main graph."""
    graph = model.graph
    produced = {v.name for v in graph.inputs} | {v.name for n in graph for v in n.outputs}
    for name in requests:
        if name in graph.initializers:
            raise CalibrationRequestError(
                f"tensor '{name}' is an initializer: weights are quantized from their values, "
                "not calibrated"
            )
        if name not in produced:
            raise CalibrationRequestError(
                f"cannot calibrate tensor '{name}': no graph input or node output of the main "
                "graph has that name"
            )


def _data_fingerprint(stream: CalibrationStream) -> str:
    """Read (and check) the whole data once, without the model, to learn its fingerprint."""
    if not stream.reiterable:
        raise CalibrationDataError(
            "the calibration cache reads the data twice, and a one-shot iterator can be read "
            "once: give a list, a dict of arrays, an .npz file or a DataLoader"
        )
    for _ in stream:
        pass
    assert stream.fingerprint is not None
    return stream.fingerprint


@dataclass(frozen=True)
class _Checkpoint:
    """Where an interrupted calibration stopped: its observers after ``batches`` batches."""

    observers: dict[str, Observer]
    batches: int


def _measure(
    model: ir.Model,
    stream: CalibrationStream,
    requests: Mapping[str, QuantSpec],
    fingerprint: str,
    progress: Callable[[int], None] | None,
    threads: int | None,
    start: _Checkpoint | None = None,
    checkpointer: _Checkpointer | None = None,
) -> CalibrationStats:
    """Run every batch through ORT and stream the requested tensors into observers.

    From a ``start`` checkpoint, its observers continue and its first ``start.batches`` batches
    are read (the stream checks and fingerprints them) but not run. ``checkpointer`` sees the
    observers after every batch run.
    """
    input_names = {i.name for i in stream.inputs}
    fetched = [name for name in requests if name not in input_names]
    session = _exposing_session(model, fetched, threads) if fetched else None
    if start is None:
        observers = {name: make_observer(spec) for name, spec in requests.items()}
    else:
        observers = start.observers
    skipped = 0 if start is None else start.batches
    batches = 0
    for index, feeds in enumerate(stream):
        batches = index + 1
        if index >= skipped:
            _observe_batch(session, fetched, feeds, observers, index)
            if checkpointer is not None:
                checkpointer.after_batch(observers, batches)
        if progress is not None:
            progress(batches)
    assert stream.fingerprint is not None
    tensors = {name: TensorStats(requests[name], observers[name]) for name in requests}
    stats = CalibrationStats(tensors, fingerprint, stream.fingerprint, batches)
    if skipped:
        stats.resumed_batches = skipped
        stats.notes.append(
            f"resumed from a checkpoint: {skipped} of {batches} batches already measured"
        )
    return stats


def _observe_batch(
    session: ort.InferenceSession | None,
    fetched: Sequence[str],
    feeds: Feeds,
    observers: Mapping[str, Observer],
    index: int,
) -> None:
    """Run one batch and update every observer; the batch's arrays die when this returns."""
    tensors: dict[str, np.ndarray] = dict(feeds)
    if session is not None:
        tensors.update(zip(fetched, _run(session, fetched, feeds, index), strict=True))
    for name, observer in observers.items():
        try:
            observer.update(tensors[name])
        except NonFiniteCalibrationError as error:
            raise NaNInTensorError(name, index, error.nan_count, error.size) from error


def _run(
    session: ort.InferenceSession, fetched: Sequence[str], feeds: Feeds, index: int
) -> list[np.ndarray]:
    try:
        outputs: list[np.ndarray] = session.run(list(fetched), feeds)
    except Exception as error:  # ORT raises its own pybind types, all with a message
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        raise CalibrationDataError(
            f"ONNX Runtime failed on calibration batch {index} ({shapes}): {first_line(error)}"
        ) from error
    return outputs


def _exposing_session(
    model: ir.Model, names: Sequence[str], threads: int | None
) -> ort.InferenceSession:
    """An ORT session on a serialized copy of ``model`` whose outputs include ``names``.

    The extra outputs carry the values' types and shapes as value_info (a value the IR has no
    type for goes out untyped and ORT infers it). The protobuf is dropped once serialized, so
    the transient peak is about three copies of the weights (IR, bytes, ORT's own).
    """
    values = ir.convenience.create_value_mapping(model.graph, include_subgraphs=False)
    proto = ir.to_proto(model)
    present = {output.name for output in proto.graph.output}
    proto.graph.output.extend(
        ir.serde.serialize_value(values[name]) for name in names if name not in present
    )
    payload = proto.SerializeToString()
    del proto
    return make_session(payload, threads=threads)


class _StatsCache:
    """Calibration statistics on disk, one JSON file per (graph, data, requests) key.

    Observer states are plain JSON (lists of numbers); the file is written to a temporary name
    and renamed, so readers never see half a file. An unreadable entry counts as a miss, is
    noted, and is overwritten. Beside an entry being measured lies its checkpoint (the
    ``.partial.json`` of the same key), rewritten every ``checkpoint_batches`` batches or
    ``checkpoint_seconds`` seconds, whichever comes first; an unreadable one is noted and
    ignored.
    """

    def __init__(
        self,
        directory: Path,
        fingerprint: str,
        requests: Mapping[str, QuantSpec],
        *,
        checkpoint_batches: int = CHECKPOINT_BATCHES,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.requests = requests
        self.checkpoint_batches = checkpoint_batches
        self.checkpoint_seconds = checkpoint_seconds
        self.notes: list[str] = []
        """Why an existing entry could not be used, for the recomputed stats' notes."""

    def entry(self, data_fingerprint: str) -> Path:
        """The file for this graph, data and requests: a hash of the three (and the format)."""
        key = {
            "format": _CACHE_FORMAT,
            "graph": self.fingerprint,
            "data": data_fingerprint,
            "requests": {name: spec.to_json() for name, spec in self.requests.items()},
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.directory / f"calibration-{digest[:32]}.json"

    def load(self, entry: Path) -> CalibrationStats | None:
        """The stats stored in ``entry``, or None (a miss, or an unreadable entry: noted)."""
        return self._read_or_note(
            entry, self._read, f"calibration cache entry {entry.name} was unreadable and was "
            "recomputed"
        )  # fmt: skip

    def store(self, entry: Path, stats: CalibrationStats) -> None:
        """Write ``stats`` to ``entry`` atomically (a temporary file, then a rename)."""
        self._write(
            entry,
            {
                "format": _CACHE_FORMAT,
                "graph_fingerprint": stats.graph_fingerprint,
                "data_fingerprint": stats.data_fingerprint,
                "batches": stats.batches,
                "states": {name: t.observer.state() for name, t in stats.tensors.items()},
            },
        )

    @staticmethod
    def partial(entry: Path) -> Path:
        """The checkpoint file of ``entry``'s key: ``calibration-<digest>.partial.json``."""
        return entry.with_suffix(".partial.json")

    def store_checkpoint(
        self, partial: Path, data_fingerprint: str, observers: Mapping[str, Observer], batches: int
    ) -> None:
        """Write the observers after ``batches`` batches to ``partial`` atomically."""
        self._write(
            partial,
            {
                "format": _CHECKPOINT_FORMAT,
                "graph_fingerprint": self.fingerprint,
                "data_fingerprint": data_fingerprint,
                "batches": batches,
                "states": {name: observer.state() for name, observer in observers.items()},
            },
        )

    def load_checkpoint(self, partial: Path, data_fingerprint: str) -> _Checkpoint | None:
        """The checkpoint in ``partial``, or None (none, or an unreadable one: noted)."""
        return self._read_or_note(
            partial,
            lambda path: self._read_checkpoint(path, data_fingerprint),
            f"calibration checkpoint {partial.name} was unreadable and was ignored, calibrating "
            "from the first batch",
        )

    def _read_or_note(self, path: Path, read: Callable[[Path], T], why: str) -> T | None:
        """``read(path)``; None when the file is absent, or unreadable (then ``why`` is noted)."""
        if not path.is_file():
            return None
        try:
            return read(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.notes.append(f"{why}: {first_line(error)}")
            return None

    def _read_checkpoint(self, path: Path, data_fingerprint: str) -> _Checkpoint:
        """Parse and check a checkpoint: its key, and one observer per request that has seen
        exactly ``batches`` batches (a file that disagrees with itself is not resumed from)."""
        saved = json.loads(path.read_text())
        expected = (_CHECKPOINT_FORMAT, self.fingerprint, data_fingerprint)
        found = (saved["format"], saved["graph_fingerprint"], saved["data_fingerprint"])
        if found != expected:
            raise ValueError(f"its format, graph or data fingerprint differs ({found[0]!r})")
        batches = saved["batches"]
        if not isinstance(batches, int) or batches < 1:
            raise ValueError(f"batches is {batches!r}, not a positive integer")
        observers = {name: observer_from_state(saved["states"][name]) for name in self.requests}
        for name, observer in observers.items():
            if type(observer) is not type(make_observer(self.requests[name])):
                raise ValueError(f"tensor '{name}' has a {type(observer).__name__}")
            if observer.stats.batches != batches:
                raise ValueError(
                    f"tensor '{name}' saw {observer.stats.batches} batches, not {batches}"
                )
        return _Checkpoint(observers, batches)

    def _write(self, path: Path, document: dict[str, object]) -> None:
        """Write ``document`` as JSON to ``path`` through a temporary file and a rename."""
        text = json.dumps(document)
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.directory, prefix=".qcompiler-", suffix=".json", delete=False
        ) as staged:
            staged_path = Path(staged.name)
        try:
            staged_path.write_text(text)
            os.replace(staged_path, path)
        finally:
            staged_path.unlink(missing_ok=True)

    def _read(self, path: Path) -> CalibrationStats:
        entry = json.loads(path.read_text())
        if entry["format"] != _CACHE_FORMAT:
            raise ValueError(f"format {entry['format']!r}, expected {_CACHE_FORMAT!r}")
        states = entry["states"]
        tensors = {
            name: TensorStats(spec, observer_from_state(states[name]))
            for name, spec in self.requests.items()
        }
        return CalibrationStats(
            tensors,
            entry["graph_fingerprint"],
            entry["data_fingerprint"],
            entry["batches"],
            from_cache=True,
        )


class _Checkpointer:
    """Writes a calibration's checkpoint every ``checkpoint_batches`` batches or
    ``checkpoint_seconds`` seconds (the cache's intervals), whichever comes first."""

    def __init__(
        self, cache: _StatsCache, partial: Path, data_fingerprint: str, start: _Checkpoint | None
    ) -> None:
        self.cache = cache
        self.partial = partial
        self.data_fingerprint = data_fingerprint
        self._saved_batches = 0 if start is None else start.batches
        self._saved_at = time.monotonic()

    def after_batch(self, observers: Mapping[str, Observer], batches: int) -> None:
        """Called once ``batches`` batches are in ``observers``: write them if one is due."""
        due_by_count = batches - self._saved_batches >= self.cache.checkpoint_batches
        due_by_time = time.monotonic() - self._saved_at >= self.cache.checkpoint_seconds
        if not (due_by_count or due_by_time):
            return
        self.cache.store_checkpoint(self.partial, self.data_fingerprint, observers, batches)
        self._saved_batches, self._saved_at = batches, time.monotonic()
