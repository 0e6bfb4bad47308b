"""RoutingPolicy handlers: status from the ModelPools the policy targets."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from kubernetes import client

from controllers.context import current
from controllers.reconcile import Decision, register
from modelfleet.api.common import ConditionStatus, ConditionType
from modelfleet.api.registry import kind_by_name
from modelfleet.api.routingpolicy import RoutingPolicySpec, RoutingPolicyStatus
from modelfleet.backends.base import Owner
from modelfleet.routing.plan import PoolView, compute_routingpolicy_status

POOLS = kind_by_name("ModelPool")


def _view(pool: dict[str, Any]) -> PoolView:
    conditions = (pool.get("status") or {}).get("conditions") or []
    ready = any(
        c.get("type") == ConditionType.READY and c.get("status") == ConditionStatus.TRUE
        for c in conditions
    )
    models = frozenset(m.get("name", "") for m in (pool.get("spec") or {}).get("models") or [])
    return PoolView(pool["metadata"]["name"], ready, models)


def observe_pools(namespace: str) -> dict[str, PoolView]:
    """Every ModelPool in the namespace, as the policy needs to see it."""
    api = client.CustomObjectsApi(current().api)
    listing = cast(
        dict[str, Any],
        api.list_namespaced_custom_object(POOLS.group, POOLS.version, namespace, POOLS.plural),
    )
    views = [_view(item) for item in listing.get("items", [])]
    return {view.name: view for view in views}


def decide_routing(
    spec: RoutingPolicySpec,
    previous: RoutingPolicyStatus,
    owner: Owner,
    generation: int,
    now: datetime,
) -> Decision:
    pools = observe_pools(owner.namespace)
    return Decision(compute_routingpolicy_status(spec, pools, previous, generation, now))


register(kind_by_name("RoutingPolicy"), decide_routing)
