"""Routing strategies against brute force and hand-computed cases, plus their invariants."""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet.api.routingpolicy import Difficulty, Strategy
from modelfleet.routing.profiles import PRIOR_TRIALS, ProfileBook, import_learned
from modelfleet.routing.strategies import (
    Candidate,
    Objectives,
    RouteContext,
    choose_route,
    estimate_difficulty,
)
from modelfleet.routing.telemetry import Ledger
from modelfleet.routing.wire import cap_tokens, confidence, query_text

NAMES = ("a", "b", "c", "d", "e")

candidates_st = st.lists(
    st.builds(
        Candidate,
        name=st.just(""),
        success=st.floats(0, 1),
        cost_per_1k=st.floats(0.001, 100),
        weight=st.floats(0, 10),
        healthy=st.booleans(),
        latency_ms=st.none() | st.floats(1, 1000),
        ttft_ms=st.none() | st.floats(1, 1000),
        tokens=st.none() | st.floats(1, 4000),
    ),
    min_size=1,
    max_size=5,
).map(lambda cs: tuple(replace(c, name=NAMES[i]) for i, c in enumerate(cs)))
objectives_st = st.builds(
    Objectives,
    min_quality=st.floats(0, 1),
    max_cost_per_1k=st.none() | st.floats(0.001, 100),
    latency_budget_ms=st.none() | st.floats(1, 1000),
)


def _brute_force_cost_of_pass(
    candidates: tuple[Candidate, ...], objectives: Objectives
) -> dict[str, float]:
    """The least expected cost per correct answer over every admissible target; a target
    not measured yet is assumed to use the measured ones' mean tokens (1000 if none is)."""
    measured = [c.tokens for c in candidates if c.tokens is not None]
    typical = sum(measured) / len(measured) if measured else 1000.0
    pool = [c for c in candidates if c.healthy] or list(candidates)
    admissible = {}
    for c in pool:
        if c.success < objectives.min_quality:
            continue
        if objectives.max_cost_per_1k is not None and (c.cost_per_1k or 0) > (
            objectives.max_cost_per_1k
        ):
            continue
        budget = objectives.latency_budget_ms
        if budget is not None and c.latency_ms is not None and c.latency_ms > budget:
            continue
        tokens = typical if c.tokens is None else c.tokens
        value = math.inf if c.success == 0 else (c.cost_per_1k or 0) * tokens / 1000 / c.success
        admissible[c.name] = value
    return admissible


@given(candidates_st, objectives_st, st.sampled_from([None, "a"]))
def test_cost_of_pass_picks_the_brute_force_minimum(
    candidates: tuple[Candidate, ...], objectives: Objectives, fallback: str | None
) -> None:
    ctx = RouteContext(Strategy.COST_OF_PASS, candidates, objectives, fallback=fallback)
    route = choose_route(ctx)
    admissible = _brute_force_cost_of_pass(candidates, objectives)
    by_name = {c.name: c for c in candidates}
    if not admissible:
        if fallback is not None:
            assert route.order == (fallback,)
        else:
            top = max(
                c.success for c in candidates if c.healthy or not any(x.healthy for x in candidates)
            )
            assert by_name[route.order[0]].success == top
    else:
        best = min(admissible.values())
        chosen = admissible[route.order[0]]
        assert chosen == best or math.isclose(chosen, best)


@given(candidates_st, objectives_st, st.sampled_from(list(Strategy)), st.floats(0, 0.999))
def test_every_route_is_a_list_of_distinct_targets_ending_in_the_fallback(
    candidates: tuple[Candidate, ...], objectives: Objectives, strategy: Strategy, draw: float
) -> None:
    names = tuple(c.name for c in candidates)
    ctx = RouteContext(
        strategy, candidates, objectives, cascade=names, fallback=names[-1], draw=draw
    )
    route = choose_route(ctx)
    assert route.order and len(set(route.order)) == len(route.order)
    assert set(route.order) <= set(names)
    assert route.order[-1] == names[-1] or names[-1] in route.order
    healthy = {c.name for c in candidates if c.healthy}
    if healthy and route.order != (names[-1],):
        assert route.order[0] in healthy, "an unhealthy target is never first choice"


