"""The series the alerts read per resource (Ready, ended) and the admission error count."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from prometheus_client import REGISTRY

from controllers import metrics
from controllers.admission import _counting_errors
from modelfleet.api.common import BaseStatus
from modelfleet.api.fedjob import FedJobStatus
from modelfleet.api.modelpool import ModelPoolStatus
from modelfleet.core.conditions import readiness_verdicts
from modelfleet.core.status import settle_status

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def settled(status: BaseStatus, ready: bool, progressing: bool, degraded: bool) -> BaseStatus:
    verdicts = readiness_verdicts(ready, "Reason", "", progressing, degraded)
    return settle_status(status, verdicts, generation=3, now=NOW)


def publish(kind: str, name: str, status: BaseStatus) -> dict[str, float | None]:
    """Record a resource as the reconcile does; its lifecycle samples after."""
    ready = next(c.status.value for c in status.conditions if c.type == "Ready")
    metrics.READINESS.record(kind, "team-a", name, ready)
    metrics.record_status(kind, "team-a", name, status)
    return lifecycle(kind, name)


def lifecycle(kind: str, name: str) -> dict[str, float | None]:
    labels = {"kind": kind, "namespace": "team-a", "name": name}
    return {
        series: REGISTRY.get_sample_value(f"modelfleet_resource_{series}", labels)
        for series in ("ready", "terminal")
    }


def test_a_failed_job_is_ended_and_not_ready() -> None:
    failed = settled(FedJobStatus(), ready=False, progressing=False, degraded=True)
    assert publish("FedJob", "failed", failed) == {"ready": 0.0, "terminal": 1.0}


def test_a_succeeded_job_is_ended_and_ready() -> None:
    done = settled(FedJobStatus(), ready=True, progressing=False, degraded=False)
    assert publish("FedJob", "done", done) == {"ready": 1.0, "terminal": 1.0}


def test_a_running_job_and_a_failing_pool_are_not_ended() -> None:
    running = settled(FedJobStatus(), ready=False, progressing=True, degraded=False)
    assert publish("FedJob", "running", running) == {"ready": 0.0, "terminal": 0.0}
    # A pool runs until deleted: degraded and idle is a failure to fix, not an end.
    broken = settled(ModelPoolStatus(), ready=False, progressing=False, degraded=True)
    assert publish("ModelPool", "broken", broken) == {"ready": 0.0, "terminal": 0.0}


def test_a_forgotten_resource_loses_its_series() -> None:
    failed = settled(FedJobStatus(), ready=False, progressing=False, degraded=True)
    publish("FedJob", "deleted", failed)
    metrics.READINESS.forget("FedJob", "team-a", "deleted")
    assert lifecycle("FedJob", "deleted") == {"ready": None, "terminal": None}


def errors(error: str) -> float:
    labels = {"kind": "FedJob", "error": error}
    return REGISTRY.get_sample_value("modelfleet_admission_errors_total", labels) or 0.0


def test_a_validation_that_raises_is_counted_and_a_verdict_is_not() -> None:
    def broken(**_: Any) -> None:
        raise LookupError("no such pool")

    def rejecting(**_: Any) -> None:
        raise kopf.AdmissionError("bad spec", code=422)

    before = errors("LookupError")
    with pytest.raises(LookupError):
        _counting_errors("FedJob", broken)(spec={})
    assert errors("LookupError") == before + 1
    with pytest.raises(kopf.AdmissionError):
        _counting_errors("FedJob", rejecting)(spec={})
    assert errors("AdmissionError") == 0.0
