"""Rebalancing and draining plans: brute force on small pools and invariants. No Ray."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet.serving.dispatch import ReplicaView, freeness
from modelfleet.serving.migration import Move, RequestView, plan_drain, plan_rebalance

NAMES = "abcd"


@st.composite
def pools(draw: st.DrawFn) -> tuple[list[ReplicaView], list[RequestView]]:
    """Up to four replicas of 64 blocks and the requests on them, views consistent."""
    names = NAMES[: draw(st.integers(1, 4))]
    draining = draw(st.sets(st.sampled_from(names), max_size=len(names) - 1))
    requests = [
        RequestView(f"r{i}", draw(st.sampled_from(names)), draw(st.integers(1, 6)))
        for i in range(draw(st.integers(0, 14)))
    ]
    views = []
    for name in names:
        mine = [r for r in requests if r.replica == name]
        views.append(
            ReplicaView(name, 64, sum(r.blocks for r in mine), len(mine), 0, name in draining)
        )
    return views, requests


def apply(
    views: list[ReplicaView], requests: list[RequestView], moves: list[Move]
) -> dict[str, ReplicaView]:
    """The views after the moves, replaying them one at a time."""
    state = {view.name: view for view in views}
    by_id = {request.request_id: request for request in requests}
    for move in moves:
        request = by_id[move.request_id]
        state[move.source] = state[move.source].with_request(request.blocks, 0, -1)
        state[move.target] = state[move.target].with_request(request.blocks, 0)
    return state


def test_two_requests_apart_is_the_threshold_for_equal_requests() -> None:
    views = [ReplicaView("a", 64, 3, 3), ReplicaView("b", 64, 1, 1)]
    requests = [RequestView(f"r{i}", "a", 1) for i in range(3)] + [RequestView("s", "b", 1)]
    assert plan_rebalance(views, requests, {}, 4) == [Move("r0", "a", "b")]
    balanced = [ReplicaView("a", 64, 2, 2), ReplicaView("b", 64, 1, 1)]
    assert plan_rebalance(balanced, requests[:2] + requests[3:], {}, 4) == []


def test_shortest_normal_request_moves_first() -> None:
    views = [ReplicaView("a", 64, 14, 3, high_priority=1), ReplicaView("b", 64, 0, 0)]
    requests = [
        RequestView("vip", "a", 1, priority=1),
        RequestView("long", "a", 9),
        RequestView("short", "a", 4),
    ]
    assert plan_rebalance(views, requests, {}, 1) == [Move("short", "a", "b")]


@given(pools(), st.integers(1, 3), st.dictionaries(st.sampled_from(NAMES), st.integers(0, 3)))
def test_rebalance_invariants(
    pool: tuple[list[ReplicaView], list[RequestView]],
    max_concurrent: int,
    in_flight: dict[str, int],
) -> None:
    views, requests = pool
    moves = plan_rebalance(views, requests, in_flight, max_concurrent)
    draining = {view.name for view in views if view.draining}
    busy = Counter({name: in_flight.get(name, 0) for name in NAMES})
    for move in moves:
        busy.update((move.source, move.target))
    assert all(busy[m.source] <= max_concurrent and busy[m.target] <= max_concurrent for m in moves)
    assert not {move.target for move in moves} & draining
    assert not {move.source for move in moves} & draining
    assert len({move.request_id for move in moves}) == len(moves)
    by_id = {request.request_id: request for request in requests}
    assert all(by_id[move.request_id].replica == move.source for move in moves)


@given(pools(), st.integers(1, 3))
def test_each_move_goes_to_the_freest_replica_and_helps(
    pool: tuple[list[ReplicaView], list[RequestView]], max_concurrent: int
) -> None:
    views, requests = pool
    moves = plan_rebalance(views, requests, {}, max_concurrent)
    by_id = {request.request_id: request for request in requests}
    busy: Counter[str] = Counter()
    for index, move in enumerate(moves):
        state = apply(views, requests, moves[:index])
        open_targets = [
            v for v in state.values() if not v.draining and busy[v.name] < max_concurrent
        ]
        assert freeness(state[move.target]) == max(freeness(v) for v in open_targets)
        joined = state[move.target].with_request(by_id[move.request_id].blocks, 0)
        assert freeness(joined) > freeness(state[move.source])
        busy.update((move.source, move.target))


@given(pools())
def test_without_concurrency_limits_rebalancing_leaves_no_helpful_move(
    pool: tuple[list[ReplicaView], list[RequestView]],
) -> None:
    views, requests = pool
    moves = plan_rebalance(views, requests, {}, len(requests) + 1)
    moved = {move.request_id for move in moves}
    left = [r for r in requests if r.request_id not in moved]
    assert plan_rebalance(list(apply(views, requests, moves).values()), left, {}, 1) == []


@given(pools())
def test_drain_plan_moves_every_request_to_serving_replicas(
    pool: tuple[list[ReplicaView], list[RequestView]],
) -> None:
    views, requests = pool
    victim = views[0].name
    if all(view.draining or view.name == victim for view in views):
        with pytest.raises(ValueError, match="no other replica"):
            plan_drain(views, requests, victim)
        return
    moves = plan_drain(views, requests, victim)
    assert sorted(m.request_id for m in moves) == sorted(
        r.request_id for r in requests if r.replica == victim
    )
    serving = {view.name for view in views if not view.draining and view.name != victim}
    assert all(move.source == victim and move.target in serving for move in moves)


def test_drain_keeps_choosing_the_freest_replica() -> None:
    views = [ReplicaView("a", 64, 8, 4), ReplicaView("b", 64, 0, 0), ReplicaView("c", 64, 30, 3)]
    requests = [RequestView(f"r{i}", "a", 2) for i in range(4)]
    targets = Counter(move.target for move in plan_drain(views, requests, "a"))
    assert targets == {"b": 4}


def test_replicas_with_room_to_spare_give_nothing_away() -> None:
    views = [ReplicaView("a", 64, 3, 3), ReplicaView("b", 64, 0, 0)]
    requests = [RequestView(f"r{i}", "a", 1) for i in range(3)]
    assert freeness(views[0]) == 61 / 4
    assert plan_rebalance(views, requests, {}, 4, below=15) == []
    assert plan_rebalance(views, requests, {}, 4, below=16) == [Move("r0", "a", "b")]
