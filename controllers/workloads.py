"""The decide step of kinds that run one workload (FedJob, FusionJob, ModelPool)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from controllers.context import current
from controllers.reconcile import Decide, Decision, Event, EventReason
from modelfleet.api.common import BaseStatus
from modelfleet.backends.base import Owner
from modelfleet.core.status import blocked_verdicts, compute_workload_status, settle_status
from modelfleet.core.workload import ApplyResult, Blocked, Observation, Workload
from modelfleet.scheduling.inventory import Inventory, InventoryError

Planner = Callable[[str, Any, Inventory | None], Workload | Blocked]
StatusFn = Callable[[Any, Workload, Observation, Any, int, datetime], BaseStatus]

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
        if isinstance(planned, Blocked):
            return Decision(settle_status(previous, blocked_verdicts(planned), generation, now))
        applied = backend.apply(owner, planned)
        observation = backend.observe(owner, planned)
        status = compute_status(spec, planned, observation, previous, generation, now)
        if applied not in APPLY_EVENTS:
            return Decision(status)
        message = f"{applied.value} {planned.name} on {backend.name}"
        return Decision(status, [Event("Normal", APPLY_EVENTS[applied], message)])

    return decide


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
