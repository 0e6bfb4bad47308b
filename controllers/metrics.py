"""Prometheus metrics of the operator, all under the ``modelfleet_`` prefix.

Two sorts of series. The operator's own (reconciles, errors, latency, admission
verdicts, events, resources by Ready status) take label values from closed sets:
kinds, results, exception class names, condition statuses. The domain series
mirror each resource's status (a FedJob's round, a ModelPool's replicas, cost, SLO
attainment and migrations) and are labelled with the resource's namespace and name,
like kube-state-metrics: their cardinality is bounded by the number of resources
(times the models and GPU types of a pool), and a deleted resource's series go away.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from modelfleet.api.common import BaseStatus, ConditionStatus, ConditionType
from modelfleet.api.fedjob import FedJobStatus
from modelfleet.api.fusionjob import FusionJobStatus
from modelfleet.api.modelpool import ModelPoolStatus
from modelfleet.api.routingpolicy import RoutingPolicyStatus
from modelfleet.core.conditions import find_condition
from modelfleet.core.status import job_finished

RECONCILES = Counter(
    "modelfleet_reconcile_total", "Reconciles by kind and result.", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "modelfleet_reconcile_duration_seconds",
    "Time one reconcile took.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "modelfleet_reconcile_errors_total", "Reconciles that raised, by error type.", ["kind", "error"]
)
RESOURCES = Gauge(
    "modelfleet_resources", "Resources by kind and Ready condition status.", ["kind", "ready"]
)
ADMISSION_REVIEWS = Counter(
    "modelfleet_admission_reviews_total",
    "Admission reviews by kind and verdict.",
    ["kind", "allowed"],
)
EVENTS = Counter(
    "modelfleet_events_total", "Events emitted, by kind and reason.", ["kind", "reason"]
)
DELETION_TIMESTAMP = Gauge(
    "modelfleet_resource_deletion_timestamp_seconds",
    "metadata.deletionTimestamp (Unix seconds) of a resource still present after deletion "
    "began; a series that stays for long is a delete that does not complete.",
    ["kind", "namespace", "name"],
)

ResourceKey = tuple[str, str, str]
"""(kind, namespace, name) of one resource."""


@dataclass(frozen=True)
class Family:
    """One domain metric: its name, help text, labels besides namespace and name, type."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    counter: bool = False

    def empty(self) -> GaugeMetricFamily | CounterMetricFamily:
        labels = ["namespace", "name", *self.labels]
        if self.counter:
            return CounterMetricFamily(self.name, self.documentation, labels=labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=labels)


FEDJOB_ROUNDS = Family("modelfleet_fedjob_rounds_completed", "Rounds a FedJob has completed.")
MODELPOOL_READY_REPLICAS = Family(
    "modelfleet_modelpool_ready_replicas",
    "Ready replicas of a ModelPool serving one model on one GPU type.",
    ("model", "gpu_type"),
)
MODELPOOL_COST = Family(
    "modelfleet_modelpool_cost_dollars_per_hour", "What a ModelPool's replicas cost per hour now."
)
MODELPOOL_SLO_ATTAINMENT = Family(
    "modelfleet_modelpool_slo_attainment_ratio",
    "Share of a ModelPool's recent requests that met both latency SLOs.",
)
# The value is status.migrations itself, as kube-state-metrics does for restart counts: every
# operator replica reports the same value, a restarted operator neither re-counts past
# migrations nor starts from zero, and a restarted pool is an ordinary counter reset.
MODELPOOL_MIGRATIONS = Family(
    "modelfleet_modelpool_migrations_total",
    "Live request migrations the running ModelPool has performed.",
    counter=True,
)
# Like migrations, decisions are the running router's own count, read from status.
ROUTING_DECISIONS = Family(
    "modelfleet_routingpolicy_decisions_total",
    "Requests a RoutingPolicy's router has sent to one target.",
    ("target",),
    counter=True,
)
ROUTING_TARGET_HEALTHY = Family(
    "modelfleet_routingpolicy_target_healthy",
    "1 while the router can reach a target, 0 while it skips it as failing.",
    ("target",),
)
ROUTING_QUALITY = Family(
    "modelfleet_routingpolicy_observed_quality_ratio",
    "Share of a RoutingPolicy's rated answers that were correct.",
)
ROUTING_COST = Family(
    "modelfleet_routingpolicy_observed_cost_per_1k_tokens",
    "What a RoutingPolicy's routed tokens cost, per 1000 tokens.",
)
DOMAIN_FAMILIES = (
    FEDJOB_ROUNDS,
    MODELPOOL_READY_REPLICAS,
    MODELPOOL_COST,
    MODELPOOL_SLO_ATTAINMENT,
    MODELPOOL_MIGRATIONS,
    ROUTING_DECISIONS,
    ROUTING_TARGET_HEALTHY,
    ROUTING_QUALITY,
    ROUTING_COST,
)

