"""The decide step of kinds that run one workload (FedJob, FusionJob, ModelPool)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from controllers.context import current
from controllers.faults import crash_point
from controllers.reconcile import Decide, Decision, Event, EventReason
from controllers.secrets import auth_secret_blocked
from modelfleet.api.common import BaseStatus
from modelfleet.backends.base import Owner
from modelfleet.core.status import (
    blocked_verdicts,
    compute_workload_status,
    job_finished,
    settle_status,
)
from modelfleet.core.workload import ApplyResult, Blocked, Observation, Workload, WorkloadKind
from modelfleet.scheduling.inventory import Inventory, InventoryError

Planner = Callable[[str, Any, Inventory | None], Workload | Blocked]
StatusFn = Callable[[Any, Workload, Observation, Any, int, datetime], BaseStatus]

LOCAL = "local"
"""The backend whose services only this machine reaches."""
APPLY_EVENTS = {
    ApplyResult.CREATED: EventReason.WORKLOAD_CREATED,
    ApplyResult.UPDATED: EventReason.WORKLOAD_UPDATED,
}


def decide_workload(plan: Planner, compute_status: StatusFn) -> Decide:
    """Plan, apply idempotently through the backend, then read status from what it sees."""

    def decide(
        spec: Any, previous: BaseStatus, owner: Owner, generation: int, now: datetime
    ) -> Decision:
        backend = current().backend
        try:
            planned = plan(owner.name, spec, backend.inventory())
        except InventoryError as error:
            planned = Blocked("InvalidNodeLabels", str(error))
        if not isinstance(planned, Blocked):
            planned = auth_secret_blocked(owner.namespace, planned.api_keys_secret) or planned
        if isinstance(planned, Blocked):
            return Decision(settle_status(previous, blocked_verdicts(planned), generation, now))
        if planned.kind is WorkloadKind.JOB and job_finished(previous, generation):
            return Decision(previous)
        applied = backend.apply(owner, planned)
        if applied is ApplyResult.CREATED:
            crash_point("after-apply")
        observation = backend.observe(owner, planned)
        status = compute_status(spec, planned, observation, previous, generation, now)
        return Decision(status, apply_events(applied, planned, backend.name))

    return decide


def apply_events(applied: ApplyResult, workload: Workload, backend: str) -> list[Event]:
    """A Normal event when a workload was created or updated, a Warning when that
    workload is a service open to anyone on a cluster (where others can reach it), and
    one when it sets pod overrides the local backend cannot apply (it renders no pods)."""
    if applied not in APPLY_EVENTS:
        return []
    message = f"{applied.value} {workload.name} on {backend}"
    events = [Event("Normal", APPLY_EVENTS[applied], message)]
    if workload.kind is WorkloadKind.SERVICE and not workload.api_keys_secret and backend != LOCAL:
        events.append(
            Event(
                "Warning",
                EventReason.AUTH_DISABLED,
                f"{workload.name} serves anyone who can reach it (spec.auth.mode: None); name a "
                "Secret of API keys in spec.auth.secretName to require keys",
            )
        )
    if workload.pod is not None and backend == LOCAL:
        events.append(
            Event(
                "Warning",
                EventReason.POD_OVERRIDES_IGNORED,
                f"{workload.name} runs on the local backend, which ignores spec.pod: pod "
                "overrides apply to the kuberay backend only",
            )
        )
    return events


def job_status(
    _spec: Any,
    workload: Workload,
    observation: Observation,
    previous: BaseStatus,
    generation: int,
    now: datetime,
) -> BaseStatus:
    """Status of a job kind: everything it needs is in the observation."""
    return compute_workload_status(workload, observation, previous, generation, now)
