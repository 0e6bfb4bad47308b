"""Pure planners: replica placement vs brute force, workloads, routing status, names."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from modelfleet.api.common import ConditionStatus
from modelfleet.api.fedjob import FedJobSpec
from modelfleet.api.fusionjob import FusionJobSpec
from modelfleet.api.modelpool import GpuOffer, ModelPoolSpec, ModelPoolStatus
from modelfleet.api.routingpolicy import RoutingPolicySpec, RoutingPolicyStatus
from modelfleet.core.names import MAX_NAME, child_name
from modelfleet.core.workload import (
    WORKLOAD_LABEL,
    Blocked,
    Observation,
    WorkerGroup,
    WorkloadKind,
    WorkloadState,
    distribute_ready,
)
from modelfleet.federated.plan import plan_fedjob
from modelfleet.fusion.plan import plan_fusionjob
from modelfleet.routing.plan import PoolView, compute_routingpolicy_status, plan_router
from modelfleet.serving.plan import (
    assign_replicas,
    compute_modelpool_status,
    hourly_cost,
    plan_modelpool,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
offers = st.lists(
    st.builds(
        lambda gpu_type, price, available: GpuOffer(
            gpu_type=gpu_type, price_per_hour=price, available=available
        ),
        st.sampled_from(["cpu", "L4", "A10G", "A100", "H100"]),
        st.decimals(0, 10, places=2),
        st.integers(0, 6),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda o: o.gpu_type,
)


def _brute_force(replicas: int, pool: list[GpuOffer], gpus: int) -> Decimal | None:
    """Least cost over every way to split the replicas, or None if none fits."""
    best = None
    capacity = [o.available if o.gpu_type == "cpu" else o.available // gpus for o in pool]
    types = [o.gpu_type for o in pool]
    for split in itertools.product(*(range(c + 1) for c in capacity)):
        if sum(split) == replicas:
            cost = hourly_cost(dict(zip(types, split, strict=True)), pool, gpus)
            best = cost if best is None else min(best, cost)
    return best


@given(st.integers(0, 8), offers, st.integers(1, 3))
def test_cheapest_first_is_optimal(replicas: int, pool: list[GpuOffer], gpus: int) -> None:
    placed = assign_replicas(replicas, pool, gpus)
    best = _brute_force(replicas, pool, gpus)
    if best is None:
        assert isinstance(placed, Blocked) and placed.reason == "Unschedulable"
        assert f"spec.replicas={replicas}" in placed.message
        return
    assert not isinstance(placed, Blocked)
    assert sum(placed.values()) == replicas
    assert hourly_cost(placed, pool, gpus) == best


def test_modelpool_plan_uses_the_cheapest_types() -> None:
    spec = ModelPoolSpec.model_validate(
        {
            "models": [{"name": "m", "uri": "builtin://m", "tensorParallel": 2}],
            "auth": {"mode": "None"},
            "replicas": 3,
            "gpuTypes": [
                {"gpuType": "H100", "pricePerHour": "4", "available": 8},
                {"gpuType": "L4", "pricePerHour": "1", "available": 4},
            ],
        }
    )
    workload = plan_modelpool("chat", spec)
    assert not isinstance(workload, Blocked)
    assert workload.kind is WorkloadKind.SERVICE and workload.name == "chat-serve"
    assert [(g.gpu_type, g.replicas, g.gpus_per_worker) for g in workload.worker_groups] == [
        ("H100", 1, 2),
        ("L4", 2, 2),
    ], "one group per offered type, in spec order, so scaling changes only counts"
    seen = Observation(WorkloadState.RUNNING, "Serving", ready_replicas={"L4": 2, "H100": 1})
    status = compute_modelpool_status(spec, workload, seen, ModelPoolStatus(), 1, NOW)
    assert (status.replicas, status.cost_per_hour) == (3, 2 * 2 * 1 + 1 * 2 * 4)
    assert status.selector == f"{WORKLOAD_LABEL}=chat-serve", "the scale subresource's pods"
    assert status.to_wire()["costPerHour"] == "12"
    assert status.conditions[0].status is ConditionStatus.TRUE
    by_type = {(c.gpu_type, c.model): c.replicas for c in status.replicas_by_gpu_type}
    assert by_type == {("H100", "m"): 1, ("L4", "m"): 2}


def test_modelpool_status_counts_each_models_ready_replicas_and_migrations() -> None:
    spec = ModelPoolSpec.model_validate(
        {
            "models": [{"name": "a", "uri": "builtin://x"}, {"name": "b", "uri": "builtin://y"}],
            "auth": {"mode": "None"},
            "replicas": 3,
            "gpuTypes": [
                {"gpuType": "cpu", "pricePerHour": "0.10", "available": 2},
                {"gpuType": "L4", "pricePerHour": "1", "available": 4},
            ],
        }
    )
    workload = plan_modelpool("chat", spec)
    assert not isinstance(workload, Blocked)
    seen = Observation(
        WorkloadState.PENDING,
        "ReplicasStarting",
        ready_replicas=distribute_ready(workload.worker_groups, 3),
        model_replicas={"a": 3, "b": 1},
        migrations=7,
        slo_attainment=0.97,
    )
    status = compute_modelpool_status(spec, workload, seen, ModelPoolStatus(), 1, NOW)
    by_type = {(c.gpu_type, c.model): c.replicas for c in status.replicas_by_gpu_type}
    assert by_type == {("cpu", "a"): 2, ("cpu", "b"): 1, ("L4", "a"): 1, ("L4", "b"): 0}
    assert (status.replicas, status.migrations, status.slo_attainment) == (3, 7, 0.97)
    assert status.to_wire()["costPerHour"] == "2.20", "exact: 2 * 0.10 + 1 * 1 * 2"


@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=4),
    st.integers(min_value=0, max_value=30),
)
def test_ready_replicas_fill_groups_in_order_and_never_exceed_them(
    sizes: list[int], ready: int
) -> None:
    groups = tuple(WorkerGroup(f"g{i}", f"t{i}", n) for i, n in enumerate(sizes))
    placed = distribute_ready(groups, ready)
    assert sum(placed.values()) == min(ready, sum(sizes))
    assert all(placed[g.gpu_type] <= g.replicas for g in groups)
    full = [placed[g.gpu_type] == g.replicas for g in groups]
    assert full == sorted(full, reverse=True)  # a group fills only after those before it


def test_a_fedjob_is_its_spec_with_no_ray_workers() -> None:
    """Each client's placement is its own SuperNode's (tests/unit/federated/
    test_flower_render.py); the plan only carries the spec to the backend."""
    spec = FedJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://m"},
            "clients": [
                {
                    "name": "c0",
                    "datasetUri": "s3://d",
                    "site": "eu",
                    "resources": {"gpuType": "L4", "count": 1},
                },
                {"name": "c1", "datasetUri": "s3://d", "resources": {"gpuType": "cpu"}},
            ],
            "output": {"uri": "s3://o"},
        }
    )
    workload = plan_fedjob("job", spec, None)
    assert not isinstance(workload, Blocked)
    assert workload.kind is WorkloadKind.JOB and workload.name == "job-fed"
    assert workload.worker_groups == ()
    assert FedJobSpec.model_validate(workload.config) == spec


def test_fusionjob_one_worker_per_gpu() -> None:
    spec = FusionJobSpec.model_validate(
        {
            "sources": [{"name": "a", "uri": "builtin://a"}],
            "target": {"uri": "builtin://t"},
            "method": "Merge",
            "resources": [{"gpuType": "H100", "count": 4}, {"gpuType": "cpu", "count": 2}],
            "output": {"uri": "s3://o"},
        }
    )
    workload = plan_fusionjob("f", spec, None)
    assert not isinstance(workload, Blocked)
    groups = workload.worker_groups
    assert [(g.gpu_type, g.replicas, g.gpus_per_worker) for g in groups] == [
        ("H100", 4, 1),
        ("cpu", 2, 0),
    ]


def _routing(*targets: tuple[str, str, str]) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {
            "targets": [{"name": n, "pool": p, "model": m} for n, p, m in targets],
            "auth": {"mode": "None"},
        }
    )


ROUTER_UP = Observation(WorkloadState.RUNNING, "Serving", endpoint="http://r/v1")


def _route(
    spec: RoutingPolicySpec,
    pools: list[PoolView],
    router: Observation = ROUTER_UP,
    stats: dict[str, Any] | None = None,
) -> tuple[str, str, int]:
    status = compute_routingpolicy_status(
        spec, {p.name: p for p in pools}, router, stats, RoutingPolicyStatus(), 1, NOW
    )
    ready = status.conditions[0]
    return ready.status.value, ready.reason, status.ready_targets


def test_routing_status_names_what_is_wrong() -> None:
    spec = _routing(("small", "p1", "m"), ("big", "p2", "m"))
    up, down = PoolView("p1", True, frozenset({"m"})), PoolView("p2", False, frozenset({"m"}))
    assert _route(spec, [up]) == ("True", "TargetNotFound", 1), "p1 still answers"
    assert _route(spec, [PoolView("p1", False, frozenset({"m"}))]) == ("False", "TargetNotFound", 0)
    assert _route(spec, [up, PoolView("p2", True, frozenset({"x"}))]) == (
        "True",
        "ModelNotInPool",
        1,
    )
    assert _route(spec, [PoolView("p1", False, frozenset({"m"})), down]) == (
        "False",
        "TargetsNotReady",
        0,
    )
    assert _route(spec, [up, down]) == ("True", "PartiallyReady", 1)
    both = [up, PoolView("p2", True, frozenset({"m"}))]
    assert _route(spec, both) == ("True", "TargetsReady", 2)
    starting = Observation(WorkloadState.PENDING, "Deploying", "deploying the router")
    assert _route(spec, both, starting) == ("False", "Deploying", 2)
    failing = {"targets": [{"name": "big", "healthy": False}, {"name": "small"}]}
    assert _route(spec, both, stats=failing) == ("True", "TargetsFailing", 1)


def test_routing_status_carries_what_the_router_reports() -> None:
    spec = _routing(("small", "p1", "m"))
    pools = {"p1": PoolView("p1", True, frozenset({"m"}), "http://pool/v1")}
    stats = {
        "decisions": {"small": 3},
        "targets": [{"name": "small", "requests": 3, "healthy": True, "quality": 0.5}],
        "observedQuality": 0.5,
        "observedCostPer1kTokens": "0.25",
        "feedback": 2,
        "profiles": [{"target": "small", "cluster": "", "trials": 2, "successes": 1}],
    }
    status = compute_routingpolicy_status(
        spec, pools, ROUTER_UP, stats, RoutingPolicyStatus(), 1, NOW, "r-router"
    )
    assert status.endpoint == "http://r/v1" and status.workload == "r-router"
    assert status.decisions == {"small": 3} and status.feedback == 2
    assert status.observed_quality == 0.5
    assert status.observed_cost_per_1k_tokens == Decimal("0.25")
    assert status.profiles[0].successes == 1
    again = compute_routingpolicy_status(spec, pools, ROUTER_UP, None, status, 2, NOW)
    assert again.decisions == {"small": 3}, "a router that does not answer erases nothing"
    workload = plan_router("r", spec, pools, status.profiles)
    assert workload.config["endpoints"] == {"small": "http://pool/v1"}
    assert workload.restore == {"learned": [status.profiles[0].to_wire()]}


@given(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=63))
def test_child_names_are_short_stable_and_distinct(owner: str) -> None:
    name = child_name(owner, "serve")
    assert len(name) <= MAX_NAME - 16 and name == child_name(owner, "serve")
    assert name != child_name(owner + "x", "serve")
