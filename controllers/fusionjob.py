"""FusionJob handlers: place training NIC-aware, run it as one Ray job, report the plan."""

from __future__ import annotations

from controllers.reconcile import register
from controllers.workloads import decide_workload
from modelfleet.api.registry import kind_by_name
from modelfleet.fusion.plan import compute_fusionjob_status, plan_fusionjob

register(kind_by_name("FusionJob"), decide_workload(plan_fusionjob, compute_fusionjob_status))
