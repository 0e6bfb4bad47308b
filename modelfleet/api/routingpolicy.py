"""RoutingPolicy: send each request to the model that meets quality at least cost."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from modelfleet.api.common import ApiModel, BaseStatus, Name


class Strategy(StrEnum):
    COST_OF_PASS = "cost-of-pass"
    CAPABILITY = "capability"
    CASCADE = "cascade"
    WEIGHTED = "weighted"
    LEAST_LATENCY = "least-latency"


class RouteTarget(ApiModel):
    """A model in a ModelPool that requests may be routed to."""

    name: Name = Field(description="How the rest of this policy refers to the target.")
    pool: Name = Field(description="A ModelPool in the same namespace.")
    model: Name = Field(description="A model served by that pool.")
    weight: float = Field(default=1.0, ge=0, le=1e6, description="With strategy=weighted.")


class Objectives(ApiModel):
    """What every routing decision must satisfy."""

    min_quality: float = Field(
        default=0.0, ge=0, le=1, description="Expected success rate a route must reach."
    )
    max_cost_per_1k_tokens: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        alias="maxCostPer1kTokens",
        description="Most a route may cost per 1000 tokens.",
    )
    latency_budget_ms: float | None = Field(
        default=None, gt=0, le=3_600_000, description="End-to-end latency a route must meet."
    )


ClusterName = Annotated[str, StringConstraints(min_length=1, max_length=63)]


class CapabilityProfile(ApiModel):
    """How well a target does on one cluster of queries (its 'aptitude test' score)."""

    target: Name
    cluster: ClusterName = Field(description="A query cluster or domain, e.g. math.")
    score: float = Field(ge=0, le=1, description="Success rate on that cluster.")


class Cascade(ApiModel):
    order: list[Name] = Field(min_length=2, max_length=16, description="Targets, cheapest first.")
    confidence_threshold: float = Field(
        default=0.8, gt=0, lt=1, description="Escalate when confidence is below this."
    )


class Difficulty(StrEnum):
    EASY = "easy"
    MEDIUM = "medium"
    HARD = "hard"


class ThinkingBudget(ApiModel):
    """A cap on reasoning tokens for queries of one difficulty."""

    difficulty: Difficulty = Field(description="easy, medium or hard.")
    max_tokens: int = Field(ge=0, le=1_000_000, description="Reasoning tokens allowed.")


class RoutingPolicySpec(ApiModel):
    """The desired routing behaviour."""

    targets: list[RouteTarget] = Field(
        min_length=1, max_length=32, description="Models requests may go to, 1 to 32."
    )
    strategy: Strategy = Field(default=Strategy.COST_OF_PASS, description="Default: cost-of-pass.")
    objectives: Objectives = Field(default_factory=Objectives)
    capability_profiles: list[CapabilityProfile] = Field(
        default_factory=list, max_length=1024, description="Scores by target and query cluster."
    )
    cascade: Cascade | None = Field(default=None, description="Needed with strategy=cascade.")
    thinking_budgets: list[ThinkingBudget] = Field(
        default_factory=list, max_length=3, description="Reasoning-token caps by difficulty."
    )
    fallback: Name | None = Field(default=None, description="Target used when none qualifies.")

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"spec.targets: names must be unique; got {names}")
        known = set(names)
        referenced = [("spec.fallback", self.fallback)] if self.fallback else []
        referenced += [
            ("spec.capabilityProfiles.target", p.target) for p in self.capability_profiles
        ]
        referenced += [
            ("spec.cascade.order", n) for n in (self.cascade.order if self.cascade else [])
        ]
        for field, name in referenced:
            if name not in known:
                raise ValueError(f"{field}: '{name}' is not one of spec.targets {names}")
        if self.strategy is Strategy.CASCADE and self.cascade is None:
            raise ValueError("spec.cascade is required with strategy=cascade")
        if self.strategy is Strategy.CAPABILITY and not self.capability_profiles:
            raise ValueError("spec.capabilityProfiles is required with strategy=capability")
        if self.strategy is Strategy.WEIGHTED and not any(t.weight > 0 for t in self.targets):
            raise ValueError("spec.targets: strategy=weighted needs a target with weight > 0")
        difficulties = [b.difficulty for b in self.thinking_budgets]
        if len(set(difficulties)) != len(difficulties):
            raise ValueError("spec.thinkingBudgets: one entry per difficulty")
        return self


class RoutingPolicyStatus(BaseStatus):
    """What the operator observed of the policy."""

    endpoint: str = Field(default="", max_length=2048, description="Where to send requests.")
    decisions: dict[str, int] = Field(
        default_factory=dict, max_length=32, description="Requests routed, by target."
    )
    observed_quality: float | None = Field(
        default=None, ge=0, le=1, description="Measured success rate of routed requests."
    )
    observed_cost_per_1k_tokens: float | None = Field(
        default=None, ge=0, alias="observedCostPer1kTokens", description="Measured cost."
    )
    ready_targets: int = Field(default=0, ge=0, description="Targets whose pool is Ready.")
