"""Which running requests to move between replicas, and where. Pure, no Ray.

After Llumnix, one policy uses live migration for two jobs:

* load balance: when a replica runs short of KV (its freeness is below a threshold),
  move requests from it to the freest replica while the move still helps, i.e. the
  target stays freer after receiving the request than the source was before giving it
  up (for equal requests: their counts differ by two or more). Each move strictly
  reduces the imbalance, so plans never oscillate; replicas with room to spare are left
  alone, since a migration costs a copy and buys nothing there.
* drain: before a replica is removed, every request on it moves to the freest serving
  replica, so scale-down loses no stream.

Short, normal-priority requests move first: their KV is cheapest to copy and
high-priority work is not disturbed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelfleet.serving.dispatch import ReplicaView, choose_replica, freeness


@dataclass(frozen=True)
class RequestView:
    """A request a replica serves: its tokens so far decide its KV blocks."""

    request_id: str
    replica: str
    blocks: int
    priority: int = 0

    def move_order(self) -> tuple[int, int, str]:
        """Sort key: normal priority first, then the fewest blocks to copy."""
        return (self.priority, self.blocks, self.request_id)


@dataclass(frozen=True)
class Move:
    """Migrate ``request_id`` from ``source`` to ``target``."""

    request_id: str
    source: str
    target: str


def plan_rebalance(
    views: Sequence[ReplicaView],
    requests: Sequence[RequestView],
    in_flight: Mapping[str, int],
    max_concurrent: int,
    below: float = math.inf,
) -> list[Move]:
    """Load-balancing moves, at most ``max_concurrent`` migrations per replica at a time.

    ``in_flight`` counts migrations already running per replica (as source or target);
    ``requests`` are the ones that may move (not finishing, not already migrating);
    only replicas whose freeness is below ``below`` give requests away.
    """
    state = {view.name: view for view in views}
    busy = {view.name: in_flight.get(view.name, 0) for view in views}
    movable = sorted(requests, key=RequestView.move_order)
    moves: list[Move] = []
    while True:
        move = _best_move(state, busy, movable, max_concurrent, below)
        if move is None:
            return moves
        request, source, target = move
        moves.append(Move(request.request_id, source.name, target.name))
        movable.remove(request)
        state[source.name] = source.with_request(request.blocks, request.priority, -1)
        state[target.name] = target.with_request(request.blocks, request.priority)
        busy[source.name] += 1
        busy[target.name] += 1


def _best_move(
    state: Mapping[str, ReplicaView],
    busy: Mapping[str, int],
    movable: Sequence[RequestView],
    max_concurrent: int,
    below: float,
) -> tuple[RequestView, ReplicaView, ReplicaView] | None:
    """The most loaded source under pressure with a helpful move to the freest target."""
    free = [view for view in state.values() if busy[view.name] < max_concurrent]
    target = choose_replica(free)
    if target is None:
        return None
    sources = sorted(
        (v for v in free if v.name != target.name and not v.draining and freeness(v) < below),
        key=lambda v: (freeness(v), v.name),
    )
    for source in sources:
        for request in movable:
            if request.replica == source.name and _helps(source, target, request):
                return request, source, target
    return None


def _helps(source: ReplicaView, target: ReplicaView, request: RequestView) -> bool:
    """Whether the target, holding the request, is still freer than the source is now."""
    after = target.with_request(request.blocks, request.priority)
    return freeness(after, request.priority) > freeness(source, request.priority)


def plan_drain(
    views: Sequence[ReplicaView], requests: Sequence[RequestView], draining: str
) -> list[Move]:
    """Moves for every request on ``draining``, each to the freest serving replica.

    The executor runs them at most ``maxConcurrent`` at a time; the plan itself covers
    all of them so none is left behind. Raises ``ValueError`` when no replica serves on.
    """
    state = {v.name: v for v in views if v.name != draining and not v.draining}
    if not state:
        raise ValueError(f"cannot drain replica {draining!r}: no other replica is serving")
    moves: list[Move] = []
    leaving = sorted((r for r in requests if r.replica == draining), key=RequestView.move_order)
    for request in reversed(leaving):
        target = choose_replica(list(state.values()), request.priority)
        assert target is not None
        moves.append(Move(request.request_id, draining, target.name))
        state[target.name] = target.with_request(request.blocks, request.priority)
    return moves
