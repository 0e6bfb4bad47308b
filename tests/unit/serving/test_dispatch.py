"""Load-aware dispatch: closed forms, brute force and invariants. No Ray."""

from __future__ import annotations

import random
from itertools import combinations

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
        ReplicaView,
        name=st.sampled_from("abcdefgh"),
        total_blocks=st.just(64),
        used_blocks=st.integers(0, 64),
        requests=st.integers(0, 12),
        high_priority=st.integers(0, 2),
        draining=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda view: view.name,
)


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
    vip = ReplicaView("a", total_blocks=64, used_blocks=8, requests=1, high_priority=1)
    plain = ReplicaView("b", total_blocks=64, used_blocks=12, requests=1)
    assert choose_replica([vip, plain], priority=0, headroom=16) == plain
    assert choose_replica([vip, plain], priority=HIGH_PRIORITY, headroom=16) == vip


@given(views_strategy, st.integers(-1, 2), st.integers(0, 32))
def test_choice_is_the_freest_serving_replica(
    views: list[ReplicaView], priority: int, headroom: int
) -> None:
    chosen = choose_replica(views, priority, headroom)
    serving = [view for view in views if not view.draining]
    if not serving:
        assert chosen is None
        return
    assert chosen is not None and not chosen.draining
    best = max(freeness(view, priority, headroom) for view in serving)
    assert freeness(chosen, priority, headroom) == best


@given(views_strategy, st.integers(0, 100))
def test_round_robin_cycles_over_serving_replicas_in_name_order(
    views: list[ReplicaView], turn: int
) -> None:
    serving = sorted(view.name for view in views if not view.draining)
    chosen = choose_round_robin(views, turn)
    assert (chosen.name if chosen else None) == (serving[turn % len(serving)] if serving else None)


@given(views_strategy, st.integers(0, 2**32))
def test_power_of_two_takes_the_less_loaded_of_some_serving_pair(
    views: list[ReplicaView], seed: int
) -> None:
    serving = sorted((view for view in views if not view.draining), key=lambda v: v.name)
    chosen = choose_power_of_two(views, random.Random(seed))
    if not serving:
        assert chosen is None
        return
    pairs = list(combinations(serving, 2)) or [(serving[0], serving[0])]
    winners = {min(pair, key=lambda v: (v.requests, v.name)).name for pair in pairs}
    assert chosen is not None and chosen.name in winners


def test_power_of_two_is_blind_to_kv_use() -> None:
    """Two replicas: it always takes the shorter queue, even when that one is out of KV."""
    full = ReplicaView("a", total_blocks=64, used_blocks=64, requests=1)
    idle = ReplicaView("b", total_blocks=64, used_blocks=0, requests=2)
    assert choose_power_of_two([full, idle], random.Random(0)) == full
    assert choose_replica([full, idle]) == idle


@given(views_strategy, st.integers(1, 16))
def test_capacity_is_a_per_serving_replica_bound(views: list[ReplicaView], bound: int) -> None:
    serving = [view for view in views if not view.draining]
    expected = sum(view.requests for view in serving) < bound * len(serving)
    assert has_capacity(views, bound) == expected
