"""Routing strategies: pure functions from what the router knows of a query to a route.

Every strategy returns the targets to try *in order*: the first is the decision, the rest
are where a request goes when an earlier target fails before its first token, and the
policy's ``fallback`` closes the list. Keeping them pure (``RouteContext -> Route``) is
what lets them be checked against brute force, and lets a simulator run the very code a
router runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from modelfleet.api.routingpolicy import Difficulty, Strategy

UNKNOWN_TOKENS = 1000.0
"""Tokens assumed per request while no target has answered any: costs then compare as
prices per 1000 tokens. Once some have, an unmeasured target is assumed to use their
mean, so it is neither favoured nor shunned for being new."""


@dataclass(frozen=True)
class Candidate:
    """One target as the router sees it for the current query."""

    name: str
    success: float
    """Estimated probability of a correct answer for this query's cluster."""
    cost_per_1k: float | None = None
    weight: float = 1.0
    healthy: bool = True
    latency_ms: float | None = None
    """Observed mean end-to-end latency; ``None`` before any request."""
    ttft_ms: float | None = None
    tokens: float | None = None
    """Observed mean prompt plus completion tokens per request."""
    reasoning: bool = False

    def expected_cost(self) -> float:
        """What one request is expected to cost here (0 for an unpriced target)."""
        tokens = UNKNOWN_TOKENS if self.tokens is None else self.tokens
        return (self.cost_per_1k or 0.0) * tokens / 1000.0

    def cost_of_pass(self) -> float:
        """Expected cost of one *correct* answer: cost per attempt over success rate."""
        if self.success <= 0:
            return math.inf
        return self.expected_cost() / self.success


@dataclass(frozen=True)
class Objectives:
    """The policy's objectives, in the router's units."""

    min_quality: float = 0.0
    max_cost_per_1k: float | None = None
    latency_budget_ms: float | None = None


