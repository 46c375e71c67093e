"""Analyses: facts about a model that passes request and the analysis manager caches."""

from qcompiler.passes.analyses.norm_linear import (
    LinearConsumer,
    NormLinearGroups,
    NormSite,
    NormSites,
    OtherConsumer,
    find_norm_sites,
)

__all__ = [
    "LinearConsumer",
    "NormLinearGroups",
    "NormSite",
    "NormSites",
    "OtherConsumer",
    "find_norm_sites",
]
