"""Pass, analyses and the pass manager.

The shapes come from the codebases this field already trusts:

- onnx-ir: a pass is a small class with one ``call(model) -> PassResult(model, modified)``;
  ``requires(model)`` / ``ensures(model)`` raise pre/postcondition errors. :class:`Pass`
  subclasses :class:`onnx_ir.passes.InPlacePass`, so every qcompiler pass also runs under onnx-ir's
  own ``Sequential`` / ``PassManager``.
- LLVM's new pass manager: analyses are computed on demand, cached, and invalidated after a pass
  that changed the graph unless the pass declares them preserved.
- torch.fx's pass infrastructure: invariants are checked after each pass (``verify_each``) and an
  error names the failing pass and the passes that ran before it.

A pass declares its :class:`Semantics`. With ``verify_each`` the manager runs the ONNX checker and
the pass's numerical contract on a fixed batch after every pass that changed the graph: EXACT
passes must keep every output within a normwise relative error of ``EXACT_TOLERANCE``, APPROX
passes within their declared ``tolerance``; LOSSY passes have their error recorded only.
"""

from __future__ import annotations

import abc
import enum
import resource
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

import numpy as np
import onnx_ir as ir

from qcompiler.errors import QCompilerError, first_line

EXACT_TOLERANCE = 1e-5
"""Normwise relative error ‖a − b‖ / ‖b‖ an EXACT pass may introduce (float32 rounding)."""

T = TypeVar("T")


class Semantics(enum.Enum):
    """What a pass promises about the model's float outputs."""

    EXACT = "exact"
    """Outputs unchanged up to float rounding (≤ ``EXACT_TOLERANCE`` normwise)."""
    APPROX = "approx"
    """Outputs change by at most the pass's declared ``tolerance``."""
    LOSSY = "lossy"
    """Outputs change (quantization); the error is measured and reported, never bounded."""


@dataclass(frozen=True)
class Skip:
    """A site a pass looked at and left alone, with the reason a user can read."""

    site: str
    reason: str


@dataclass
class PassLog:
    """What one run of a pass did: counters, skipped sites and notes."""

    counters: Counter[str] = field(default_factory=Counter)
    skips: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def skip(self, site: ir.Node | ir.Value | str, reason: str) -> None:
        name = site if isinstance(site, str) else (site.name or repr(site))
        self.skips.append(Skip(name, reason))

    def note(self, message: str) -> None:
        self.notes.append(message)

    def extend(self, other: PassLog) -> None:
        """Add another log's counters, skips and notes to this one."""
        self.counters.update(other.counters)
        self.skips.extend(other.skips)
        self.notes.extend(other.notes)


class Analysis(abc.ABC, Generic[T]):
    """A fact about a model computed on demand and cached by the :class:`AnalysisManager`.

    Subclasses implement :meth:`compute`; the class itself is the cache key.
    """

    @classmethod
    @abc.abstractmethod
    def compute(cls, model: ir.Model, analyses: AnalysisManager) -> T:
        """Compute the analysis result for ``model`` (may request other analyses)."""


