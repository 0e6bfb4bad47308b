"""The one reconcile every kind shares: parse, decide, apply, write status on change.

create, update and resume (kopf's handlers), the resync loop and the watches of
children (``controllers.resync``) all call the same function, so a resource converges
whatever the operator missed while it was down, and a reconcile repeated after a crash
at any line finds deterministic children and settles on the same status. One lock per
object keeps these paths from reconciling the same resource at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from controllers import metrics
from controllers.context import current, needs_cleanup
from controllers.events import post_event
from controllers.log_context import about
from controllers.stalls import HANDLERS
from modelfleet.api.common import BaseStatus, ConditionStatus, ConditionType
from modelfleet.api.errors import format_validation_error
from modelfleet.api.registry import KindInfo
from modelfleet.backends.base import Owner
from modelfleet.core.conditions import find_condition
from modelfleet.core.status import invalid_spec_verdicts, settle_status

RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0
log = logging.getLogger(__name__)


def retry_delay(retry: int) -> float:
    """Seconds before retry number ``retry`` (0 for the first) of a failed reconcile:
    doubling from ``RETRY_BASE_SECONDS`` up to ``RETRY_MAX_SECONDS``, so a failing API
    server or backend is not hammered and a fixed one is noticed within minutes."""
    return min(RETRY_BASE_SECONDS * 2.0 ** min(retry, 16), RETRY_MAX_SECONDS)


class EventReason(StrEnum):
    """Reasons of Events the operator emits besides condition transitions."""

    WORKLOAD_CREATED = "WorkloadCreated"
    WORKLOAD_UPDATED = "WorkloadUpdated"
    AUTH_DISABLED = "AuthDisabled"
    POD_OVERRIDES_IGNORED = "PodOverridesIgnored"


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


def owner_of(info: KindInfo, body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(
        api_version=f"{info.group}/{info.version}",
        kind=info.kind,
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid=meta.get("uid", ""),
    )


def parse_status(info: KindInfo, body: Mapping[str, Any]) -> BaseStatus:
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


def _emit(info: KindInfo, body: Mapping[str, Any], events: list[Event]) -> None:
    for event in events:
        post_event(current().api, body, event.type, event.reason, event.message)
        metrics.EVENTS.labels(kind=info.kind, reason=event.reason).inc()


def _decide(
    info: KindInfo, body: Mapping[str, Any], decide: Decide
) -> tuple[BaseStatus, Decision, str]:
    previous = parse_status(info, body)
    generation = int(body["metadata"].get("generation", 0))
    now = current().clock()
    try:
        spec: BaseModel = info.spec_model.model_validate(dict(body.get("spec") or {}))
    except ValidationError as error:
        verdicts = invalid_spec_verdicts(format_validation_error(error))
        return previous, Decision(settle_status(previous, verdicts, generation, now)), "invalid"
    return previous, decide(spec, previous, owner_of(info, body), generation, now), "success"


def reconcile(
    info: KindInfo,
    body: Mapping[str, Any],
    patch: dict[str, Any],
    decide: Decide,
    retry: int = 0,
) -> None:
    """Reconcile one resource, putting its status changes in ``patch``.

    Any failure (the API server, a backend, a bug) is counted by its type and becomes a
    kopf retry after ``retry_delay(retry)``: never a hot loop, never a crashed operator.
    """
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
    except Exception as error:
        metrics.RECONCILES.labels(kind=info.kind, result="error").inc()
        metrics.RECONCILE_ERRORS.labels(kind=info.kind, error=type(error).__name__).inc()
        if not isinstance(error, ApiException):
            log.exception("reconcile raised")
        delay = retry_delay(retry)
        message = f"{describe_error(error)}; retrying in {delay:g}s"
        raise kopf.TemporaryError(message, delay=delay) from error
    finally:
        metrics.RECONCILE_SECONDS.labels(kind=info.kind).observe(time.perf_counter() - started)


def describe_error(error: Exception) -> str:
    """One line about a failed reconcile, for the log and kopf's retry message."""
    if isinstance(error, ApiException):
        return f"Kubernetes API error {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


