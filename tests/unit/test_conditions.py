"""Conditions move their transition time only when their status flips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from modelfleet.api.common import ConditionStatus, ConditionType
from modelfleet.api.fedjob import FedJobStatus
from modelfleet.core.conditions import (
    Verdict,
    find_condition,
    readiness_verdicts,
    settle_conditions,
)
from modelfleet.core.status import (
    TERMINAL_CONDITIONS,
    blocked_verdicts,
    invalid_spec_verdicts,
    job_finished,
    observation_verdicts,
    settle_status,
)
from modelfleet.core.workload import Blocked, Observation, WorkloadState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_same_status_keeps_transition_time_but_takes_new_reason() -> None:
    first = settle_conditions([], readiness_verdicts(False, "A", "a", True, False), 1, T0)
    second = settle_conditions(first, readiness_verdicts(False, "B", "b", True, False), 2, T1)
    ready = find_condition(second, ConditionType.READY)
    assert ready is not None
    assert (ready.last_transition_time, ready.reason, ready.observed_generation) == (T0, "B", 2)


def test_flip_moves_transition_time() -> None:
    first = settle_conditions([], readiness_verdicts(False, "A", "", True, False), 1, T0)
    second = settle_conditions(first, readiness_verdicts(True, "A", "", True, False), 1, T1)
    ready = find_condition(second, ConditionType.READY)
    assert ready is not None and ready.last_transition_time == T1


@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(["A", "B"]), st.booleans(), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_repeating_a_verdict_is_a_fixed_point(steps: list[tuple[bool, str, bool, bool]]) -> None:
    conditions = []
    for minutes, (ready, reason, progressing, degraded) in enumerate(steps):
        verdicts = readiness_verdicts(ready, reason, "", progressing, degraded)
        now = T0 + timedelta(minutes=minutes)
        conditions = settle_conditions(conditions, verdicts, 1, now)
        again = settle_conditions(conditions, verdicts, 1, now + timedelta(hours=1))
        assert again == conditions
        assert [c.type for c in conditions] == [
            ConditionType.READY,
            ConditionType.PROGRESSING,
            ConditionType.DEGRADED,
        ]


def test_observation_states_map_to_conditions() -> None:
    def flags(state: WorkloadState) -> tuple[ConditionStatus, ...]:
        return tuple(v.status for v in observation_verdicts(Observation(state, "R")))

    t, f = ConditionStatus.TRUE, ConditionStatus.FALSE
    assert flags(WorkloadState.RUNNING) == (t, t, f)
    assert flags(WorkloadState.SUCCEEDED) == (t, f, f, t)
    assert flags(WorkloadState.FAILED) == (f, f, t, t)
    assert flags(WorkloadState.PENDING) == (f, t, f)
    assert flags(WorkloadState.UNAVAILABLE) == (f, f, f)
    ended = {
        state: [v.type for v in observation_verdicts(Observation(state, "R"))][3:]
        for state in WorkloadState
    }
    assert ended[WorkloadState.SUCCEEDED] == [ConditionType.SUCCEEDED]
    assert ended[WorkloadState.FAILED] == [ConditionType.FAILED]
    assert all(not types for state, types in ended.items() if state not in TERMINAL_CONDITIONS)


def test_blocked_and_invalid_are_not_ready_and_not_progressing() -> None:
    for verdicts in (blocked_verdicts(Blocked("Unschedulable", "m")), invalid_spec_verdicts("m")):
        assert [v.status for v in verdicts] == [ConditionStatus.FALSE] * 3
    assert invalid_spec_verdicts("m")[0] == Verdict(
        ConditionType.READY, ConditionStatus.FALSE, "InvalidSpec", "m"
    )


def test_settle_status_keeps_runtime_fields() -> None:
    previous = FedJobStatus(round=7, metrics={"evalLoss": 1.5})
    status = settle_status(previous, invalid_spec_verdicts("bad"), 3, T0)
    assert (status.round, status.metrics, status.observed_generation) == (7, {"evalLoss": 1.5}, 3)


def test_only_a_succeeded_or_failed_job_of_this_generation_is_finished() -> None:
    def status(state: WorkloadState, generation: int = 2) -> FedJobStatus:
        verdicts = observation_verdicts(Observation(state, "R"))
        return settle_status(FedJobStatus(), verdicts, generation, T0)

    finished = {state: job_finished(status(state), 2) for state in WorkloadState}
    assert {state for state, done in finished.items() if done} == {
        WorkloadState.SUCCEEDED,
        WorkloadState.FAILED,
    }
    assert not job_finished(status(WorkloadState.SUCCEEDED, generation=1), 2), "spec changed"
    assert not job_finished(FedJobStatus(), 2)
    blocked = settle_status(FedJobStatus(), blocked_verdicts(Blocked("Unschedulable", "m")), 2, T0)
    assert not job_finished(blocked, 2)