class AnalysisManager:
    """Caches analysis results for one model until a pass invalidates them."""

    def __init__(self) -> None:
        self._cache: dict[tuple[type[Analysis[Any]], int], Any] = {}
        self.computed: Counter[str] = Counter()

    def get(self, analysis: type[Analysis[T]], model: ir.Model) -> T:
        key = (analysis, id(model))
        if key not in self._cache:
            self._cache[key] = analysis.compute(model, self)
            self.computed[analysis.__name__] += 1
        result: T = self._cache[key]
        return result

    def invalidate(self, preserved: Sequence[type[Analysis[Any]]] = ()) -> None:
        """Drop every cached result except those of the ``preserved`` analyses."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] in preserved}


class NodeError(Exception):
    """Raised inside a pass to say which node it failed on."""

    def __init__(self, node: ir.Node, message: str) -> None:
        super().__init__(message)
        self.node_name = node.name or f"<unnamed {node.op_type}>"


class Pass(ir.passes.InPlacePass):
    """A qcompiler pass: an in-place onnx-ir pass that declares its semantics and analyses.

    Subclasses set ``name`` and ``semantics`` and implement ``call``. Inside ``call`` use
    ``self.log`` for counters, skips and notes, and ``self.analysis(SomeAnalysis, model)`` for
    cached analyses. ``call`` returns ``PassResult(model, modified)`` with ``modified`` True iff the
    graph changed, so that a second run of the pass reports ``False``. ``required_analyses`` are
    computed (or taken from the cache while still valid) before ``call`` runs;
    ``preserved_analyses`` stay cached after a pass that modified the model, all others are
    invalidated.
    """

    name: ClassVar[str]
    semantics: ClassVar[Semantics]
    tolerance: ClassVar[float | None] = None
    """Declared bound on the normwise output error (APPROX passes only)."""
    required_analyses: ClassVar[tuple[type[Analysis[Any]], ...]] = ()
    preserved_analyses: ClassVar[tuple[type[Analysis[Any]], ...]] = ()

    def __init__(self) -> None:
        self.log = PassLog()
        self.analyses = AnalysisManager()

    def analysis(self, analysis: type[Analysis[T]], model: ir.Model) -> T:
        return self.analyses.get(analysis, model)

    def contract_bound(self) -> float | None:
        """The normwise error this pass must stay within, or None when it is not bounded."""
        if self.semantics is Semantics.EXACT:
            return EXACT_TOLERANCE
        if self.semantics is Semantics.APPROX:
            return self.tolerance
        return None


@dataclass
class PassRecord:
    """The manager's account of one pass run."""

    name: str
    semantics: Semantics
    modified: bool
    seconds: float
    peak_rss_mb: float
    counters: dict[str, int]
    skips: list[Skip]
    notes: list[str]
    output_errors: dict[str, float] | None = None
    """Normwise relative error per graph output vs. before the pass (``verify_each`` only)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "semantics": self.semantics.value,
            "modified": self.modified,
            "seconds": round(self.seconds, 4),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "counters": dict(self.counters),
            "skips": [{"site": s.site, "reason": s.reason} for s in self.skips],
            "notes": list(self.notes),
            "output_errors": self.output_errors,
        }


@dataclass
class PipelineResult(ir.passes.PassResult):
    """``PassResult`` of a whole pipeline, with one record per pass."""

    records: list[PassRecord] = field(default_factory=list)

    def counters(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for record in self.records:
            total.update(record.counters)
        return total


class PassFailure(QCompilerError):
    """A pass raised or broke its contract; says which pass, which node and what ran before."""

    def __init__(self, pass_name: str, history: Sequence[str], message: str, node: str | None):
        where = f" at node '{node}'" if node else ""
        before = ", ".join(history) if history else "none"
        super().__init__(
            f"pass '{pass_name}' failed{where}: {message} (passes run before: {before})"
        )
        self.pass_name = pass_name
        self.node = node
        self.history = list(history)


class Instrument(Protocol):
    """Hooks the manager calls around the pipeline and each pass (progress, dumps)."""

    def begin(self, passes: Sequence[Pass]) -> None: ...

    def before_pass(self, pass_: Pass, model: ir.Model) -> None: ...

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None: ...


class DumpAfterChange:
    """Writes the model to ``directory/NN-<pass>.onnx`` after every pass that changed it."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._index = 0

    def begin(self, passes: Sequence[Pass]) -> None:
        del passes

    def before_pass(self, pass_: Pass, model: ir.Model) -> None:
        del pass_, model

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        from qcompiler.ir.io import save_model_atomic

        self._index += 1
        if record.modified:
            save_model_atomic(model, self.directory / f"{self._index:02d}-{pass_.name}.onnx")


