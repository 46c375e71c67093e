"""RepQ scale reparameterization: a per-channel activation quantizer as a per-tensor one.

notes/algorithms.md §1–§2. An activation y [..., C] calibrated with a per-channel asymmetric
quantizer (s_j, z_j) is rewritten for integer kernels, which need one (s̃, z̃) per tensor:

- s̃ = mean_j s_j, **z̃ = round(mean_j z_j)** (an integer: §19 trap 1), r1 = s/s̃ (> 0),
  r2 = z − z̃ (an integer vector), offset = s⊙r2.
- The reparameterized activation is ỹ = (y + offset)/r1. Its per-tensor codes equal the
  per-channel codes of y: round(ỹ_j/s̃) + z̃ = round(y_j/s_j + r2_j) + z̃ = round(y_j/s_j) + z_j,
  because s̃·r1_j = s_j and r2_j ∈ ℤ (exact ties y_j/s_j ∈ ℤ+½ with odd r2_j differ by one under
  half-even rounding: §19 trap 2).
- A linear consumer y·W + b reads ỹ instead with **W̃ = diag(r1)·W** (row j of an ``[in,out]``
  weight; column j of ``[out,in]``) and **b̃ = b − offset·W with the original W** (trap 4):
  ỹ·W̃ + b̃ = (y + offset)·W + b − offset·W = y·W + b, exactly in real arithmetic.
- Any other reader gets y back with the restore y = r1⊙ỹ − offset (§2).

Everything is computed in float64 and stored as float32; s̃ is rounded to float32 *before* r1 is
derived, so r1·s̃ reproduces s as closely as float32 parameters allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.quant.spec import QuantParams, QuantSpec


@dataclass(frozen=True, eq=False)
class ChannelFold:
    """The reparameterization of one per-channel quantizer (module docstring)."""

    channel: QuantParams
    """The calibrated per-channel (s, z) of y."""
    target: QuantParams
    """The per-tensor (s̃, z̃) of ỹ."""
    r1: np.ndarray
    """(C,) float64, s/s̃."""
    r2: np.ndarray
    """(C,) int64, z − z̃."""

    @classmethod
    def of(cls, channel: QuantParams, spec: QuantSpec) -> ChannelFold:
        """The fold of per-channel ``channel`` parameters; z̃ is rounded into ``spec``'s range."""
        if channel.axis is None:
            raise ValueError("a channel fold needs per-channel parameters")
        scale = channel.scale.astype(np.float64)
        zero = channel.zero_point.astype(np.int64)
        target_scale = np.float32(scale.mean())
        target_zero = int(np.clip(np.rint(zero.mean()), spec.qmin, spec.qmax))
        target = QuantParams(
            scale=np.asarray(target_scale, dtype=np.float32),
            zero_point=np.asarray(target_zero, dtype=channel.zero_point.dtype),
            axis=None,
        )
        return cls(channel, target, scale / float(target_scale), zero - target_zero)

    @property
    def offset(self) -> np.ndarray:
        """s⊙r2 (float64): what the fold adds to y before dividing by r1."""
        return self.channel.scale.astype(np.float64) * self.r2

    def reparameterize(self, y: np.ndarray) -> np.ndarray:
        """ỹ = (y + offset)/r1, in float64."""
        return (np.asarray(y, dtype=np.float64) + self.offset) / self.r1

    def restore(self, y_folded: np.ndarray) -> np.ndarray:
        """y = r1⊙ỹ − offset, in float64."""
        return self.r1 * np.asarray(y_folded, dtype=np.float64) - self.offset

    def fold_weight(self, weight: np.ndarray, weight_axis: int) -> np.ndarray:
        """W̃: input channel j of W times r1_j (rows of ``[in,out]``, columns of ``[out,in]``)."""
        input_axis = 1 - weight_axis
        shape = [1, 1]
        shape[input_axis] = -1
        folded = weight.astype(np.float64) * self.r1.reshape(shape)
        return folded.astype(weight.dtype)

    def bias_shift(self, weight: np.ndarray, weight_axis: int) -> np.ndarray:
        """offset·W (float64, [out]) with the original W: subtract it from the bias."""
        w = weight.astype(np.float64)
        return self.offset @ w if weight_axis == 1 else w @ self.offset

    def r1_range(self) -> tuple[float, float]:
        return float(self.r1.min()), float(self.r1.max())

    def r2_range(self) -> tuple[int, int]:
        return int(self.r2.min()), int(self.r2.max())