@dataclass(frozen=True)
class RouteContext:
    """Everything a strategy may look at; ``candidates`` are in the policy's order."""

    strategy: Strategy
    candidates: tuple[Candidate, ...]
    objectives: Objectives = field(default_factory=Objectives)
    cascade: tuple[str, ...] = ()
    confidence_threshold: float = 0.8
    fallback: str | None = None
    draw: float = 0.0
    """A uniform number in [0, 1) for strategies that sample (weighted)."""
    difficulty: Difficulty = Difficulty.MEDIUM
    budgets: dict[Difficulty, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """Targets to try in turn, why, and per-target caps on ``max_tokens``."""

    order: tuple[str, ...]
    reason: str
    max_tokens: dict[str, int] = field(default_factory=dict)
    confidence_threshold: float | None = None
    """Cascade only: escalate to the next target while confidence is below this."""


def meets_objectives(candidate: Candidate, objectives: Objectives) -> bool:
    """Whether a target may take the query: quality, price and latency (when known)."""
    if candidate.success < objectives.min_quality:
        return False
    limit = objectives.max_cost_per_1k
    if limit is not None and (candidate.cost_per_1k or 0.0) > limit:
        return False
    budget = objectives.latency_budget_ms
    return budget is None or candidate.latency_ms is None or candidate.latency_ms <= budget


def within_limits(candidate: Candidate, objectives: Objectives) -> bool:
    """The objectives except quality, which the capability strategy maximises instead."""
    return meets_objectives(candidate, replace(objectives, min_quality=0.0))


def usable(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The healthy targets; all of them when none is, since health may be stale."""
    healthy = [c for c in candidates if c.healthy]
    return healthy or list(candidates)


def close_with_fallback(order: Sequence[str], fallback: str | None) -> tuple[str, ...]:
    """``order`` then the fallback, each target once."""
    names = list(dict.fromkeys(order))
    if fallback is not None and fallback not in names:
        names.append(fallback)
    return tuple(names)


def route_weighted(ctx: RouteContext) -> Route:
    """Pick a target with probability proportional to its weight; the others by weight."""
    pool = [c for c in usable(ctx.candidates) if c.weight > 0] or usable(ctx.candidates)
    total = sum(c.weight for c in pool)
    threshold, chosen = ctx.draw * total, pool[-1]
    for candidate in pool:
        if threshold < candidate.weight:
            chosen = candidate
            break
        threshold -= candidate.weight
    rest = sorted((c for c in pool if c is not chosen), key=lambda c: -c.weight)
    order = [chosen.name, *(c.name for c in rest)]
    reason = f"{Strategy.WEIGHTED}: drew {chosen.name} (weight {chosen.weight:g} of {total:g})"
    return Route(close_with_fallback(order, ctx.fallback), reason)


def observed_latency(candidate: Candidate) -> float | None:
    """Time to first token, or end-to-end latency where only whole answers were seen."""
    return candidate.latency_ms if candidate.ttft_ms is None else candidate.ttft_ms


def _latency_rank(latency: float | None) -> float:
    return -1.0 if latency is None else latency


def route_least_latency(ctx: RouteContext) -> Route:
    """Lowest observed latency first; an unmeasured target goes first, until measured."""
    pool = usable(ctx.candidates)
    ranked = sorted(pool, key=lambda c: _latency_rank(observed_latency(c)))
    best = ranked[0]
    latency = observed_latency(best)
    seen = "not measured yet" if latency is None else f"{latency:.0f} ms observed"
    reason = f"{Strategy.LEAST_LATENCY}: {best.name} ({seen})"
    return Route(close_with_fallback([c.name for c in ranked], ctx.fallback), reason)


def route_cost_of_pass(ctx: RouteContext) -> Route:
    """The cheapest expected cost of a correct answer among targets meeting the objectives."""
    pool = usable(ctx.candidates)
    qualified = sorted(
        (c for c in pool if meets_objectives(c, ctx.objectives)), key=Candidate.cost_of_pass
    )
    if qualified:
        best = qualified[0]
        reason = (
            f"{Strategy.COST_OF_PASS}: {best.name} at {best.cost_of_pass():.4g} per correct answer "
            f"(success {best.success:.2f})"
        )
        return Route(close_with_fallback([c.name for c in qualified], ctx.fallback), reason)
    return _unqualified(ctx, pool)


def route_capability(ctx: RouteContext) -> Route:
    """The target most likely to answer this kind of query, cheaper first on ties."""
    pool = usable(ctx.candidates)
    ranked = sorted(
        (c for c in pool if within_limits(c, ctx.objectives)),
        key=lambda c: (-c.success, c.expected_cost()),
    )
    if ranked and ranked[0].success >= ctx.objectives.min_quality:
        best = ranked[0]
        success = f"success {best.success:.2f} on this query's cluster"
        reason = f"{Strategy.CAPABILITY}: {best.name} ({success})"
        return Route(close_with_fallback([c.name for c in ranked], ctx.fallback), reason)
    return _unqualified(ctx, pool)


def route_cascade(ctx: RouteContext) -> Route:
    """The cascade's order among usable targets; the router escalates on low confidence."""
    names = {c.name for c in usable(ctx.candidates)}
    order = [name for name in ctx.cascade if name in names] or list(ctx.cascade)
    reason = (
        f"{Strategy.CASCADE}: {' -> '.join(order)} below confidence {ctx.confidence_threshold:g}"
    )
    return Route(
        close_with_fallback(order, ctx.fallback),
        reason,
        confidence_threshold=ctx.confidence_threshold,
    )


def _unqualified(ctx: RouteContext, pool: list[Candidate]) -> Route:
    """No target meets the objectives: the fallback, else the most likely to succeed."""
    if ctx.fallback is not None:
        reason = f"{ctx.strategy.value}: no target meets the objectives; fallback {ctx.fallback}"
        return Route((ctx.fallback,), reason)
    ranked = sorted(pool, key=lambda c: (-c.success, c.expected_cost()))
    reason = (
        f"{ctx.strategy.value}: no target meets the objectives and there is no fallback; "
        f"{ranked[0].name} is the most likely to succeed ({ranked[0].success:.2f})"
    )
    return Route(tuple(c.name for c in ranked), reason)


STRATEGIES = {
    Strategy.WEIGHTED: route_weighted,
    Strategy.LEAST_LATENCY: route_least_latency,
    Strategy.COST_OF_PASS: route_cost_of_pass,
    Strategy.CAPABILITY: route_capability,
    Strategy.CASCADE: route_cascade,
}


def estimate_difficulty(successes: Sequence[float]) -> Difficulty:
    """How hard a query is, from how often the targets answer its cluster correctly:
    easy when they mostly do (mean >= 0.8), hard when they mostly do not (< 0.5)."""
    if not successes:
        return Difficulty.MEDIUM
    mean = sum(successes) / len(successes)
    if mean >= 0.8:
        return Difficulty.EASY
    return Difficulty.MEDIUM if mean >= 0.5 else Difficulty.HARD


def apply_budgets(route: Route, ctx: RouteContext) -> Route:
    """Cap ``max_tokens`` of reasoning targets by the query's difficulty.

    A budget of 0 keeps reasoning targets out of the route while another target can
    take the query; with none other they keep it, uncapped.
    """
    budget = ctx.budgets.get(ctx.difficulty)
    reasoning = {c.name for c in ctx.candidates if c.reasoning}
    if budget is None or not reasoning.intersection(route.order):
        return route
    if budget == 0:
        order = tuple(name for name in route.order if name not in reasoning)
        if not order:
            return route
        reason = f"{route.reason}; {ctx.difficulty.value} query: reasoning targets skipped"
        return Route(order, reason, route.max_tokens, route.confidence_threshold)
    caps = {name: budget for name in route.order if name in reasoning}
    reason = f"{route.reason}; {ctx.difficulty.value} query: reasoning capped at {budget} tokens"
    return Route(route.order, reason, {**route.max_tokens, **caps}, route.confidence_threshold)


def estimate_tokens(candidates: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    """Candidates with unmeasured token counts set to the mean of the measured ones."""
    measured = [c.tokens for c in candidates if c.tokens is not None]
    if not measured or len(measured) == len(candidates):
        return candidates
    typical = sum(measured) / len(measured)
    return tuple(c if c.tokens is not None else replace(c, tokens=typical) for c in candidates)


def choose_route(ctx: RouteContext) -> Route:
    """The route for one query under the context's strategy and thinking budgets."""
    if not ctx.candidates:
        raise ValueError("a route needs at least one candidate target")
    ctx = replace(ctx, candidates=estimate_tokens(ctx.candidates))
    return apply_budgets(STRATEGIES[ctx.strategy](ctx), ctx)