Sample = tuple[Family, tuple[str, ...], float]
"""A family, the values of its extra labels, and the value."""


def status_samples(status: BaseStatus) -> list[Sample]:
    """The domain samples one status yields; kinds without domain metrics yield none."""
    if isinstance(status, FedJobStatus):
        return [(FEDJOB_ROUNDS, (), status.round)]
    if isinstance(status, ModelPoolStatus):
        samples: list[Sample] = [
            (MODELPOOL_READY_REPLICAS, (count.model, count.gpu_type), count.replicas)
            for count in status.replicas_by_gpu_type
        ]
        samples.append((MODELPOOL_COST, (), float(status.cost_per_hour)))
        if status.slo_attainment is not None:
            samples.append((MODELPOOL_SLO_ATTAINMENT, (), status.slo_attainment))
        samples.append((MODELPOOL_MIGRATIONS, (), status.migrations))
        return samples
    if isinstance(status, RoutingPolicyStatus):
        return routing_samples(status)
    return []


def routing_samples(status: RoutingPolicyStatus) -> list[Sample]:
    """Decisions and health per target, observed quality and cost, where measured."""
    samples: list[Sample] = [
        (ROUTING_DECISIONS, (target,), count) for target, count in sorted(status.decisions.items())
    ]
    samples += [(ROUTING_TARGET_HEALTHY, (t.name,), float(t.healthy)) for t in status.targets]
    if status.observed_quality is not None:
        samples.append((ROUTING_QUALITY, (), status.observed_quality))
    if status.observed_cost_per_1k_tokens is not None:
        samples.append((ROUTING_COST, (), float(status.observed_cost_per_1k_tokens)))
    return samples