def test_cost_of_pass_hand_computed() -> None:
    # expected cost per correct answer: big 1.0*1/0.95=1.05, mid 0.3/0.6=0.5, tiny 0.05/0.1=0.5
    big = Candidate("big", success=0.95, cost_per_1k=1.0)
    mid = Candidate("mid", success=0.6, cost_per_1k=0.3)
    tiny = Candidate("tiny", success=0.1, cost_per_1k=0.04)
    ctx = RouteContext(Strategy.COST_OF_PASS, (big, mid, tiny))
    assert choose_route(ctx).order == ("tiny", "mid", "big")
    demanding = RouteContext(Strategy.COST_OF_PASS, (big, mid, tiny), Objectives(0.5))
    assert choose_route(demanding).order == ("mid", "big")
    strict = RouteContext(Strategy.COST_OF_PASS, (big, mid, tiny), Objectives(0.99), fallback="big")
    route = choose_route(strict)
    assert route.order == ("big",) and "fallback big" in route.reason
    terse = Candidate("big", success=0.95, cost_per_1k=1.0, tokens=1000)
    verbose = Candidate("mid", success=0.6, cost_per_1k=0.3, tokens=4000)
    ctx = RouteContext(Strategy.COST_OF_PASS, (terse, verbose), Objectives(0.5))
    assert choose_route(ctx).order[0] == "big", "4000 tokens at 0.3 cost 2.0 per correct answer"
    new = Candidate("new", success=0.6, cost_per_1k=0.3)
    ctx = RouteContext(Strategy.COST_OF_PASS, (terse, new), Objectives(0.5))
    assert choose_route(ctx).order[0] == "new", "a new target is assumed to be as terse"


def test_weighted_draws_in_proportion_to_weights() -> None:
    targets = (Candidate("a", 0.5, weight=1), Candidate("b", 0.5, weight=3))
    draws = [i / 1000 for i in range(1000)]
    firsts = [
        choose_route(RouteContext(Strategy.WEIGHTED, targets, draw=d)).order[0] for d in draws
    ]
    assert firsts.count("a") == 250 and firsts.count("b") == 750
    down = (Candidate("a", 0.5, weight=1), Candidate("b", 0.5, weight=3, healthy=False))
    assert {
        choose_route(RouteContext(Strategy.WEIGHTED, down, draw=d)).order[0] for d in draws
    } == {"a"}


def test_least_latency_measures_each_target_then_takes_the_fastest() -> None:
    fast, slow = Candidate("fast", 0.5, ttft_ms=20), Candidate("slow", 0.5, ttft_ms=90)
    fresh = Candidate("fresh", 0.5)
    ctx = RouteContext(Strategy.LEAST_LATENCY, (slow, fast, fresh))
    assert choose_route(ctx).order == ("fresh", "fast", "slow")
    ctx = RouteContext(Strategy.LEAST_LATENCY, (slow, fast))
    assert choose_route(ctx).order == ("fast", "slow")
    whole = Candidate("whole", 0.5, latency_ms=10)
    ctx = RouteContext(Strategy.LEAST_LATENCY, (fast, whole))
    assert choose_route(ctx).order[0] == "whole", "end-to-end latency where TTFT is unseen"


def test_capability_takes_the_most_capable_within_limits() -> None:
    strong = Candidate("strong", 0.9, cost_per_1k=5.0)
    good = Candidate("good", 0.9, cost_per_1k=1.0)
    weak = Candidate("weak", 0.4, cost_per_1k=0.1)
    ctx = RouteContext(Strategy.CAPABILITY, (strong, good, weak))
    assert choose_route(ctx).order == ("good", "strong", "weak"), "ties go to the cheaper"
    capped = RouteContext(Strategy.CAPABILITY, (strong, good, weak), Objectives(0, 0.5))
    assert choose_route(capped).order == ("weak",)
    unmet = RouteContext(Strategy.CAPABILITY, (weak,), Objectives(0.8), fallback="weak")
    assert "no target meets the objectives" in choose_route(unmet).reason


def test_cascade_follows_its_order_among_usable_targets() -> None:
    targets = (Candidate("big", 0.9), Candidate("small", 0.5, healthy=False), Candidate("mid", 0.7))
    ctx = RouteContext(
        Strategy.CASCADE, targets, cascade=("small", "mid", "big"), confidence_threshold=0.7
    )
    route = choose_route(ctx)
    assert route.order == ("mid", "big") and route.confidence_threshold == 0.7


