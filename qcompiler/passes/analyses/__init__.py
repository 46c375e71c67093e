"""Analyses: facts about a model that passes request and the analysis manager caches."""

from qcompiler.passes.analyses.linear import LinearLayer, LinearLayers, match_linear
from qcompiler.passes.analyses.norm_linear import (
    NormLinearGroups,
    NormSite,
    NormSites,
    OtherConsumer,
    find_norm_sites,
)

__all__ = [
    "LinearLayer",
    "LinearLayers",
    "NormLinearGroups",
    "NormSite",
    "NormSites",
    "OtherConsumer",
    "find_norm_sites",
    "match_linear",
]
