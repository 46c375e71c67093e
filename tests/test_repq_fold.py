"""The RepQ fold's math (quant/reparam.py) against notes/algorithms.md §1–2, in float64."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.quant.reparam import ChannelFold
from qcompiler.quant.spec import QuantParams, QuantSpec, per_channel

U8 = QuantSpec(ir.DataType.UINT8, symmetric=False, granularity=per_channel(-1))


def channel_params(scale: np.ndarray, zero: np.ndarray) -> QuantParams:
    return QuantParams(scale=scale.astype(np.float32), zero_point=zero.astype(np.uint8), axis=-1)


def codes(x: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """QuantizeLinear in float64: clamp(round_half_even(x / s) + z) to uint8."""
    return np.clip(np.rint(x / scale) + zero, 0, 255).astype(np.int64)


def random_site(seed: int, channels: int) -> tuple[ChannelFold, np.ndarray]:
    """A fold from per-channel (s, z) of very different ranges, and activations y [64, C]."""
    rng = np.random.default_rng(seed)
    magnitude = np.exp(rng.uniform(-3, 3, channels))  # outlier channels, as after BERT's LNs
    y = rng.standard_normal((64, channels)) * magnitude + rng.uniform(-1, 1, channels) * magnitude
    low, high = np.minimum(y.min(0), 0), np.maximum(y.max(0), 0)
    scale = ((high - low) / 255).astype(np.float32)
    zero = np.clip(np.rint(-low / scale), 0, 255)
    return ChannelFold.of(channel_params(scale, zero), U8), y


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), channels=st.integers(1, 48), out=st.integers(1, 24))
def test_fold_preserves_every_linear_consumer_in_both_layouts(
    seed: int, channels: int, out: int
) -> None:
    fold, y = random_site(seed, channels)
    rng = np.random.default_rng(seed + 1)
    w = rng.standard_normal((channels, out))
    b = rng.standard_normal(out)
    y_folded = fold.reparameterize(y)
    for layout_w, axis, product in ((w, 1, lambda a, m: a @ m), (w.T, 0, lambda a, m: a @ m.T)):
        expected = product(y, layout_w) + b
        w_folded = fold.fold_weight(layout_w, axis)
        b_folded = b - fold.bias_shift(layout_w, axis)
        actual = product(y_folded, w_folded) + b_folded
        assert np.linalg.norm(actual - expected) <= 1e-12 * np.linalg.norm(expected)
    assert np.linalg.norm(fold.restore(y_folded) - y) <= 1e-12 * np.linalg.norm(y)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), channels=st.integers(1, 48))
def test_per_tensor_codes_of_the_folded_activation_equal_the_per_channel_codes(
    seed: int, channels: int
) -> None:
    fold, y = random_site(seed, channels)
    target_zero = fold.target.zero_point.astype(np.int64)
    assert fold.target.scale.shape == () and target_zero == np.rint(target_zero)
    assert np.array_equal(fold.r2, np.rint(fold.r2))  # §19 trap 1: r2 is an integer vector
    channel = codes(y, fold.channel.scale.astype(np.float64), fold.channel.zero_point)
    target_scale = np.float64(fold.target.scale)
    folded = codes(fold.reparameterize(y), target_scale, target_zero)
    assert np.array_equal(channel, folded)


def test_an_exact_tie_with_odd_r2_differs_by_one_code() -> None:
    """§1 step 1's exception: y/s = 2.5 in a channel with r2 = 1 rounds to 2 vs 4 − 1 = 3."""
    fold = ChannelFold.of(channel_params(np.array([0.5, 1.5]), np.array([10, 13])), U8)
    assert int(fold.target.zero_point) == 12 and fold.r2.tolist() == [-2, 1]
    y = np.array([[0.0, 3.75]])  # channel 1: 3.75 / 1.5 = 2.5 exactly
    channel = codes(y, fold.channel.scale.astype(np.float64), fold.channel.zero_point)
    folded = codes(fold.reparameterize(y), np.float64(fold.target.scale), 12)
    assert channel[0, 1] == 15 and folded[0, 1] == 16


def test_the_bias_must_be_folded_with_the_original_weight() -> None:
    """§19 trap 4: b − (s⊙r2)·W̃ (the folded weight) is measurably wrong."""
    fold, y = random_site(7, 16)
    w = np.random.default_rng(8).standard_normal((16, 4))
    expected = y @ w
    w_folded = fold.fold_weight(w, 1)
    wrong = fold.reparameterize(y) @ w_folded - fold.offset @ w_folded
    right = fold.reparameterize(y) @ w_folded - fold.bias_shift(w, 1)
    assert np.linalg.norm(right - expected) <= 1e-12 * np.linalg.norm(expected)
    assert np.linalg.norm(wrong - expected) > 1e-3 * np.linalg.norm(expected)


def test_the_target_zero_point_is_the_rounded_mean_and_stays_in_range() -> None:
    fold = ChannelFold.of(channel_params(np.array([1.0, 1.0, 1.0]), np.array([0, 1, 1])), U8)
    assert int(fold.target.zero_point) == 1  # mean 2/3 rounds to 1, not 0.667
    assert fold.target.zero_point.dtype == np.uint8
    assert fold.r1.tolist() == [1.0, 1.0, 1.0] and fold.r2.tolist() == [-1, 0, 0]


def test_a_per_tensor_quantizer_has_no_fold() -> None:
    params = QuantParams(np.asarray(0.1, np.float32), np.asarray(3, np.uint8), axis=None)
    with pytest.raises(ValueError, match="per-channel"):
        ChannelFold.of(params, U8)
