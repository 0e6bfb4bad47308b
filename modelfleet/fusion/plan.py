"""Plan the workload that runs a FusionJob: a pure function, no I/O."""

from __future__ import annotations

from modelfleet.api.fusionjob import FusionJobSpec
from modelfleet.core.names import child_name
from modelfleet.core.workload import WorkerRequest, Workload, WorkloadKind, group_workers

ENTRYPOINT = "modelfleet.fusion.runtime"


def plan_fusionjob(name: str, spec: FusionJobSpec) -> Workload:
    """One Ray job with a worker per requested GPU (one CPU worker for CPU-only jobs)."""
    requests: list[WorkerRequest] = [
        (request.gpu_type, 1 if request.count else 0, ())
        for request in spec.resources
        for _ in range(max(request.count, 1))
    ]
    return Workload(
        name=child_name(name, "fusion"),
        kind=WorkloadKind.JOB,
        entrypoint=ENTRYPOINT,
        config=spec.to_wire(),
        worker_groups=group_workers(requests),
    )
