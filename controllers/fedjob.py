"""FedJob handlers: plan the federation, run it through the backend, and show its rounds."""

from __future__ import annotations

from datetime import datetime

from controllers.reconcile import register
from controllers.workloads import decide_workload
from modelfleet.api.common import Artifact
from modelfleet.api.fedjob import FedJobSpec, FedJobStatus
from modelfleet.api.registry import kind_by_name
from modelfleet.core.status import compute_workload_status
from modelfleet.core.workload import Observation, Workload
from modelfleet.federated.plan import plan_fedjob

REPORTED = ("round", "clients_reporting", "epsilon_spent", "bytes_sent", "metrics")
"""Status fields a run's report carries under the same names."""


def fedjob_status(
    _spec: FedJobSpec,
    workload: Workload,
    observation: Observation,
    previous: FedJobStatus,
    generation: int,
    now: datetime,
) -> FedJobStatus:
    """Conditions from the run's state, plus its rounds, ε, bytes, metrics and adapter."""
    report = observation.job_report
    fields = {key: report[key] for key in REPORTED if key in report}
    if report.get("adapter"):
        fields["artifacts"] = [Artifact(name="adapter", uri=report["adapter"])]
    return compute_workload_status(workload, observation, previous, generation, now, **fields)


register(kind_by_name("FedJob"), decide_workload(plan_fedjob, fedjob_status))
