"""Plan the workload that runs a FusionJob, and its status: pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime

from modelfleet.api.fusionjob import FusionJobSpec, FusionJobStatus, PlacementSummary
from modelfleet.core.names import child_name
from modelfleet.core.status import compute_workload_status
from modelfleet.core.workload import (
    CPU,
    Blocked,
    Observation,
    WorkerGroup,
    WorkerRequest,
    Workload,
    WorkloadKind,
    gpu_selector,
    group_workers,
)
from modelfleet.fusion.placement import describe_model, pin_workers, place_training, summarize
from modelfleet.scheduling.inventory import Inventory

ENTRYPOINT = "modelfleet.fusion.runtime"
PLACEMENT_KEY = "placement"


def _group_by_gpu_type(spec: FusionJobSpec) -> tuple[WorkerGroup, ...]:
    """Workers grouped by GPU type, one GPU each: used when no placement is planned."""
    requests: list[WorkerRequest] = [
        (request.gpu_type, 1 if request.gpus else 0, gpu_selector(request.gpu_type))
        for request in spec.resources
        for _ in range(max(request.count, 1))
    ]
    return group_workers(requests)


def plan_fusionjob(
    name: str, spec: FusionJobSpec, inventory: Inventory | None
) -> Workload | Blocked:
    """One Ray job. With the cluster's inventory and the target's architecture, the
    job is placed NIC-aware and its workers pinned to the planned nodes; otherwise
    workers are grouped by GPU type and the runtime lays them out itself."""
    job = child_name(name, "fusion")
    uses_gpus = any(r.count for r in spec.resources if r.gpu_type != CPU)
    if inventory is None or not uses_gpus or describe_model(spec) is None:
        groups = _group_by_gpu_type(spec)
        return Workload(job, WorkloadKind.JOB, ENTRYPOINT, spec.to_wire(), groups, pod=spec.pod)
    placement = place_training(spec, inventory)
    if isinstance(placement, Blocked):
        return placement
    summary = summarize(placement).to_wire()
    summary["rankNodes"] = list(placement.rank_nodes)
    config = {**spec.to_wire(), PLACEMENT_KEY: summary}
    return Workload(job, WorkloadKind.JOB, ENTRYPOINT, config, pin_workers(placement), pod=spec.pod)


def compute_fusionjob_status(
    _spec: FusionJobSpec,
    workload: Workload,
    observation: Observation,
    previous: FusionJobStatus,
    generation: int,
    now: datetime,
) -> FusionJobStatus:
    """Conditions from the workload, and the planned placement when there is one."""
    summary = workload.config.get(PLACEMENT_KEY)
    placement = None if summary is None else PlacementSummary.model_validate(summary)
    return compute_workload_status(
        workload, observation, previous, generation, now, placement=placement
    )
