"""Resuming an interrupted calibration from its on-disk checkpoint.

While measuring with a cache directory the engine writes a checkpoint (the observers' states and
the number of batches done) beside the cache entry; a rerun with the same graph, data and
requests runs only the batches the checkpoint lacks, and its statistics and compiled model are
the same as an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler.calibrate import CalibrationStats, CalibrationStream, calibrate, model_inputs
from qcompiler.calibrate import engine as engine_module
from qcompiler.calibrate.data import Feeds
from qcompiler.ir.fingerprint import graph_fingerprint
from qcompiler.quant.spec import QuantSpec, per_channel
from tests.graphs import build
from tests.test_calibrate import MLP, U8, assert_same_stats, mlp_arrays

REPOSITORY = Path(__file__).resolve().parents[1]
BATCH = 4
SAMPLES = 64
BATCHES = SAMPLES // BATCH
REQUESTS = {
    "x": U8,
    "h": QuantSpec(ir.DataType.INT8, True, observer="percentile"),
    "y": QuantSpec(ir.DataType.UINT8, False, per_channel(1)),
}
"""A MinMax, a histogram (percentile) and a per-channel observer: all must resume exactly."""


class Interrupted(Exception):
    """Stands for a crash or a Ctrl-C in the middle of calibration."""


def interrupt_after(batches: int) -> Callable[[int], None]:
    """A progress callback that stops the calibration once ``batches`` batches are done."""

    def progress(done: int) -> None:
        if done == batches:
            raise Interrupted

    return progress


def cached_calibration(
    directory: Path,
    *,
    every_batches: int = 5,
    every_seconds: float = math.inf,
    progress: Callable[[int], None] | None = None,
    requests: Mapping[str, QuantSpec] = REQUESTS,
) -> CalibrationStats:
    """Calibrate the MLP on 16 batches with the cache in ``directory`` and the given checkpoint
    intervals (``calibrate`` itself uses the defaults)."""
    model = build(MLP)
    stream = CalibrationStream(mlp_arrays(SAMPLES), model_inputs(model), BATCH)
    cache = engine_module._StatsCache(
        directory,
        graph_fingerprint(model),
        requests,
        checkpoint_batches=every_batches,
        checkpoint_seconds=every_seconds,
    )
    return engine_module._calibrate_cached(model, stream, cache, progress, 1)


def checkpoint(directory: Path) -> Path:
    (partial,) = directory.glob("calibration-*.partial.json")
    return partial


def checkpointed_batches(directory: Path) -> int | None:
    """The batch count of the checkpoint in ``directory``, None when there is none."""
    found = list(directory.glob("calibration-*.partial.json"))
    return json.loads(found[0].read_text())["batches"] if found else None


@pytest.fixture
def model_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The index of every batch the engine runs through ONNX Runtime."""
    runs: list[int] = []
    real = engine_module._run

    def counting(
        session: ort.InferenceSession, fetched: Sequence[str], feeds: Feeds, index: int
    ) -> list[np.ndarray]:
        runs.append(index)
        return real(session, fetched, feeds, index)

    monkeypatch.setattr(engine_module, "_run", counting)
    return runs


def assert_bitwise_equal(a: CalibrationStats, b: CalibrationStats) -> None:
    """Same ranges and flags, and every observer's full state (histograms included) equal."""
    assert_same_stats(a, b)
    for name in a:
        assert json.dumps(a[name].observer.state()) == json.dumps(b[name].observer.state())


# ---------------------------------------------------------------------------------------------
# The engine on a small graph


