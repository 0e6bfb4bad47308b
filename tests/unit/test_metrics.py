"""The per-resource series published from statuses, read back from prometheus_client's REGISTRY."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest

from controllers import metrics
from modelfleet.api.fedjob import FedJobStatus
from modelfleet.api.modelpool import ModelPoolStatus, ReplicaCount
from modelfleet.api.routingpolicy import RoutingPolicyStatus

_names = itertools.count()


@pytest.fixture
def resource() -> Iterator[tuple[str, str]]:
    """A namespace and name no other test uses; the operator's books forget it afterwards."""
    namespace, name = f"ns-{next(_names)}", "res"
    yield namespace, name
    for kind in ("FedJob", "ModelPool", "RoutingPolicy"):
        metrics.READINESS.forget(kind, namespace, name)


def value(metric: str, namespace: str, name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"namespace": namespace, "name": name, **labels})


def pool(**fields: object) -> ModelPoolStatus:
    return ModelPoolStatus.model_validate(
        {
            "replicas_by_gpu_type": [
                ReplicaCount(gpu_type="A100", model="chat", replicas=2),
                ReplicaCount(gpu_type="L4", model="chat", replicas=1),
            ],
            "cost_per_hour": "9.50",
            "slo_attainment": 0.97,
            "migrations": 4,
            **fields,
        }
    )


def test_fedjob_round(resource: tuple[str, str]) -> None:
    metrics.record_status("FedJob", *resource, FedJobStatus(round=3))
    assert value("modelfleet_fedjob_rounds_completed", *resource) == 3
    metrics.record_status("FedJob", *resource, FedJobStatus(round=4))
    assert value("modelfleet_fedjob_rounds_completed", *resource) == 4


def test_modelpool_series(resource: tuple[str, str]) -> None:
    metrics.record_status("ModelPool", *resource, pool())
    replicas = "modelfleet_modelpool_ready_replicas"
    assert value(replicas, *resource, model="chat", gpu_type="A100") == 2
    assert value(replicas, *resource, model="chat", gpu_type="L4") == 1
    assert value("modelfleet_modelpool_cost_dollars_per_hour", *resource) == 9.5
    assert value("modelfleet_modelpool_slo_attainment_ratio", *resource) == 0.97
    assert value("modelfleet_modelpool_migrations_total", *resource) == 4


def test_series_follow_the_latest_status(resource: tuple[str, str]) -> None:
    metrics.record_status("ModelPool", *resource, pool())
    later = pool(
        replicas_by_gpu_type=[ReplicaCount(gpu_type="L4", model="chat", replicas=3)],
        slo_attainment=None,
        migrations=7,
    )
    metrics.record_status("ModelPool", *resource, later)
    replicas = "modelfleet_modelpool_ready_replicas"
    assert value(replicas, *resource, model="chat", gpu_type="A100") is None
    assert value(replicas, *resource, model="chat", gpu_type="L4") == 3
    # An unknown attainment is absent, not 0: 0 would fire the SLO burn-rate alerts.
    assert value("modelfleet_modelpool_slo_attainment_ratio", *resource) is None
    assert value("modelfleet_modelpool_migrations_total", *resource) == 7


def test_forget_drops_every_series_of_the_resource(resource: tuple[str, str]) -> None:
    namespace, name = resource
    metrics.READINESS.record("ModelPool", namespace, name, "True")
    metrics.record_status("ModelPool", namespace, name, pool())
    metrics.record_status("ModelPool", namespace, "other", pool(cost_per_hour="1"))
    ready_labels = {"kind": "ModelPool", "ready": "True"}
    ready = REGISTRY.get_sample_value("modelfleet_resources", ready_labels)

    metrics.READINESS.forget("ModelPool", namespace, name)
    assert REGISTRY.get_sample_value("modelfleet_resources", ready_labels) == ready - 1
    lines = generate_latest().decode().splitlines()
    assert not [line for line in lines if f'name="{name}",namespace="{namespace}"' in line]
    assert any(f'name="other",namespace="{namespace}"' in line for line in lines)
    assert value("modelfleet_modelpool_cost_dollars_per_hour", namespace, "other") == 1.0
    metrics.READINESS.forget("ModelPool", namespace, "other")
    assert value("modelfleet_modelpool_cost_dollars_per_hour", namespace, "other") is None


