"""RoutingPolicy handlers: deploy the policy's router, status from it and its pools."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

import httpx
from kubernetes import client

from controllers.context import current
from controllers.faults import crash_point
from controllers.reconcile import Decision, register
from controllers.secrets import auth_secret_blocked
from controllers.workloads import apply_events
from modelfleet.api.common import ConditionStatus, ConditionType
from modelfleet.api.registry import kind_by_name
from modelfleet.api.routingpolicy import RoutingPolicySpec, RoutingPolicyStatus
from modelfleet.backends.base import Owner
from modelfleet.core.status import blocked_verdicts, settle_status
from modelfleet.core.workload import ApplyResult, Observation, WorkloadState
from modelfleet.routing.plan import PoolView, compute_routingpolicy_status, plan_router

POOLS = kind_by_name("ModelPool")
STATS_TIMEOUT_S = 2.0
log = logging.getLogger(__name__)


def _view(pool: dict[str, Any]) -> PoolView:
    status = pool.get("status") or {}
    ready = any(
        c.get("type") == ConditionType.READY and c.get("status") == ConditionStatus.TRUE
        for c in status.get("conditions") or []
    )
    models = frozenset(m.get("name", "") for m in (pool.get("spec") or {}).get("models") or [])
    return PoolView(pool["metadata"]["name"], ready, models, status.get("endpoint") or "")


def observe_pools(namespace: str) -> dict[str, PoolView]:
    """Every ModelPool in the namespace, as the policy needs to see it."""
    api = client.CustomObjectsApi(current().api)
    listing = cast(
        dict[str, Any],
        api.list_namespaced_custom_object(POOLS.group, POOLS.version, namespace, POOLS.plural),
    )
    views = [_view(item) for item in listing.get("items", [])]
    return {view.name: view for view in views}


def read_router_stats(observation: Observation) -> dict[str, Any] | None:
    """What the running router reports at ``<endpoint>/router/status``; ``None`` when it
    does not answer, so the previous figures stay in status."""
    if observation.state is not WorkloadState.RUNNING or not observation.endpoint:
        return None
    try:
        response = httpx.get(observation.endpoint + "/router/status", timeout=STATS_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as error:
        log.info("router at %s did not report: %s", observation.endpoint, error)
        return None
    return cast(dict[str, Any], response.json())


def decide_routing(
    spec: RoutingPolicySpec,
    previous: RoutingPolicyStatus,
    owner: Owner,
    generation: int,
    now: datetime,
) -> Decision:
    backend = current().backend
    pools = observe_pools(owner.namespace)
    workload = plan_router(owner.name, spec, pools, previous.profiles)
    blocked = auth_secret_blocked(owner.namespace, workload.api_keys_secret)
    if blocked is not None:
        return Decision(settle_status(previous, blocked_verdicts(blocked), generation, now))
    applied = backend.apply(owner, workload)
    if applied is ApplyResult.CREATED:
        crash_point("after-apply")
    observation = backend.observe(owner, workload)
    stats = read_router_stats(observation)
    status = compute_routingpolicy_status(
        spec, pools, observation, stats, previous, generation, now, workload.name
    )
    return Decision(status, apply_events(applied, workload, backend.name))


register(kind_by_name("RoutingPolicy"), decide_routing)
