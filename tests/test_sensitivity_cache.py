"""The sensitivity cache: a second report reuses every layer, an interrupted one the finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompiler.report import sensitivity
from qcompiler.report.evaluate import Pool
from qcompiler.report.sensitivity import layer_sensitivities
from qcompiler.report.sensitivity_cache import SensitivityCache
from tests.test_quantize_passes import FEEDS, calibrate_by_hand, planned


def test_a_second_run_reuses_every_layer_with_the_same_values(tmp_path: Path) -> None:
    model, plan = planned()
    calibrate_by_hand(model, plan)
    first = layer_sensitivities(model, plan, FEEDS, "y", Pool.NONE, cache_dir=tmp_path)
    second = layer_sensitivities(model, plan, FEEDS, "y", Pool.NONE, cache_dir=tmp_path)
    assert (first.reused, second.reused) == (0, 2)
    assert second.layers == first.layers and list(second.layers) == ["fc1", "fc2"]
    other_output = layer_sensitivities(model, plan, FEEDS, "x_out", Pool.NONE, cache_dir=tmp_path)
    assert other_output.reused == 0  # another output is another key


def test_an_interrupted_run_measures_only_the_missing_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, plan = planned()
    calibrate_by_hand(model, plan)
    complete = layer_sensitivities(model, plan, FEEDS, "y", Pool.NONE)
    cache = SensitivityCache(tmp_path, model, plan, FEEDS, "y", Pool.NONE.value)
    fc1 = complete.layers["fc1"]
    cache.store({"fc1": (fc1.one_minus_cosine, fc1.sqnr_db)})  # killed after the first layer
    measured: list[str] = []
    original = sensitivity._single_layer_error

    def counting(*args: object) -> tuple[float, float]:
        measured.append(args[2].node)  # type: ignore[attr-defined]
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sensitivity, "_single_layer_error", counting)
    resumed = layer_sensitivities(model, plan, FEEDS, "y", Pool.NONE, cache_dir=tmp_path)
    assert measured == ["fc2"] and resumed.reused == 1
    assert resumed.layers == complete.layers


def test_an_unreadable_entry_is_measured_again(tmp_path: Path) -> None:
    model, plan = planned()
    calibrate_by_hand(model, plan)
    cache = SensitivityCache(tmp_path, model, plan, FEEDS, "y", Pool.NONE.value)
    cache.path.write_text("{not json")
    result = layer_sensitivities(model, plan, FEEDS, "y", Pool.NONE, cache_dir=tmp_path)
    assert result.reused == 0 and len(result.layers) == 2
    assert set(cache.load()) == {"fc1", "fc2"}
