"""A federated run's progress as the Observation the FedJob's status is computed from; both
backends' FedJobs report through these."""

from __future__ import annotations

from typing import Any

from modelfleet.core.workload import Observation, WorkloadState
from modelfleet.federated.checkpoint import RunResult


def observe_result(progress: dict[str, Any], result: RunResult) -> Observation:
    """A run that has ended, as its result says."""
    state = WorkloadState.SUCCEEDED if result.phase == "Succeeded" else WorkloadState.FAILED
    return Observation(state, result.reason, result.message, job_report=progress)


def observe_rounds(progress: dict[str, Any], rounds: int) -> Observation:
    """A run whose processes are up: the round in flight."""
    done = int(progress["round"])
    return Observation(
        WorkloadState.RUNNING,
        "RoundInProgress",
        f"round {done + 1} of {rounds} in progress; {done} completed",
        job_report=progress,
    )
