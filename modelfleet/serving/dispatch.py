"""Where a new request goes: load-aware dispatch over engine replicas. Pure, no Ray.

Ray Serve's default router spreads requests without looking inside the engines. A
replica's real load is its KV cache and its batch, so dispatch ranks replicas by
*freeness* (after Llumnix): KV blocks left per request the replica would then serve.
A replica that runs high-priority requests reports ``headroom`` blocks fewer to
normal requests, so normal traffic steers away and the high-priority requests keep
room to grow. Draining replicas never receive requests.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

HIGH_PRIORITY = 1
"""Requests at or above this priority get headroom on the replicas that run them."""


class DispatchPolicy(StrEnum):
    """``load-aware`` is the pool's policy; the others are baselines it is measured
    against: ``power-of-two`` is Ray Serve's default router (two random replicas, the one
    with fewer requests), ``round-robin`` a router blind to any load."""

    LOAD_AWARE = "load-aware"
    POWER_OF_TWO = "power-of-two"
    ROUND_ROBIN = "round-robin"


@dataclass(frozen=True)
class ReplicaView:
    """What dispatch and migration know of one replica.

    ``requests`` counts the requests the replica serves (running or queued);
    ``used_blocks`` includes the blocks its queued requests will need.
    """

    name: str
    total_blocks: int
    used_blocks: int
    requests: int
    high_priority: int = 0
    draining: bool = False

    def with_request(self, blocks: int, priority: int, sign: int = 1) -> ReplicaView:
        """This view with one request of ``blocks`` added (``sign=1``) or removed (-1)."""
        return ReplicaView(
            name=self.name,
            total_blocks=self.total_blocks,
            used_blocks=self.used_blocks + sign * blocks,
            requests=self.requests + sign,
            high_priority=self.high_priority + sign * (priority >= HIGH_PRIORITY),
            draining=self.draining,
        )


def freeness(view: ReplicaView, priority: int = 0, headroom: int = 0) -> float:
    """KV blocks left per request if one more request joined ``view``.

    Normal requests see ``headroom`` fewer blocks on a replica with high-priority work;
    the value may go negative, which only ranks such a replica last.
    """
    reserved = headroom if view.high_priority and priority < HIGH_PRIORITY else 0
    return (view.total_blocks - view.used_blocks - reserved) / (view.requests + 1)


def choose_replica(
    views: Sequence[ReplicaView], priority: int = 0, headroom: int = 0
) -> ReplicaView | None:
    """The non-draining replica with the greatest freeness (ties: fewest requests, name).

    ``None`` when every replica is draining.
    """
    candidates = [view for view in views if not view.draining]
    if not candidates:
        return None
    return min(candidates, key=lambda v: (-freeness(v, priority, headroom), v.requests, v.name))


def choose_round_robin(views: Sequence[ReplicaView], turn: int) -> ReplicaView | None:
    """The baseline: the ``turn``-th non-draining replica in name order, cyclically."""
    candidates = sorted((v for v in views if not v.draining), key=lambda v: v.name)
    return candidates[turn % len(candidates)] if candidates else None


def choose_power_of_two(views: Sequence[ReplicaView], rng: random.Random) -> ReplicaView | None:
    """Ray Serve's default: of two non-draining replicas drawn at random, the one serving
    fewer requests. It sees queue lengths, not how much KV each request holds."""
    candidates = sorted((v for v in views if not v.draining), key=lambda v: v.name)
    if not candidates:
        return None
    pair = rng.sample(candidates, min(2, len(candidates)))
    return min(pair, key=lambda v: (v.requests, v.name))


def has_capacity(views: Sequence[ReplicaView], max_requests_per_replica: int) -> bool:
    """Whether the pool may accept one more request under its queue bound.

    The bound is per serving replica, so it scales with the pool; past it the ingress
    answers 503 rather than queue without limit.
    """
    serving = [view for view in views if not view.draining]
    return sum(view.requests for view in serving) < max_requests_per_replica * len(serving)
