"""Compute a RoutingPolicy's status from the pools it targets. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelfleet.api.routingpolicy import RoutingPolicySpec, RoutingPolicyStatus
from modelfleet.core.conditions import readiness_verdicts
from modelfleet.core.status import settle_status


@dataclass(frozen=True)
class PoolView:
    """What a RoutingPolicy needs to know of one ModelPool."""

    name: str
    ready: bool
    models: frozenset[str]


def compute_routingpolicy_status(
    spec: RoutingPolicySpec,
    pools: dict[str, PoolView],
    previous: RoutingPolicyStatus,
    generation: int,
    now: datetime,
) -> RoutingPolicyStatus:
    """Ready when some target can serve; Degraded when some target cannot.

    A reference to a pool or model that does not exist is reported first and
    by name, because it is a mistake in the policy the user can fix, unlike a
    pool that is still starting.
    """
    missing = [t.name for t in spec.targets if t.pool not in pools]
    unknown = [
        t.name for t in spec.targets if t.pool in pools and t.model not in pools[t.pool].models
    ]
    ready = [t.name for t in spec.targets if t.pool in pools and pools[t.pool].ready]
    waiting = [t.name for t in spec.targets if t.name not in ready]
    if missing:
        pools_missing = sorted({t.pool for t in spec.targets if t.name in missing})
        reason = "TargetNotFound"
        message = f"targets {missing} name ModelPools not in this namespace: {pools_missing}"
    elif unknown:
        reason = "ModelNotInPool"
        message = f"targets {unknown} name models their ModelPool does not serve"
    elif not ready:
        reason, message = "TargetsNotReady", f"no target's ModelPool is Ready yet: {waiting}"
    elif waiting:
        reason, message = "PartiallyReady", f"routing to {ready}; not Ready yet: {waiting}"
    else:
        reason, message = "TargetsReady", f"all {len(ready)} target(s) Ready"
    verdicts = readiness_verdicts(
        ready=bool(ready) and not missing and not unknown,
        reason=reason,
        message=message,
        progressing=bool(waiting) and not missing and not unknown,
        degraded=bool(ready) and bool(waiting),
    )
    return settle_status(previous, verdicts, generation, now, ready_targets=len(ready))