class StatusSeries:
    """The domain samples of every resource's latest status, rendered at scrape time.

    Rendering from the latest status, rather than setting labelled gauges, means a
    GPU type or model that leaves a pool, and a resource that is deleted, leave no
    stale series behind. Handlers run in kopf's thread pool while /metrics is
    served from the event loop, hence the lock.
    """

    def __init__(self) -> None:
        self._samples: dict[ResourceKey, list[Sample]] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, namespace: str, name: str, status: BaseStatus) -> None:
        samples = status_samples(status)
        with self._lock:
            if samples:
                self._samples[(kind, namespace, name)] = samples
            else:
                self._samples.pop((kind, namespace, name), None)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._samples.pop((kind, namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        families = {family: family.empty() for family in DOMAIN_FAMILIES}
        with self._lock:
            resources = sorted(self._samples.items())
        for (_, namespace, name), samples in resources:
            for family, labels, value in samples:
                families[family].add_metric([namespace, name, *labels], value)
        yield from families.values()


class ReadinessBook:
    """Ready status of every resource seen, to publish counts by kind and status.

    Counts are kept alongside the statuses and adjusted by the one resource that changed,
    so a reconcile costs the same with 50 resources or 5,000 (a recount per reconcile made
    every resync round quadratic). Forgetting a resource also drops its domain series, so
    the delete handler needs one call.
    """

    def __init__(self, statuses: StatusSeries) -> None:
        self._ready: dict[ResourceKey, str] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._statuses = statuses
        self._lock = threading.Lock()

    def record(self, kind: str, namespace: str, name: str, ready: str) -> None:
        with self._lock:
            previous = self._ready.get((kind, namespace, name))
            self._ready[(kind, namespace, name)] = ready
            self._move(kind, previous, ready)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            previous = self._ready.pop((kind, namespace, name), None)
            self._move(kind, previous, None)
        self._statuses.forget(kind, namespace, name)

    def known(self, kind: str) -> set[tuple[str, str]]:
        """(namespace, name) of every resource of ``kind`` recorded and not forgotten."""
        with self._lock:
            return {(ns, name) for k, ns, name in self._ready if k == kind}

    def _move(self, kind: str, previous: str | None, current: str | None) -> None:
        """Move one resource's count from ``previous`` to ``current`` (None: absent)."""
        for ready in ("True", "False", "Unknown"):
            self._counts.setdefault((kind, ready), 0)
        if previous is not None:
            self._counts[(kind, previous)] -= 1
        if current is not None:
            self._counts[(kind, current)] = self._counts.get((kind, current), 0) + 1
        for (k, ready), count in self._counts.items():
            if k == kind:
                RESOURCES.labels(kind=kind, ready=ready).set(count)


STATUSES = StatusSeries()
REGISTRY.register(STATUSES)
READINESS = ReadinessBook(STATUSES)


def forget_resource(kind: str, namespace: str, name: str) -> None:
    """Drop every series of a resource that is gone."""
    READINESS.forget(kind, namespace, name)
    _remove_deletion(kind, namespace, name)


def observe_listing(
    kind: str, present: set[tuple[str, str]], deleting: dict[tuple[str, str], float]
) -> None:
    """Bring one kind's series in line with a full listing: resources deleted while no
    delete handler ran (there is no finalizer to wait for one) lose their series, and
    those being deleted show since when."""
    for namespace, name in READINESS.known(kind) - present:
        forget_resource(kind, namespace, name)
    for namespace, name in _DELETING.get(kind, set()) - set(deleting):
        _remove_deletion(kind, namespace, name)
    for (namespace, name), since in deleting.items():
        DELETION_TIMESTAMP.labels(kind=kind, namespace=namespace, name=name).set(since)
    _DELETING[kind] = set(deleting)


_DELETING: dict[str, set[tuple[str, str]]] = {}
"""The resources of each kind with a deletion series, as of the last listing."""


def _remove_deletion(kind: str, namespace: str, name: str) -> None:
    with contextlib.suppress(KeyError):
        DELETION_TIMESTAMP.remove(kind, namespace, name)


def record_status(kind: str, namespace: str, name: str, status: BaseStatus) -> None:
    """Publish the domain series of one resource's status (replacing its previous ones)
    and whether it is Ready and whether it has ended."""
    STATUSES.record(kind, namespace, name, status)
    LIFECYCLE.record(kind, namespace, name, status)


def has_ended(status: BaseStatus) -> bool:
    """Whether a FedJob or FusionJob ended, succeeded or failed, for the spec it last saw:
    nothing will change until the spec does. Pools and policies serve until deleted."""
    if not isinstance(status, FedJobStatus | FusionJobStatus):
        return False
    return job_finished(status, status.observed_generation)


class Lifecycle:
    """Per resource: Ready or not, ended or not, so an alert can name the resource that is
    not Ready and leave alone a job whose failure is final (it stays not Ready for good).

    A resource's series last as long as READINESS knows it: every path that forgets a
    resource (its delete handler, a listing without it) drops them with it.
    """

    def __init__(self, readiness: ReadinessBook) -> None:
        self._states: dict[ResourceKey, tuple[bool, bool]] = {}
        self._readiness = readiness
        self._lock = threading.Lock()

    def record(self, kind: str, namespace: str, name: str, status: BaseStatus) -> None:
        ready = find_condition(status.conditions, ConditionType.READY)
        is_ready = ready is not None and ready.status is ConditionStatus.TRUE
        with self._lock:
            self._states[(kind, namespace, name)] = (is_ready, has_ended(status))

    def collect(self) -> Iterator[Metric]:
        labels = ["kind", "namespace", "name"]
        ready = GaugeMetricFamily(
            "modelfleet_resource_ready", "1 while a resource is Ready, else 0.", labels=labels
        )
        ended = GaugeMetricFamily(
            "modelfleet_resource_terminal",
            "1 once a FedJob or FusionJob has ended (succeeded or failed) for its current spec; "
            "0 before, and always for kinds that run until deleted.",
            labels=labels,
        )
        for key, (is_ready, is_over) in self._live_states():
            ready.add_metric(list(key), float(is_ready))
            ended.add_metric(list(key), float(is_over))
        yield ready
        yield ended

    def _live_states(self) -> list[tuple[ResourceKey, tuple[bool, bool]]]:
        """The states of the resources READINESS still knows; the others are dropped."""
        with self._lock:
            kinds = {kind for kind, _, _ in self._states}
            known = {
                (kind, namespace, name)
                for kind in kinds
                for namespace, name in self._readiness.known(kind)
            }
            for key in set(self._states) - known:
                del self._states[key]
            return sorted(self._states.items())


LIFECYCLE = Lifecycle(READINESS)
REGISTRY.register(LIFECYCLE)

ADMISSION_ERRORS = Counter(
    "modelfleet_admission_errors_total",
    "Admission reviews whose validation raised instead of giving a verdict (the API server "
    "then admits or refuses the object by the webhook's failurePolicy), by error type.",
    ["kind", "error"],
)
