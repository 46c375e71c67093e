"""Calibration data: every source a user can give, as one stream of checked feed batches.

The calibration engine consumes ``dict[str, np.ndarray]`` batches keyed by the model's input
names. Users have their data in other shapes, so :class:`CalibrationStream` accepts:

- a mapping ``input name → array`` whose first axis indexes samples; the engine cuts it into
  batches of ``batch_size`` (a single ready-made batch is ``[feeds]``, a list of one);
- a path to an ``.npz`` file (``--calib FILE.npz``) holding one such array per input, named as
  the input; its arrays are read batch by batch from the archive, never whole, so that memory
  stays at one batch (DESIGN.md §8);
- any iterable of batches, each a dict keyed by input name or a tuple/list in the model's input
  order, holding numpy arrays or torch tensors; a torch ``DataLoader`` is such an iterable.
  torch is never imported here: a tensor is recognised only when torch is already loaded;
- :class:`Sentences` for the MiniLM example: tokenized per batch with
  :func:`~qcompiler.examples.minilm.minilm_feeds`, so each batch is padded to its own longest
  sentence and sequence lengths vary across batches.

Every batch is checked against the graph's inputs before it reaches ONNX Runtime, and a problem
is reported as one line (:class:`CalibrationDataError`) naming the input and the batch: an empty
set, unknown or missing inputs, a wrong element type, rank or static dimension, and NaN or ±inf
(ORT silently ignores NaN in min/max and inf makes a scale infinite, notes/algorithms.md §19
trap 10). While streaming, a sha256 over every batch's names, element types, shapes and bytes is
computed: the data half of the calibration cache key.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx_ir as ir

from qcompiler.errors import QCompilerError

Feeds = dict[str, np.ndarray]
"""One batch: model input name → array."""

_FINGERPRINT_FORMAT = b"qcompiler.data_fingerprint/1"


class CalibrationDataError(QCompilerError):
    """The calibration data does not fit the model (one line naming the input and batch)."""


@dataclass(frozen=True)
class ModelInput:
    """What a graph input accepts: element type and shape (``None`` for a symbolic dim)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...] | None
    """``None`` when the graph does not state the rank."""

    @classmethod
    def from_value(cls, value: ir.Value) -> ModelInput:
        if value.dtype is None:
            raise CalibrationDataError(f"model input '{value.name}' has no element type")
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else None for d in value.shape.dims)
        return cls(str(value.name), np.dtype(value.dtype.numpy()), shape)

    def describe(self) -> str:
        """``float32[?, 3, 224, 224]``: how error messages show what the input expects."""
        if self.shape is None:
            return f"{self.dtype}[any rank]"
        return f"{self.dtype}[{', '.join('?' if d is None else str(d) for d in self.shape)}]"


def model_inputs(model: ir.Model) -> tuple[ModelInput, ...]:
    """The graph inputs a feed must provide, in graph order.

    Inputs that are also initializers (old exporters list weights as inputs) have a default
    value and are not fed.
    """
    return tuple(ModelInput.from_value(v) for v in model.graph.inputs if v.const_value is None)


@dataclass(frozen=True)
class Sentences:
    """Sentences for the MiniLM example, tokenized batch by batch by the engine.

    Each batch is padded to its own longest sentence (truncated at ``max_length`` tokens), so
    the sequence length varies across batches as it does in deployment.
    """

    texts: Sequence[str]
    max_length: int = 128


class CalibrationStream:
    """Checked, fingerprinted feed batches from any calibration source (module docstring).

    Iterating yields one ``Feeds`` per batch, each checked against ``inputs``; after a complete
    pass :attr:`fingerprint` holds the sha256 of everything that was yielded. A one-shot source
    (a generator) can be iterated once; :attr:`reiterable` says whether a second pass is possible.
    """

    def __init__(self, data: object, inputs: Sequence[ModelInput], batch_size: int) -> None:
        if batch_size < 1:
            raise CalibrationDataError(f"batch size must be at least 1, not {batch_size}")
        self.inputs = tuple(inputs)
        self._source = _batches(data, batch_size)
        self.reiterable = not isinstance(self._source, Iterator)
        self.fingerprint: str | None = None
        self._started = False

    def __iter__(self) -> Iterator[Feeds]:
        if self._started and not self.reiterable:
            raise CalibrationDataError(
                "the calibration data is a one-shot iterator and was already read: "
                "give a list, a dict of arrays, an .npz file or a DataLoader"
            )
        self._started = True
        self.fingerprint = None
        fingerprint = _DataFingerprint()
        count = 0
        for index, item in enumerate(self._source):
            feeds = self._checked(item, index)
            fingerprint.update(feeds)
            count += 1
            yield feeds
        if count == 0:
            raise CalibrationDataError("the calibration data is empty: it yielded no batches")
        self.fingerprint = fingerprint.hexdigest()

    def _checked(self, item: object, index: int) -> Feeds:
        names = [i.name for i in self.inputs]
        feeds = _as_feeds(item, names, index)
        _check_names(feeds, names, index)
        for spec in self.inputs:
            _check_array(feeds[spec.name], spec, index)
        return feeds