def test_a_router_that_has_not_routed_publishes_nothing(resource: tuple[str, str]) -> None:
    metrics.record_status("RoutingPolicy", *resource, RoutingPolicyStatus())
    namespace, _ = resource
    assert f'namespace="{namespace}"' not in generate_latest().decode()


def test_routing_decisions_health_quality_and_cost(resource: tuple[str, str]) -> None:
    status = RoutingPolicyStatus.model_validate(
        {
            "decisions": {"small": 7, "big": 2},
            "targets": [{"name": "small", "healthy": False}, {"name": "big"}],
            "observedQuality": 0.75,
        }
    )
    metrics.record_status("RoutingPolicy", *resource, status)
    decisions = "modelfleet_routingpolicy_decisions_total"
    assert value(decisions, *resource, target="small") == 7
    assert value(decisions, *resource, target="big") == 2
    healthy = "modelfleet_routingpolicy_target_healthy"
    assert value(healthy, *resource, target="small") == 0
    assert value(healthy, *resource, target="big") == 1
    assert value("modelfleet_routingpolicy_observed_quality_ratio", *resource) == 0.75
    assert value("modelfleet_routingpolicy_observed_cost_per_1k_tokens", *resource) is None


def test_every_family_is_exposed_with_its_type() -> None:
    families = {family.name: family.type for family in metrics.STATUSES.collect()}
    assert families == {
        "modelfleet_fedjob_rounds_completed": "gauge",
        "modelfleet_modelpool_ready_replicas": "gauge",
        "modelfleet_modelpool_cost_dollars_per_hour": "gauge",
        "modelfleet_modelpool_slo_attainment_ratio": "gauge",
        "modelfleet_modelpool_migrations": "counter",
        "modelfleet_routingpolicy_decisions": "counter",
        "modelfleet_routingpolicy_target_healthy": "gauge",
        "modelfleet_routingpolicy_observed_quality_ratio": "gauge",
        "modelfleet_routingpolicy_observed_cost_per_1k_tokens": "gauge",
    }
    assert "# TYPE modelfleet_modelpool_migrations_total counter" in generate_latest().decode()


@settings(max_examples=50, deadline=None)
@given(
    operations=st.lists(
        st.tuples(
            st.sampled_from(["FedJob", "ModelPool"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["True", "False", "Unknown", None]),
        ),
        max_size=30,
    )
)
def test_resource_counts_match_a_recount_after_any_sequence(
    operations: list[tuple[str, str, str | None]],
) -> None:
    """The running counts against the oracle: count the final statuses by hand (``None``
    forgets the resource). A book of its own publishes its counts to the shared gauge, so
    the gauge holds exactly this book's counts for the kinds it touched."""
    book = metrics.ReadinessBook(metrics.StatusSeries())
    namespace = f"ns-{next(_names)}"
    kinds = ("FedJob", "ModelPool")
    statuses = ("True", "False", "Unknown")
    final: dict[tuple[str, str], str] = {}
    for kind, name, ready in operations:
        if ready is None:
            book.forget(kind, namespace, name)
            final.pop((kind, name), None)
        else:
            book.record(kind, namespace, name, ready)
            final[(kind, name)] = ready
    for kind, ready in itertools.product(kinds, statuses):
        touched = any(k == kind for k, _, _ in operations)
        if not touched:
            continue
        expected = sum(1 for (k, _), r in final.items() if k == kind and r == ready)
        published = REGISTRY.get_sample_value(
            "modelfleet_resources", {"kind": kind, "ready": ready}
        )
        assert published == expected, (kind, ready)
    for kind, name in list(final):
        book.forget(kind, namespace, name)
