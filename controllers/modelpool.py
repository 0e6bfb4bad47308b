"""ModelPool handlers: place replicas on GPU types, deploy a Ray Serve service."""

from __future__ import annotations

from controllers.reconcile import register
from controllers.workloads import decide_workload
from modelfleet.api.registry import kind_by_name
from modelfleet.serving.plan import compute_modelpool_status, plan_modelpool

register(
    kind_by_name("ModelPool"),
    decide_workload(
        lambda name, spec, _inventory: plan_modelpool(name, spec), compute_modelpool_status
    ),
)
