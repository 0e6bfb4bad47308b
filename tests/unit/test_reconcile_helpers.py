"""The pure parts of the shared reconcile: status patches and transition events."""

from __future__ import annotations

from datetime import UTC, datetime

from controllers.reconcile import status_patch, transition_events
from modelfleet.api.fedjob import FedJobStatus
from modelfleet.core.conditions import readiness_verdicts
from modelfleet.core.status import settle_status

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _status(
    ready: bool, reason: str, progressing: bool = True, degraded: bool = False
) -> FedJobStatus:
    return settle_status(
        FedJobStatus(), readiness_verdicts(ready, reason, "m", progressing, degraded), 1, NOW
    )


def test_status_patch_is_empty_when_nothing_changed() -> None:
    wire = _status(False, "A").to_wire()
    assert status_patch(wire, dict(wire)) == {}


def test_status_patch_sets_changes_and_removes_stale_keys() -> None:
    assert status_patch({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"c": 3, "b": None}


def test_events_only_on_ready_transitions() -> None:
    first = _status(False, "Creating")
    assert [e.reason for e in transition_events(FedJobStatus(), first)] == ["Creating"]
    assert transition_events(first, _status(False, "Creating")) == []
    running = transition_events(first, _status(True, "Running"))
    assert [(e.type, e.reason) for e in running] == [("Normal", "Running")]
    failed = transition_events(_status(True, "Running"), _status(False, "Failed", False))
    assert [(e.type, e.reason) for e in failed] == [("Warning", "Failed")]


def test_progress_is_normal_and_only_trouble_warns() -> None:
    """Every (ready, progressing, degraded) combination against the rule written out."""
    expected = {
        (True, False, False): "Normal",  # ready
        (False, True, False): "Normal",  # deploying
        (True, True, False): "Normal",  # ready, rolling out a change
        (False, False, False): "Warning",  # blocked, invalid or failed
        (True, False, True): "Warning",  # serving, degraded
        (False, True, True): "Warning",  # retrying after a failure
        (True, True, True): "Warning",
        (False, False, True): "Warning",
    }
    for (ready, progressing, degraded), kind in expected.items():
        status = _status(ready, "R", progressing, degraded)
        [event] = transition_events(FedJobStatus(), status)
        assert event.type == kind, (ready, progressing, degraded)
