"""Prometheus metrics of the operator, all under the ``modelfleet_`` prefix.

Label values come from closed sets (kinds, results, exception class names,
condition statuses), so cardinality stays bounded however many resources exist.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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


class ReadinessBook:
    """Ready status of every resource seen, to publish counts by kind and status."""

    def __init__(self) -> None:
        self._ready: dict[tuple[str, str, str], str] = {}

    def record(self, kind: str, namespace: str, name: str, ready: str) -> None:
        self._ready[(kind, namespace, name)] = ready
        self._publish(kind)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._ready.pop((kind, namespace, name), None)
        self._publish(kind)

    def _publish(self, kind: str) -> None:
        counts = {"True": 0, "False": 0, "Unknown": 0}
        for (k, _, _), ready in self._ready.items():
            if k == kind:
                counts[ready] = counts.get(ready, 0) + 1
        for ready, count in counts.items():
            RESOURCES.labels(kind=kind, ready=ready).set(count)


READINESS = ReadinessBook()
