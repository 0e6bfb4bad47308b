"""FedJob handlers: plan one Ray job for the federation, status from what it reports."""

from __future__ import annotations

from controllers.reconcile import register
from controllers.workloads import decide_workload, job_status
from modelfleet.api.registry import kind_by_name
from modelfleet.federated.plan import plan_fedjob

register(kind_by_name("FedJob"), decide_workload(plan_fedjob, job_status))
