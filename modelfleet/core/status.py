"""How a workload observation reads as Ready/Progressing/Degraded.

Shared by every kind that runs a workload so that, say, a FedJob and a
FusionJob whose RayJobs fail look the same to an SRE's alert.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from modelfleet.api.common import BaseStatus, ConditionStatus, ConditionType
from modelfleet.core.conditions import (
    Verdict,
    find_condition,
    readiness_verdicts,
    settle_conditions,
)
from modelfleet.core.workload import Blocked, Observation, Workload, WorkloadState

INVALID_SPEC = "InvalidSpec"

StatusT = TypeVar("StatusT", bound=BaseStatus)

TERMINAL_CONDITIONS = {
    WorkloadState.SUCCEEDED: ConditionType.SUCCEEDED,
    WorkloadState.FAILED: ConditionType.FAILED,
}
"""The condition a job's end adds, as a Kubernetes Job adds Complete or Failed."""


def observation_verdicts(observation: Observation) -> list[Verdict]:
    """Conditions for a workload in the state a backend observed."""
    state = observation.state
    verdicts = readiness_verdicts(
        ready=state in (WorkloadState.RUNNING, WorkloadState.SUCCEEDED),
        reason=observation.reason,
        message=observation.message,
        progressing=state in (WorkloadState.MISSING, WorkloadState.PENDING, WorkloadState.RUNNING),
        degraded=state is WorkloadState.FAILED,
    )
    terminal = TERMINAL_CONDITIONS.get(state)
    if terminal is not None:
        verdicts.append(
            Verdict(terminal, ConditionStatus.TRUE, observation.reason, observation.message)
        )
    return verdicts


def blocked_verdicts(blocked: Blocked) -> list[Verdict]:
    """Conditions for a valid spec that cannot be satisfied as it stands."""
    return readiness_verdicts(False, blocked.reason, blocked.message, False, False)


def invalid_spec_verdicts(message: str) -> list[Verdict]:
    """Conditions for a spec the models reject; nothing is retried until it changes."""
    return readiness_verdicts(False, INVALID_SPEC, message, False, False)


def settle_status(
    previous: StatusT, verdicts: list[Verdict], generation: int, now: datetime, **fields: Any
) -> StatusT:
    """The previous status with new conditions, the generation and ``fields`` applied.

    Fields the runtime reports (rounds, metrics, artifacts) are carried over
    untouched, so a reconcile never erases progress it did not observe.
    """
    conditions = settle_conditions(previous.conditions, verdicts, generation, now)
    return previous.model_copy(
        update={"conditions": conditions, "observed_generation": generation, **fields}
    )


def compute_workload_status(
    workload: Workload,
    observation: Observation,
    previous: StatusT,
    generation: int,
    now: datetime,
    **fields: Any,
) -> StatusT:
    """Status of a kind that runs one workload: conditions from what the backend saw."""
    verdicts = observation_verdicts(observation)
    return settle_status(previous, verdicts, generation, now, workload=workload.name, **fields)


def job_finished(status: BaseStatus, generation: int) -> bool:
    """Whether a job's status says it ended, succeeded (Ready) or failed (Degraded), with
    nothing in progress, for this generation of its spec: such a job stays ended, so a
    child deleted afterwards (KubeRay's TTL, a person) is not started again."""

    def holds(kind: ConditionType) -> bool:
        condition = find_condition(status.conditions, kind)
        return (
            condition is not None
            and condition.status is ConditionStatus.TRUE
            and condition.observed_generation == generation
        )

    progressing = find_condition(status.conditions, ConditionType.PROGRESSING)
    idle = progressing is not None and progressing.status is ConditionStatus.FALSE
    return idle and (holds(ConditionType.READY) or holds(ConditionType.DEGRADED))