class _DataFingerprint:
    """sha256 over the names, element types, shapes and bytes of every batch, in order."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256(_FINGERPRINT_FORMAT)

    def update(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._sha.update(b"batch")
        for name in sorted(feeds):
            array = np.ascontiguousarray(feeds[name])
            header = f"{name}\0{array.dtype.str}\0{array.shape}\0".encode()
            self._sha.update(len(header).to_bytes(8, "little") + header)
            self._sha.update(array.reshape(-1).view(np.uint8).data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _batches(data: object, batch_size: int) -> Iterable[object]:
    """The raw batches of ``data``: arrays and files are cut into ``batch_size`` rows."""
    if isinstance(data, Mapping):
        return _ArrayBatches(data, batch_size)
    if isinstance(data, (str, os.PathLike)):
        return _NpzBatches(Path(data), batch_size)
    if isinstance(data, Sentences):
        return _SentenceBatches(data, batch_size)
    if isinstance(data, Iterable) and not isinstance(data, (bytes, np.ndarray)):
        return data
    raise CalibrationDataError(
        f"calibration data of type {type(data).__name__} is not supported: give a dict of "
        "arrays, an .npz path, or an iterable of feed dicts (e.g. a DataLoader)"
    )


@dataclass(frozen=True)
class _ArrayBatches:
    """``batch_size``-row slices of arrays that share their first (sample) axis."""

    arrays: Mapping[str, Any]
    batch_size: int

    def __iter__(self) -> Iterator[dict[str, Any]]:
        counts = {name: _sample_count(array, name) for name, array in self.arrays.items()}
        total = _common_count(counts, "the calibration arrays")
        for start in range(0, total, self.batch_size):
            stop = start + self.batch_size
            yield {name: array[start:stop] for name, array in self.arrays.items()}


@dataclass(frozen=True)
class _SentenceBatches:
    """Tokenized batches of ``batch_size`` sentences, each padded to its longest sentence."""

    sentences: Sentences
    batch_size: int

    def __iter__(self) -> Iterator[Feeds]:
        from qcompiler.examples.minilm import minilm_feeds

        texts = list(self.sentences.texts)
        for start in range(0, len(texts), self.batch_size):
            yield minilm_feeds(texts[start : start + self.batch_size], self.sentences.max_length)


@dataclass(frozen=True)
class _NpzBatches:
    """``batch_size``-row batches read straight from the members of an ``.npz`` archive.

    Each member is opened as a stream and read one batch of rows at a time, so an archive
    larger than memory calibrates in the memory of one batch (compressed members too: the
    stream decompresses sequentially). Members in Fortran order or of object type cannot be
    read by rows and are loaded whole.
    """

    path: Path
    batch_size: int

    def __iter__(self) -> Iterator[Feeds]:
        with self._open() as archive:
            readers = {
                name.removesuffix(".npy"): _NpyRows(archive.open(name), name)
                for name in archive.namelist()
            }
            counts = {name: reader.rows for name, reader in readers.items()}
            total = _common_count(counts, f"the arrays in {self.path.name}")
            for start in range(0, total, self.batch_size):
                rows = min(self.batch_size, total - start)
                yield {name: reader.read(rows) for name, reader in readers.items()}

    def _open(self) -> zipfile.ZipFile:
        if not self.path.is_file():
            raise CalibrationDataError(f"calibration file {self.path} does not exist")
        if not zipfile.is_zipfile(self.path):
            raise CalibrationDataError(
                f"calibration file {self.path} is not an .npz archive (write it with numpy.savez)"
            )
        return zipfile.ZipFile(self.path)


class _NpyRows:
    """Reads an ``.npy`` stream a number of rows (first-axis entries) at a time."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise CalibrationDataError(f"member {name} uses .npy format {version}; re-save it")
        if not shape:
            raise CalibrationDataError(f"array '{name}' is a scalar: it needs a sample axis")
        self._stream, self._name = stream, name
        self._row_shape, self._dtype = tuple(shape[1:]), dtype
        self.rows = int(shape[0])
        self._whole: np.ndarray | None = None
        if fortran or dtype.hasobject:
            self._whole = np.lib.format.read_array(stream, allow_pickle=False)
        self._next = 0

    def read(self, rows: int) -> np.ndarray:
        start, self._next = self._next, self._next + rows
        if self._whole is not None:
            return self._whole[start : self._next]
        size = rows * math.prod(self._row_shape) * self._dtype.itemsize
        data = self._stream.read(size)
        if len(data) != size:
            raise CalibrationDataError(f"array '{self._name}' in the .npz file is truncated")
        return np.frombuffer(data, dtype=self._dtype).reshape((rows, *self._row_shape))