def test_a_checkpoint_is_written_every_n_batches_and_removed_at_the_end(tmp_path: Path) -> None:
    seen: list[int | None] = []
    cached_calibration(
        tmp_path, every_batches=3, progress=lambda _: seen.append(checkpointed_batches(tmp_path))
    )
    assert seen == [None, None, *[3 * (done // 3) for done in range(3, BATCHES + 1)]]
    assert not list(tmp_path.glob("*.partial.json"))
    assert len(list(tmp_path.glob("calibration-*.json"))) == 1


def test_a_checkpoint_is_written_when_its_interval_in_seconds_has_passed(tmp_path: Path) -> None:
    seen: list[int | None] = []
    cached_calibration(
        tmp_path,
        every_batches=BATCHES + 1,
        every_seconds=0.0,
        progress=lambda _: seen.append(checkpointed_batches(tmp_path)),
    )
    assert seen == list(range(1, BATCHES + 1))


def test_a_resumed_calibration_runs_only_the_missing_batches_and_equals_an_uninterrupted_one(
    tmp_path: Path, model_runs: list[int]
) -> None:
    uninterrupted = cached_calibration(tmp_path / "uninterrupted")
    model_runs.clear()
    with pytest.raises(Interrupted):
        cached_calibration(tmp_path / "resumed", progress=interrupt_after(12))
    assert checkpointed_batches(tmp_path / "resumed") == 10  # every 5 batches
    model_runs.clear()
    resumed = cached_calibration(tmp_path / "resumed")
    assert model_runs == list(range(10, BATCHES))
    assert (resumed.resumed_batches, resumed.batches, resumed.from_cache) == (10, BATCHES, False)
    assert resumed.notes == ["resumed from a checkpoint: 10 of 16 batches already measured"]
    assert_bitwise_equal(resumed, uninterrupted)
    assert not list((tmp_path / "resumed").glob("*.partial.json"))
    hit = cached_calibration(tmp_path / "resumed")
    assert hit.from_cache
    assert_bitwise_equal(hit, uninterrupted)


@pytest.mark.parametrize(
    ("corruption", "reason"),
    [
        (lambda text: "garbage", "Expecting value"),
        (lambda text: text[: len(text) // 2], "line 1 column"),
        # the first "batches" is the checkpoint's own count, the others the observers'
        (lambda text: text.replace('"batches": 10', '"batches": 12', 1), "saw 10 batches, not 12"),
        (lambda text: text.replace('"percentile"', '"minmax"'), "has a MinMaxObserver"),
    ],
    ids=["garbage", "truncated", "inconsistent-count", "wrong-observer"],
)
def test_a_corrupt_checkpoint_is_ignored_with_a_note(
    tmp_path: Path, model_runs: list[int], corruption: Callable[[str], str], reason: str
) -> None:
    uninterrupted = cached_calibration(tmp_path / "uninterrupted")
    with pytest.raises(Interrupted):
        cached_calibration(tmp_path / "resumed", progress=interrupt_after(12))
    partial = checkpoint(tmp_path / "resumed")
    partial.write_text(corruption(partial.read_text()))
    model_runs.clear()
    recomputed = cached_calibration(tmp_path / "resumed")
    assert model_runs == list(range(BATCHES))
    assert recomputed.resumed_batches == 0
    (note,) = recomputed.notes
    assert note.startswith(f"calibration checkpoint {partial.name} was unreadable and was ignored")
    assert reason in note, note
    assert_bitwise_equal(recomputed, uninterrupted)


def test_without_a_cache_directory_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[Path] = []
    monkeypatch.setattr(
        engine_module._StatsCache, "_write", lambda _, path, document: writes.append(path)
    )
    monkeypatch.chdir(tmp_path)
    stats = calibrate(build(MLP), mlp_arrays(SAMPLES), REQUESTS, batch_size=BATCH)
    assert stats.batches == BATCHES
    assert writes == []
    assert not list(tmp_path.iterdir())


def test_calibrate_checkpoints_with_the_default_intervals(tmp_path: Path) -> None:
    """``calibrate`` checkpoints into its cache directory, every ``CHECKPOINT_BATCHES`` batches
    here: 40 batches of 4 rows take milliseconds, far from ``CHECKPOINT_SECONDS``."""
    seen: list[int | None] = []
    samples = 40 * BATCH
    calibrate(
        build(MLP),
        {"x": np.zeros((samples, 4), np.float32)},
        {"h": U8},
        batch_size=BATCH,
        cache_dir=tmp_path,
        progress=lambda _: seen.append(checkpointed_batches(tmp_path)),
    )
    every = engine_module.CHECKPOINT_BATCHES
    assert set(seen) == {None, *range(every, 40, every)}
    assert not list(tmp_path.glob("*.partial.json"))


# ---------------------------------------------------------------------------------------------
# MiniLM through the command line, killed for real mid-calibration

SENTENCES = 256
CLI_BATCH = 8
CLI_BATCHES = SENTENCES // CLI_BATCH


def compile_command(output: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "qcompiler.cli", "compile", "--example", "minilm",
        "--calib-text", str(SENTENCES), "--batch-size", str(CLI_BATCH),
        "--cache-dir", str(cache), "-o", str(output),
    ]  # fmt: skip


def calibrate_pass(output: Path) -> dict[str, Any]:
    """The ``calibrate`` record of the pass log in ``output``'s sidecar."""
    sidecar = json.loads(output.with_name(output.name + ".qcompiler.json").read_text())
    (record,) = (r for r in sidecar["passes"] if r["name"] == "calibrate")
    return dict(record)


def compile_to_completion(output: Path, cache: Path) -> None:
    subprocess.run(compile_command(output, cache), cwd=REPOSITORY, check=True, capture_output=True)


def kill_after_first_checkpoint(output: Path, cache: Path) -> int:
    """Start a compile, SIGKILL it once a checkpoint is on disk; the checkpoint's batch count."""
    process = subprocess.Popen(
        compile_command(output, cache),
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while checkpointed_batches(cache) is None:
        assert process.poll() is None, "the compile ended before it wrote a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not output.exists()
    done = checkpointed_batches(cache)
    assert done is not None
    return done


def test_a_killed_compile_resumes_and_writes_the_same_model_faster(tmp_path: Path) -> None:
    """MiniLM, 256 sentences in 32 batches of 8: compile once uninterrupted (fresh cache), once
    killed with SIGKILL after its first checkpoint (16 batches, or fewer if 5 s passed first),
    then again with that cache. The rerun resumes, writes the same bytes and calibrates faster.

    Observed (2-core CPU): calibrate 5.4-7.9 s uninterrupted, 3.0-3.3 s resumed from 16 of 32
    batches; the rerun still reads the data twice and builds the ORT session, hence not half.
    """
    uninterrupted = tmp_path / "uninterrupted.onnx"
    compile_to_completion(uninterrupted, tmp_path / "fresh-cache")
    resumed = tmp_path / "resumed.onnx"
    done = kill_after_first_checkpoint(resumed, tmp_path / "cache")
    assert 0 < done < CLI_BATCHES
    compile_to_completion(resumed, tmp_path / "cache")
    record = calibrate_pass(resumed)
    expected = f"resumed from a checkpoint: {done} of {CLI_BATCHES} batches already measured"
    assert record["notes"] == [expected]
    assert resumed.read_bytes() == uninterrupted.read_bytes()
    seconds = (calibrate_pass(uninterrupted)["seconds"], record["seconds"])
    print(f"calibrate: {seconds[0]} s uninterrupted, {seconds[1]} s resumed from {done} batches")
    assert seconds[1] < seconds[0], seconds