def test_thinking_budgets_cap_or_skip_reasoning_targets() -> None:
    thinker = Candidate("thinker", 0.9, cost_per_1k=1.0, reasoning=True)
    plain = Candidate("plain", 0.5, cost_per_1k=1.0)
    budgets = {Difficulty.EASY: 0, Difficulty.HARD: 4096}
    easy = RouteContext(
        Strategy.CAPABILITY, (thinker, plain), difficulty=Difficulty.EASY, budgets=budgets
    )
    assert choose_route(easy).order == ("plain",)
    hard = RouteContext(
        Strategy.CAPABILITY, (thinker, plain), difficulty=Difficulty.HARD, budgets=budgets
    )
    route = choose_route(hard)
    assert route.order == ("thinker", "plain") and route.max_tokens == {"thinker": 4096}
    alone = RouteContext(
        Strategy.CAPABILITY, (thinker,), difficulty=Difficulty.EASY, budgets=budgets
    )
    assert choose_route(alone).order == ("thinker",), "the only target keeps the query"


@pytest.mark.parametrize(
    ("successes", "difficulty"),
    [
        ([], Difficulty.MEDIUM),
        ([0.9, 0.7], Difficulty.EASY),
        ([0.6, 0.4], Difficulty.MEDIUM),
        ([0.1, 0.2], Difficulty.HARD),
    ],
)
def test_difficulty_follows_the_targets_success_rates(
    successes: list[float], difficulty: Difficulty
) -> None:
    assert estimate_difficulty(successes) is difficulty


def test_profiles_are_posterior_means_and_survive_a_round_trip() -> None:
    book = ProfileBook({("a", "math"): 0.9}, [])
    assert book.success("a", "math") == 0.9 and book.success("b", "math") == 0.5
    for correct in (False, False, True):
        book.record("a", "math", correct)
    assert book.success("a", "math") == pytest.approx((0.9 * PRIOR_TRIALS + 1) / (PRIOR_TRIALS + 3))
    book.record("b", "math", True)
    assert book.success("b", "math") == pytest.approx((0.5 + 1) / 2)
    restored = ProfileBook({("a", "math"): 0.9}, import_learned(book.export()))
    assert restored.success("a", "math") == book.success("a", "math")
    malformed: list[dict[str, object]] = [
        {"target": "a", "trials": 1, "successes": 2},
        {"cluster": "x"},
        {"target": 3},
    ]
    assert import_learned(malformed) == []
    assert book.informed("math") and not book.informed("poetry")


def test_the_ledger_books_money_exactly() -> None:
    ledger = Ledger()
    assert ledger.cost_per_1k_tokens() is None
    for _ in range(3):
        ledger.record_spend(100, Decimal("0.1"))
    ledger.record_spend(700, None)
    assert ledger.cost == Decimal("0.03"), "floats would give 0.030000000000000002"
    assert format(ledger.cost_per_1k_tokens(), "f") == "0.030000000"
    ledger.record_spend(2, Decimal("0.000000001"))
    assert ledger.cost_per_1k_tokens() == Decimal("0.029940120"), "to the status's 9 digits"


def test_confidence_is_the_geometric_mean_token_probability() -> None:
    chat = {"choices": [{"logprobs": {"content": [{"logprob": math.log(0.5)}, {"logprob": 0.0}]}}]}
    assert confidence(chat) == pytest.approx(math.sqrt(0.5))
    text = {"choices": [{"logprobs": {"token_logprobs": [math.log(0.25), math.log(0.25)]}}]}
    assert confidence(text) == pytest.approx(0.25)
    assert confidence({"choices": [{"logprobs": None}]}) == 0.0


def test_requests_are_read_and_capped_as_sent() -> None:
    chat = {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]}
    assert query_text(chat, chat=True) == "hi"
    assert query_text({"prompt": ["a", "b"]}, chat=False) == "a"
    assert cap_tokens({"max_tokens": 10}, chat=False, cap=4) == {"max_tokens": 4}
    assert cap_tokens({"max_tokens": 3}, chat=False, cap=4) == {"max_tokens": 3}
    capped = cap_tokens({"max_completion_tokens": 99}, chat=True, cap=5)
    assert capped == {"max_completion_tokens": 5}
    assert cap_tokens({}, chat=True, cap=None) == {}
