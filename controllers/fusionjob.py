"""FusionJob handlers: plan one Ray job for the fusion run, status from what it reports."""

from __future__ import annotations

from controllers.reconcile import register
from controllers.workloads import decide_workload, job_status
from modelfleet.api.registry import kind_by_name
from modelfleet.fusion.plan import plan_fusionjob

register(kind_by_name("FusionJob"), decide_workload(plan_fusionjob, job_status))
