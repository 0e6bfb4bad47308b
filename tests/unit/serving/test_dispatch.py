"""Load-aware dispatch: closed forms, brute force and invariants. No Ray."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet.serving.dispatch import (
    HIGH_PRIORITY,
    ReplicaView,
    choose_power_of_two,
    choose_replica,
    choose_round_robin,
    freeness,
    has_capacity,
)

views_strategy = st.lists(
    st.builds(
        lambda name, total, used_share, requests, high, draining: ReplicaView(
            name, total, round(total * used_share), requests, high, draining
        ),
        name=st.sampled_from("abcdefgh"),
        total=st.integers(16, 128),
        used_share=st.floats(0.0, 1.0),
        requests=st.integers(0, 12),
        high=st.integers(0, 2),
        draining=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda view: view.name,
)


def prefers(a: ReplicaView, b: ReplicaView, priority: int, headroom: int) -> bool:
    """Whether ``a`` is at least as good a home as ``b`` for one more request.

    Written from the policy's statement, in exact integers: blocks left after the reserve,
    shared by the requests there plus the new one, compared by cross-multiplication; equal
    shares go to the shorter queue, then to the first name.
    """
    normal = priority < HIGH_PRIORITY
    left_a = a.total_blocks - a.used_blocks - (headroom if normal and a.high_priority > 0 else 0)
    left_b = b.total_blocks - b.used_blocks - (headroom if normal and b.high_priority > 0 else 0)
    lhs, rhs = left_a * (b.requests + 1), left_b * (a.requests + 1)
    if lhs != rhs:
        return lhs > rhs
    return (a.requests, a.name) <= (b.requests, b.name)


def test_freeness_is_blocks_left_per_request_after_joining() -> None:
    view = ReplicaView("a", total_blocks=100, used_blocks=40, requests=2)
    assert freeness(view) == 20.0


def test_headroom_applies_to_normal_requests_only() -> None:
    view = ReplicaView("a", total_blocks=100, used_blocks=40, requests=2, high_priority=1)
    assert freeness(view, priority=0, headroom=30) == 10.0
    assert freeness(view, priority=HIGH_PRIORITY, headroom=30) == 20.0


def test_load_aware_sends_consecutive_requests_to_the_idle_replica() -> None:
    busy = ReplicaView("a", total_blocks=64, used_blocks=48, requests=6)
    idle = ReplicaView("b", total_blocks=64, used_blocks=0, requests=0)
    chosen = []
    for _ in range(3):
        pick = choose_replica([busy, idle])
        assert pick is not None
        chosen.append(pick.name)
        idle = idle.with_request(blocks=4, priority=0) if pick.name == "b" else idle
    assert chosen == ["b", "b", "b"]


def test_normal_requests_leave_headroom_to_high_priority_work() -> None:
    """With headroom 16, a normal request sees (64 - 8 - 16) / 2 = 20 blocks on ``a`` and
    (64 - 12) / 2 = 26 on ``b``; a high-priority one sees (64 - 8) / 2 = 28 on ``a``."""
    vip = ReplicaView("a", total_blocks=64, used_blocks=8, requests=1, high_priority=1)
    plain = ReplicaView("b", total_blocks=64, used_blocks=12, requests=1)
    assert choose_replica([vip, plain], priority=0, headroom=16) == plain
    assert choose_replica([vip, plain], priority=HIGH_PRIORITY, headroom=16) == vip


def test_choice_on_a_hand_worked_fleet() -> None:
    """Blocks left per request after joining, worked out by hand:

    a: (100 - 70) / (2 + 1) = 10      b: (80 - 20) / (5 + 1) = 10
    c: (64 - 4) / (3 + 1)   = 15      d: draining, though (200 - 0) / 1 = 200
    e: (120 - 40) / (3 + 1) = 20 for high priority; normal requests lose the headroom of 24:
       (120 - 40 - 24) / 4 = 14.
    """
    fleet = [
        ReplicaView("a", total_blocks=100, used_blocks=70, requests=2),
        ReplicaView("b", total_blocks=80, used_blocks=20, requests=5),
        ReplicaView("c", total_blocks=64, used_blocks=4, requests=3),
        ReplicaView("d", total_blocks=200, used_blocks=0, requests=0, draining=True),
        ReplicaView("e", total_blocks=120, used_blocks=40, requests=3, high_priority=1),
    ]

    assert choose_replica(fleet, priority=0, headroom=24) == fleet[2]
    assert choose_replica(fleet, priority=HIGH_PRIORITY, headroom=24) == fleet[4]
    without_c_and_e = [fleet[0], fleet[1], fleet[3]]
    # a and b tie at 10 blocks per request; a has the shorter queue.
    assert choose_replica(without_c_and_e) == fleet[0]
    assert choose_replica([fleet[3]]) is None


@given(views_strategy, st.integers(-1, 2), st.integers(0, 32))
def test_choice_beats_every_other_serving_replica(
    views: list[ReplicaView], priority: int, headroom: int
) -> None:
    chosen = choose_replica(views, priority, headroom)
    serving = [view for view in views if not view.draining]
    if not serving:
        assert chosen is None
        return
    assert chosen in serving
    assert all(prefers(chosen, other, priority, headroom) for other in serving)
    assert choose_replica(list(reversed(views)), priority, headroom) == chosen


def test_round_robin_on_a_hand_worked_fleet() -> None:
    """Serving replicas in name order are a, c, d (b drains); turns cycle through them."""
    fleet = [
        ReplicaView("d", 64, 0, 0),
        ReplicaView("a", 64, 60, 9),
        ReplicaView("b", 64, 0, 0, draining=True),
        ReplicaView("c", 64, 10, 1),
    ]

    chosen = [choose_round_robin(fleet, turn) for turn in range(7)]

    assert [view.name if view else None for view in chosen] == list("acdacda")
    assert choose_round_robin([fleet[2]], 0) is None


@given(views_strategy, st.integers(0, 100))
def test_round_robin_visits_each_serving_replica_once_per_cycle(
    views: list[ReplicaView], start: int
) -> None:
    serving = {view.name for view in views if not view.draining}
    cycle = [choose_round_robin(views, start + k) for k in range(len(serving))]
    assert {view.name for view in cycle if view is not None} == serving
    assert len(cycle) == len(serving) and None not in cycle


def test_power_of_two_picks_each_replica_as_often_as_its_rank_implies() -> None:
    """Three replicas with 0, 1 and 2 requests: the pair drawn is one of three equally
    likely, and the idlest replica wins both pairs it is in (2/3), the middle one the pair
    without the idlest (1/3), the busiest never. A draining replica is never drawn."""
    fleet = [
        ReplicaView("x", 64, 0, 2),
        ReplicaView("y", 64, 0, 0),
        ReplicaView("z", 64, 0, 1),
        ReplicaView("w", 64, 0, 0, draining=True),
    ]
    rng = random.Random(7)
    draws = 3000

    picks: Counter[str] = Counter()
    for _ in range(draws):
        chosen = choose_power_of_two(fleet, rng)
        assert chosen is not None
        picks[chosen.name] += 1

    assert set(picks) <= {"y", "z"}
    assert picks["y"] / draws == pytest.approx(2 / 3, abs=0.04)
    assert picks["z"] / draws == pytest.approx(1 / 3, abs=0.04)


@given(views_strategy, st.integers(0, 2**32))
def test_power_of_two_never_picks_the_unique_busiest_of_several(
    views: list[ReplicaView], seed: int
) -> None:
    serving = [view for view in views if not view.draining]
    chosen = choose_power_of_two(views, random.Random(seed))
    if not serving:
        assert chosen is None
        return
    assert chosen in serving
    busiest = max(view.requests for view in serving)
    if len(serving) > 1 and sum(view.requests == busiest for view in serving) == 1:
        assert chosen.requests < busiest


def test_power_of_two_is_blind_to_kv_use() -> None:
    """Two replicas: it always takes the shorter queue, even when that one is out of KV."""
    full = ReplicaView("a", total_blocks=64, used_blocks=64, requests=1)
    idle = ReplicaView("b", total_blocks=64, used_blocks=0, requests=2)
    assert choose_power_of_two([full, idle], random.Random(0)) == full
    assert choose_replica([full, idle]) == idle


def test_capacity_on_a_hand_worked_pool() -> None:
    """Two serving replicas under a bound of 4 admit 8 requests; a draining one adds none."""
    pool = [ReplicaView("a", 64, 0, 3), ReplicaView("b", 64, 0, 4)]
    draining = ReplicaView("c", 64, 0, 0, draining=True)

    assert has_capacity(pool, 4)  # 7 < 8
    assert not has_capacity([pool[0].with_request(1, 0), pool[1]], 4)  # 8 of 8
    assert not has_capacity([pool[0].with_request(1, 0), pool[1], draining], 4)
    assert not has_capacity([draining], 4)


@given(
    serving=st.integers(1, 5),
    draining=st.lists(st.integers(0, 6), max_size=3),
    bound=st.integers(1, 16),
)
def test_an_empty_pool_admits_exactly_bound_requests_per_serving_replica(
    serving: int, draining: list[int], bound: int
) -> None:
    """Admitting one request at a time to the load-aware choice until the pool says no
    must stop after ``serving x bound``, whatever the draining replicas still hold."""
    views = [ReplicaView(f"s{i}", 64, 0, 0) for i in range(serving)]
    views += [ReplicaView(f"d{i}", 64, 0, n, draining=True) for i, n in enumerate(draining)]
    admitted = 0
    while has_capacity(views, bound) and admitted <= serving * bound:
        target = choose_replica(views)
        assert target is not None
        views = [v.with_request(blocks=0, priority=0) if v == target else v for v in views]
        admitted += 1
    assert admitted == serving * bound