def _sample_count(array: object, name: str) -> int:
    shape = getattr(array, "shape", None)
    if not shape:
        raise CalibrationDataError(
            f"calibration array '{name}' has no sample axis: give arrays shaped [samples, ...]"
        )
    return int(shape[0])


def _common_count(counts: Mapping[str, int], what: str) -> int:
    """The one sample count shared by all arrays (0 when there are none)."""
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}': {n}" for name, n in counts.items())
        raise CalibrationDataError(f"{what} differ in sample count ({listed})")
    return next(iter(counts.values()), 0)


def _as_feeds(item: object, names: Sequence[str], index: int) -> Feeds:
    """A raw batch (dict, tuple/list in input order, or one array) as a name → array dict."""
    if isinstance(item, Mapping):
        return {str(k): _as_array(v, str(k), index) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        if len(item) > len(names):
            raise CalibrationDataError(
                f"calibration batch {index} has {len(item)} values but the model takes "
                f"{len(names)} inputs ({', '.join(names)})"
            )
        return {name: _as_array(v, name, index) for name, v in zip(names, item, strict=False)}
    if len(names) == 1 and _is_array_like(item):
        return {names[0]: _as_array(item, names[0], index)}
    raise CalibrationDataError(
        f"calibration batch {index} is a {type(item).__name__}: give a dict keyed by input "
        f"name or a tuple in input order ({', '.join(names)})"
    )


def _is_array_like(value: object) -> bool:
    return isinstance(value, np.ndarray) or _torch_tensor(value) is not None


def _torch_tensor(value: object) -> Any:
    """``value`` if it is a torch tensor. Never imports torch: without it, nothing is a tensor."""
    torch = sys.modules.get("torch")
    return value if torch is not None and isinstance(value, torch.Tensor) else None


def _as_array(value: object, name: str, index: int) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    tensor = _torch_tensor(value)
    if tensor is not None:
        array: np.ndarray = tensor.detach().cpu().numpy()
        return array
    raise CalibrationDataError(
        f"input '{name}' in calibration batch {index} is a {type(value).__name__}: "
        "give numpy arrays or torch tensors"
    )


def _check_names(feeds: Mapping[str, np.ndarray], names: Sequence[str], index: int) -> None:
    unknown = sorted(set(feeds) - set(names))
    missing = [name for name in names if name not in feeds]
    if unknown or missing:
        problems = [f"unknown input(s) {', '.join(map(repr, unknown))}"] if unknown else []
        problems += [f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []
        raise CalibrationDataError(
            f"calibration batch {index} has {' and '.join(problems)}; "
            f"the model's inputs are {', '.join(names)}"
        )


def _check_array(array: np.ndarray, spec: ModelInput, index: int) -> None:
    """Element type, rank, static dimensions, non-empty and (for floats) finite."""
    where = f"input '{spec.name}' in calibration batch {index}"
    if array.dtype != spec.dtype:
        raise CalibrationDataError(f"{where} is {array.dtype}; the model expects {spec.describe()}")
    if spec.shape is not None and (
        len(array.shape) != len(spec.shape)
        or any(d is not None and d != n for d, n in zip(spec.shape, array.shape, strict=True))
    ):
        raise CalibrationDataError(
            f"{where} has shape {list(array.shape)}; the model expects {spec.describe()}"
        )
    if array.size == 0:
        raise CalibrationDataError(f"{where} is empty (shape {list(array.shape)})")
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        counts = {"NaN": int(np.isnan(array).sum()), "±inf": int(np.isinf(array).sum())}
        found = " and ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        raise CalibrationDataError(f"{where} holds {found} values; calibration data must be finite")
