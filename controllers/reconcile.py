"""The one reconcile every kind shares: parse, decide, apply, write status on change.

create, update, resume and a periodic timer all call the same function, so a
resource converges whatever the operator missed while it was down, and a
reconcile repeated after a crash at any line finds deterministic children and
settles on the same status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from controllers import metrics
from controllers.context import RESYNC_SECONDS, current
from controllers.stalls import HANDLERS
from modelfleet.api.common import BaseStatus, ConditionStatus, ConditionType
from modelfleet.api.errors import format_validation_error
from modelfleet.api.registry import KindInfo
from modelfleet.backends.base import Owner
from modelfleet.core.conditions import find_condition
from modelfleet.core.status import invalid_spec_verdicts, settle_status

RETRY_DELAY_SECONDS = 10.0


class EventReason(StrEnum):
    """Reasons of Events the operator emits besides condition transitions."""

    WORKLOAD_CREATED = "WorkloadCreated"
    WORKLOAD_UPDATED = "WorkloadUpdated"
    AUTH_DISABLED = "AuthDisabled"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """A kind's verdict for one reconcile: the status to hold and events to emit."""

    status: BaseStatus
    events: list[Event] = field(default_factory=list)


Decide = Callable[[Any, Any, Owner, int, datetime], Decision]


def owner_of(info: KindInfo, body: kopf.Body) -> Owner:
    meta = body["metadata"]
    return Owner(
        api_version=f"{info.group}/{info.version}",
        kind=info.kind,
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid=meta.get("uid", ""),
    )


def parse_status(info: KindInfo, body: kopf.Body) -> BaseStatus:
    """The stored status, or an empty one if it is missing or unreadable."""
    try:
        return info.status_model.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return info.status_model()


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new``; empty when nothing changed."""
    changes = {key: value for key, value in new.items() if old.get(key) != value}
    changes.update({key: None for key in old if key not in new})
    return changes


def _ready_signature(status: BaseStatus) -> tuple[str, str] | None:
    ready = find_condition(status.conditions, ConditionType.READY)
    return None if ready is None else (ready.status.value, ready.reason)


def transition_events(previous: BaseStatus, status: BaseStatus) -> list[Event]:
    """One Event when the Ready condition changes status or reason, none otherwise.

    Normal while the resource is ready or still progressing toward it (``Deploying``),
    Warning only for trouble: degraded, or not ready with nothing in progress (blocked,
    invalid, failed), so ``kubectl get events`` does not read a rollout as an alarm.
    """
    ready = find_condition(status.conditions, ConditionType.READY)
    if ready is None or _ready_signature(previous) == _ready_signature(status):
        return []
    return [Event(classify_event(status), ready.reason, ready.message[:1024])]


def classify_event(status: BaseStatus) -> str:
    """``Normal`` or ``Warning`` for a status's Ready transition (see transition_events)."""

    def holds(kind: ConditionType) -> bool:
        condition = find_condition(status.conditions, kind)
        return condition is not None and condition.status is ConditionStatus.TRUE

    if holds(ConditionType.DEGRADED):
        return "Warning"
    return "Normal" if holds(ConditionType.READY) or holds(ConditionType.PROGRESSING) else "Warning"


def _emit(info: KindInfo, body: kopf.Body, events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        metrics.EVENTS.labels(kind=info.kind, reason=event.reason).inc()


def _decide(info: KindInfo, body: kopf.Body, decide: Decide) -> tuple[BaseStatus, Decision, str]:
    previous = parse_status(info, body)
    generation = int(body["metadata"].get("generation", 0))
    now = current().clock()
    try:
        spec: BaseModel = info.spec_model.model_validate(dict(body.get("spec") or {}))
    except ValidationError as error:
        verdicts = invalid_spec_verdicts(format_validation_error(error))
        return previous, Decision(settle_status(previous, verdicts, generation, now)), "invalid"
    return previous, decide(spec, previous, owner_of(info, body), generation, now), "success"


def reconcile(info: KindInfo, body: kopf.Body, patch: kopf.Patch, decide: Decide) -> None:
    """Reconcile one resource; API failures become a delayed kopf retry, never a hot loop."""
    started = time.perf_counter()
    try:
        previous, decision, result = _decide(info, body, decide)
        new_status = decision.status.to_wire()
        changes = status_patch(dict(body.get("status") or {}), new_status)
        if changes:
            patch.setdefault("status", {}).update(changes)
        _emit(info, body, decision.events + transition_events(previous, decision.status))
        ready = find_condition(decision.status.conditions, ConditionType.READY)
        owner = owner_of(info, body)
        metrics.READINESS.record(
            info.kind, owner.namespace, owner.name, ready.status.value if ready else "Unknown"
        )
        metrics.record_status(info.kind, owner.namespace, owner.name, decision.status)
        metrics.RECONCILES.labels(kind=info.kind, result=result).inc()
    except ApiException as error:
        metrics.RECONCILES.labels(kind=info.kind, result="error").inc()
        metrics.RECONCILE_ERRORS.labels(kind=info.kind, error="ApiException").inc()
        raise kopf.TemporaryError(
            f"Kubernetes API error {error.status} {error.reason}", delay=RETRY_DELAY_SECONDS
        ) from error
    finally:
        metrics.RECONCILE_SECONDS.labels(kind=info.kind).observe(time.perf_counter() - started)


def _describe(owner: Owner) -> str:
    return f"{owner.kind} {owner.namespace}/{owner.name}"


def register(info: KindInfo, decide: Decide) -> None:
    """Wire create, update, resume, a resync timer and delete for one kind to ``decide``."""
    resource = (info.group, info.version, info.plural)

    def reconcile_handler(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        with HANDLERS.running(_describe(owner_of(info, body))):
            reconcile(info, body, patch, decide)

    def forget_handler(body: kopf.Body, **_: Any) -> None:
        """Release what lives outside Kubernetes, then drop the resource's metrics."""
        owner = owner_of(info, body)
        workload = (body.get("status") or {}).get("workload", "")
        with HANDLERS.running(f"deleting {_describe(owner)}"):
            if workload:
                current().backend.release(owner, workload)
        metrics.READINESS.forget(info.kind, owner.namespace, owner.name)

    for on_change in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on_change(*resource, id="reconcile")(reconcile_handler)
    kopf.timer(*resource, id="resync", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)(
        reconcile_handler
    )
    kopf.on.delete(*resource, id="release")(forget_handler)
