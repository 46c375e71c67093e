"""The report's RepQ section: one row per reparameterized activation (notes/algorithms.md §1–2).

From the sidecar alone: the tensor, its producer, what absorbed the per-channel affine (the
LayerNormalization's γ/β, or an explicit float affine), the float ops the fold added and the
ranges of r1 = s/s̃ and r2 = z − z̃. With the float model and data, also the SQNR of quantizing
that activation **before** (one per-tensor scale over the calibrated range, what plain static
quantization does) and **after** (the reparameterized quantizer, whose codes are the
per-channel ones), on the sensitivity batch.

A plan written after the fold names the folded tensors (``…_reparameterized``) and per-tensor
parameters for them, so a float model measured against it must be folded the same way first:
:func:`replay_reparameterization` rebuilds the pre-fold plan from the sites' per-channel
parameters and runs the same pass, which is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompiler.ir.edit import expose_outputs
from qcompiler.passes.repq.plan_channelwise import channelwise_spec
from qcompiler.passes.repq.reparameterize import ReparameterizeChannels
from qcompiler.quant.plan import ChannelSite, QuantPlan
from qcompiler.quant.spec import QuantParams, QuantSpec
from qcompiler.quant.uniform import compute_params, fake_quantize
from qcompiler.report.evaluate import load_session, run_outputs
from qcompiler.report.metrics import sqnr_db
from qcompiler.report.sensitivity import first_batch


@dataclass(frozen=True)
class SiteRow:
    site: ChannelSite
    sqnr_per_tensor_db: float | None = None
    """Measured: one scale for the whole tensor over the channels' calibrated range."""
    sqnr_reparameterized_db: float | None = None
    """Measured: the reparameterized quantizer (per-channel codes)."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.site.to_json(),
            "sqnr_per_tensor_db": self.sqnr_per_tensor_db,
            "sqnr_reparameterized_db": self.sqnr_reparameterized_db,
        }


def folded_sites(plan: QuantPlan) -> list[ChannelSite]:
    """The sites the reparameterize pass folded."""
    return [s for s in plan.channelwise.values() if s.reparameterized and s.channel is not None]


def site_rows(plan: QuantPlan) -> list[SiteRow]:
    return [SiteRow(site) for site in folded_sites(plan)]


def measured_site_rows(model: ir.Model, plan: QuantPlan, data: object) -> list[SiteRow]:
    """Rows with both SQNRs, measured on the first batch of ``data`` with ``model`` (the float
    model, *before* the replay)."""
    sites = folded_sites(plan)
    if not sites:
        return []
    feeds = first_batch(model, data)
    names = [site.activation for site in sites]
    session = load_session(expose_outputs(model.clone(), names), "float")
    values = run_outputs(session, names, feeds, 0)
    return [_measured(site, values[site.activation], _spec(plan, site)) for site in sites]


def replay_reparameterization(model: ir.Model, plan: QuantPlan) -> None:
    """Fold ``model`` (the canonicalized float model) as compile did for ``plan``."""
    if folded_sites(plan):
        ReparameterizeChannels(unfolded(plan))(model)


def unfolded(plan: QuantPlan) -> QuantPlan:
    """A copy of ``plan`` as it was before the fold: per-channel specs and parameters."""
    before = QuantPlan.from_json(plan.to_json())
    for site in folded_sites(before):
        assert site.channel is not None
        for decision in before.readers(str(site.reparameterized)):
            assert decision.activations is not None
            decision.activation = site.activation
            decision.activations = channelwise_spec(decision.activations, None)
        before.activation_params[site.activation] = site.channel
        site.reparameterized = None
    return before


def _measured(site: ChannelSite, y: np.ndarray, spec: QuantSpec) -> SiteRow:
    channel = site.channel
    assert channel is not None
    per_tensor = _per_tensor_params(channel, spec)
    return SiteRow(
        site,
        sqnr_db(y, fake_quantize(y, per_tensor, spec)),
        sqnr_db(y, fake_quantize(y, channel, channelwise_spec(spec, None))),
    )


def _per_tensor_params(channel: QuantParams, spec: QuantSpec) -> QuantParams:
    """One (s, z) covering every channel's calibrated range (the plain static quantizer)."""
    scale = channel.scale.astype(np.float64)
    zero = channel.zero_point.astype(np.float64)
    low, high = (spec.qmin - zero) * scale, (spec.qmax - zero) * scale
    return compute_params(low.min(), high.max(), spec)


def _spec(plan: QuantPlan, site: ChannelSite) -> QuantSpec:
    """The per-tensor spec the fold left on the site's readers."""
    spec = plan.readers(str(site.reparameterized))[0].activations
    assert spec is not None and spec.granularity.kind == "per-tensor"
    return spec