class ObjectLocks:
    """One lock per resource, so kopf's handlers, the resync loop and child watches never
    reconcile the same object at the same time (kopf serialises only its own handlers)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}

    @contextmanager
    def hold(self, key: tuple[str, str, str], timeout: float = -1) -> Iterator[bool]:
        """Hold ``key``'s lock for the block; yields False, holding nothing, if it could
        not be had within ``timeout`` seconds (0: do not wait, -1: wait as long as it takes)."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        acquired = lock.acquire(timeout=timeout) if timeout >= 0 else lock.acquire()
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()

    def forget(self, key: tuple[str, str, str]) -> None:
        """Drop a deleted resource's lock."""
        with self._guard:
            self._locks.pop(key, None)


LOCKS = ObjectLocks()


@dataclass(frozen=True)
class Registration:
    """A kind and how it decides, for the paths outside kopf that reconcile it."""

    info: KindInfo
    decide: Decide


REGISTERED: dict[str, Registration] = {}
"""Every registered kind by its name (e.g. ``ModelPool``)."""


def object_key(info: KindInfo, body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return info.kind, meta.get("namespace", "default"), meta["name"]


def reconcile_now(registration: Registration, body: Mapping[str, Any], wait: float) -> bool:
    """Reconcile ``body`` outside kopf and write its status; False when another path
    holds the object longer than ``wait`` seconds (it is being reconciled already)."""
    info = registration.info
    owner = owner_of(info, body)
    with LOCKS.hold(object_key(info, body), wait) as held:
        if not held:
            return False
        with working_on(_describe(owner)):
            patch: dict[str, Any] = {}
            try:
                reconcile(info, body, patch, registration.decide)
            except kopf.TemporaryError as error:
                log.warning("reconcile failed: %s", error)
                return True
            if patch:
                client.CustomObjectsApi(current().api).patch_namespaced_custom_object_status(
                    info.group,
                    info.version,
                    owner.namespace,
                    info.plural,
                    owner.name,
                    patch,
                    _content_type="application/merge-patch+json",
                )
    return True


@contextmanager
def working_on(described: str) -> Iterator[None]:
    """Work on one object: timed for /healthz's stall check, and named in every log line."""
    with HANDLERS.running(described), about(described):
        yield


def _describe(owner: Owner) -> str:
    return f"{owner.kind} {owner.namespace}/{owner.name}"


def register(info: KindInfo, decide: Decide) -> None:
    """Wire create, update, resume and delete for one kind to ``decide``, and list the kind
    for the resync loop.

    No kopf timer: kopf puts a finalizer on every object a timer serves, so with the
    operator uninstalled every delete would hang. The resync loop does that work instead,
    and the only finalizer is ``modelfleet.io/cleanup``, where the backend has something
    outside Kubernetes to free (``controllers.context.needs_cleanup``).
    """
    resource = (info.group, info.version, info.plural)
    REGISTERED[info.kind] = Registration(info, decide)

    def reconcile_handler(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
        described = _describe(owner_of(info, body))
        with LOCKS.hold(object_key(info, body)), working_on(described):
            reconcile(info, body, patch, decide, retry)

    def forget_handler(body: kopf.Body, **_: Any) -> None:
        """Release what lives outside Kubernetes, then drop the resource's metrics."""
        owner = owner_of(info, body)
        workload = (body.get("status") or {}).get("workload", "")
        described = f"deleting {_describe(owner)}"
        with working_on(described):
            if workload:
                current().backend.release(owner, workload)
        metrics.forget_resource(info.kind, owner.namespace, owner.name)
        LOCKS.forget(object_key(info, body))

    for on_change in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on_change(*resource, id="reconcile")(reconcile_handler)
    kopf.on.delete(*resource, id="release", optional=not needs_cleanup())(forget_handler)