def run_pass(pass_: Pass, model: ir.Model, analyses: AnalysisManager) -> ir.passes.PassResult:
    """Run one pass with a fresh log and the shared analyses; invalidate what it did not keep."""
    pass_.log = PassLog()
    pass_.analyses = analyses
    for analysis in pass_.required_analyses:
        analyses.get(analysis, model)  # computed now, or taken from the cache if still valid
    result = pass_(model)
    if result.modified:
        analyses.invalidate(pass_.preserved_analyses)
    return result


class PassManager(ir.passes.InPlacePass):
    """Runs passes in order with shared analyses, instruments and optional verification.

    ``verify_each=True`` runs, after each pass that modified the model, the ONNX checker and the
    pass's numerical contract on a fixed batch (``verify_feeds``, or a deterministic batch made
    from the graph's input types).
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        verify_each: bool = False,
        verify_feeds: Mapping[str, np.ndarray] | None = None,
        instruments: Sequence[Instrument] = (),
    ) -> None:
        self.passes = list(passes)
        self.verify_each = verify_each
        self.verify_feeds = verify_feeds
        self.instruments = list(instruments)
        self.analyses = AnalysisManager()

    def run(self, model: ir.Model) -> PipelineResult:
        """Run the pipeline (pre/postconditions included) and return its typed result."""
        return cast(PipelineResult, self(model))

    def call(self, model: ir.Model) -> PipelineResult:
        from qcompiler.passes import verify

        records: list[PassRecord] = []
        for instrument in self.instruments:
            instrument.begin(self.passes)
        reference = (
            verify.ContractReference.start(model, self.verify_feeds) if self.verify_each else None
        )
        for pass_ in self.passes:
            history = [r.name for r in records]
            for instrument in self.instruments:
                instrument.before_pass(pass_, model)
            record = self._run_one(pass_, model, history)
            if reference is not None and record.modified:
                record.output_errors = reference.check(pass_, model, history)
            records.append(record)
            for instrument in self.instruments:
                instrument.after_pass(pass_, model, record)
        return PipelineResult(model, any(r.modified for r in records), records)

    def _run_one(self, pass_: Pass, model: ir.Model, history: list[str]) -> PassRecord:
        start = time.perf_counter()
        try:
            result = run_pass(pass_, model, self.analyses)
        except NodeError as error:
            raise PassFailure(pass_.name, history, str(error), error.node_name) from error
        except QCompilerError:
            raise
        except Exception as error:
            message = f"{type(error).__name__}: {first_line(error)}"
            raise PassFailure(pass_.name, history, message, None) from error
        seconds = time.perf_counter() - start
        return PassRecord(
            name=pass_.name,
            semantics=pass_.semantics,
            modified=result.modified,
            seconds=seconds,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            counters=dict(pass_.log.counters),
            skips=list(pass_.log.skips),
            notes=list(pass_.log.notes),
        )


class FixedPoint(Pass):
    """Runs ``passes`` in order, again and again, until a whole round changes nothing.

    Simplifications enable each other (folding a Cast lets shape inference make a shape static,
    which lets a Shape → Slice chain fold), so a single round is not idempotent. Counters, skips
    and notes of the inner passes are merged into this pass's log; ``rounds`` counts the rounds
    that changed the model. Its semantics are the weakest of its passes'.
    """

    semantics = Semantics.EXACT

    def __init__(self, name: str, passes: Sequence[Pass], max_rounds: int = 8) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]
        self.passes = list(passes)
        self.max_rounds = max_rounds
        order = [Semantics.EXACT, Semantics.APPROX, Semantics.LOSSY]
        self.semantics = max((p.semantics for p in passes), key=order.index)  # type: ignore[misc]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for _ in range(self.max_rounds):
            if not self._round(model):
                return ir.passes.PassResult(model, modified=modified)
            modified = True
            self.log.count("rounds")
        self.log.note(f"stopped after {self.max_rounds} rounds that all changed the model")
        return ir.passes.PassResult(model, modified=modified)

    def _round(self, model: ir.Model) -> bool:
        changed = False
        for pass_ in self.passes:
            changed |= run_pass(pass_, model, self.analyses).modified
            self.log.extend(pass_.log)
        return changed
