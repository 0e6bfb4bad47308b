"""Typed models of every modelfleet custom resource, and the CRD generator.

This package is the single source of truth for the API: the CRDs under
``crds/`` and the chart are generated from it, the admission webhook validates
with it, and the controllers parse every spec through it. It imports nothing
else of modelfleet so every other layer can depend on it.
"""

from modelfleet.api.common import GROUP, VERSION, Condition, ConditionStatus, ConditionType
from modelfleet.api.registry import KINDS, KindInfo, kind_by_name

__all__ = [
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "KindInfo",
    "kind_by_name",
]
