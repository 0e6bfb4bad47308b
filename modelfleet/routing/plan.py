"""Plan a RoutingPolicy's router and compute its status. Pure, no I/O.

The router is a service workload whose config is the policy, the endpoints of the
target pools that have one, and (for a new router only) the outcomes learned so far,
read back from the policy's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from modelfleet.api.common import parse_money
from modelfleet.api.routingpolicy import (
    LearnedProfile,
    RoutingPolicySpec,
    RoutingPolicyStatus,
    TargetObservation,
)
from modelfleet.core.conditions import readiness_verdicts
from modelfleet.core.names import child_name
from modelfleet.core.status import settle_status
from modelfleet.core.workload import Observation, Workload, WorkloadKind, WorkloadState

ENTRYPOINT = "modelfleet.routing.app"


@dataclass(frozen=True)
class PoolView:
    """What a RoutingPolicy needs to know of one ModelPool."""

    name: str
    ready: bool
    models: frozenset[str]
    endpoint: str = ""


def plan_router(
    name: str, spec: RoutingPolicySpec, pools: dict[str, PoolView], learned: list[LearnedProfile]
) -> Workload:
    """The router service: head-only (it forwards, it does not compute), one per policy."""
    endpoints = {
        t.name: pools[t.pool].endpoint
        for t in spec.targets
        if t.pool in pools and pools[t.pool].endpoint
    }
    config: dict[str, Any] = {
        "policyName": name,
        "policy": spec.to_wire(),
        "endpoints": endpoints,
    }
    return Workload(
        name=child_name(name, "router"),
        kind=WorkloadKind.SERVICE,
        entrypoint=ENTRYPOINT,
        config=config,
        worker_groups=(),
        api_keys_secret=spec.auth.secret_name or "",
        pod=spec.pod,
        restore={"learned": [p.to_wire() for p in learned]},
    )


MISSING_POOL = "pool"
MISSING_MODEL = "model"


def unresolved_targets(spec: RoutingPolicySpec, pools: dict[str, PoolView]) -> dict[str, str]:
    """Targets that cannot resolve, by name: ``MISSING_POOL`` when their ModelPool is not
    in the namespace, ``MISSING_MODEL`` when the pool does not serve their model."""
    unresolved = {}
    for target in spec.targets:
        pool = pools.get(target.pool)
        if pool is None:
            unresolved[target.name] = MISSING_POOL
        elif target.model not in pool.models:
            unresolved[target.name] = MISSING_MODEL
    return unresolved


def _target_verdict(
    spec: RoutingPolicySpec, pools: dict[str, PoolView], failing: list[str]
) -> tuple[bool, str, str, list[str]]:
    """(routable, reason, message, targets not ready) from the pools and router health.

    A reference to a pool or model that does not exist is reported first and by name,
    because it is a mistake the user can fix, unlike a pool that is still starting. The
    policy stays Ready (and Degraded) while any target can answer: its endpoint does.
    """
    unresolved = unresolved_targets(spec, pools)
    missing = [name for name, why in unresolved.items() if why == MISSING_POOL]
    unknown = [name for name, why in unresolved.items() if why == MISSING_MODEL]
    ready = [
        t.name
        for t in spec.targets
        if t.name not in unresolved and pools[t.pool].ready and t.name not in failing
    ]
    waiting = [t.name for t in spec.targets if t.name not in ready]
    routing = f"routing to {ready}; " if ready else ""
    if missing:
        pools_missing = sorted({t.pool for t in spec.targets if t.name in missing})
        message = f"targets {missing} name ModelPools not in this namespace: {pools_missing}"
        return bool(ready), "TargetNotFound", routing + message, waiting
    if unknown:
        message = f"targets {unknown} name models their pool does not serve"
        return bool(ready), "ModelNotInPool", routing + message, waiting
    if not ready:
        return False, "TargetsNotReady", f"no target can answer yet: {waiting}", waiting
    if failing:
        return True, "TargetsFailing", f"{routing}failing, so skipped: {failing}", waiting
    if waiting:
        return True, "PartiallyReady", f"{routing}not Ready yet: {waiting}", waiting
    return True, "TargetsReady", f"routing across all {len(ready)} target(s)", waiting


def compute_routingpolicy_status(
    spec: RoutingPolicySpec,
    pools: dict[str, PoolView],
    router: Observation,
    stats: dict[str, Any] | None,
    previous: RoutingPolicyStatus,
    generation: int,
    now: datetime,
    workload: str = "",
) -> RoutingPolicyStatus:
    """Ready when the router runs and some target answers; Degraded when some does not.

    ``stats`` is what the running router reports (decisions, telemetry, learned
    profiles); ``None`` keeps the previous figures rather than erasing them.
    """
    targets = [TargetObservation.model_validate(t) for t in (stats or {}).get("targets", [])]
    failing = [t.name for t in targets if not t.healthy]
    routable, reason, message, waiting = _target_verdict(spec, pools, failing)
    running = router.state is WorkloadState.RUNNING
    if routable and not running:
        routable, reason, message = False, router.reason, router.message
    verdicts = readiness_verdicts(
        ready=routable,
        reason=reason,
        message=message,
        progressing=not running or (bool(waiting) and reason == "PartiallyReady"),
        degraded=routable and bool(waiting),
    )
    ready_targets = len(spec.targets) - len(waiting)
    fields: dict[str, Any] = {"ready_targets": ready_targets, "workload": workload}
    fields["endpoint"] = router.endpoint if running else ""
    if stats is not None:
        fields.update(
            decisions=stats.get("decisions", {}),
            targets=targets,
            observed_quality=stats.get("observedQuality"),
            observed_cost_per_1k_tokens=_observed_cost(stats),
            feedback=int(stats.get("feedback", 0)),
            profiles=[LearnedProfile.model_validate(p) for p in stats.get("profiles", [])],
        )
    return settle_status(previous, verdicts, generation, now, **fields)


def _observed_cost(stats: dict[str, Any]) -> Decimal | None:
    """The router's measured cost of 1000 tokens: a decimal string, as the status has it."""
    cost = stats.get("observedCostPer1kTokens")
    return None if cost is None else parse_money(cost)
