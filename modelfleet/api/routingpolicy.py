"""RoutingPolicy: send each request to the model that meets quality at least cost."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from modelfleet.api.auth import Auth, require_auth
from modelfleet.api.common import (
    ApiModel,
    BaseStatus,
    Money,
    Name,
    StatusModel,
    list_map,
    require_unique,
)
from modelfleet.api.pods import Pod


class Strategy(StrEnum):
    COST_OF_PASS = "CostOfPass"
    CAPABILITY = "Capability"
    CASCADE = "Cascade"
    WEIGHTED = "Weighted"
    LEAST_LATENCY = "LeastLatency"


class RouteTarget(ApiModel):
    """A model in a ModelPool that requests may be routed to."""

    name: Name = Field(description="How the rest of this policy refers to the target.")
    pool: Name = Field(description="A ModelPool in the same namespace.")
    model: Name = Field(description="A model served by that pool.")
    weight: float = Field(default=1.0, ge=0, le=1e6, description="With strategy Weighted.")
    cost_per_1k_tokens: Money | None = Field(
        default=None,
        alias="costPer1kTokens",
        description='Price of 1000 prompt plus completion tokens on this target, e.g. "0.01". '
        "Required by strategy CostOfPass and by objectives.maxCostPer1kTokens.",
    )
    reasoning: bool = Field(
        default=False,
        description="A reasoning-heavy target: spec.thinkingBudgets caps its max_tokens by "
        "the query's estimated difficulty.",
    )


class Objectives(ApiModel):
    """What every routing decision must satisfy."""

    min_quality: float = Field(
        default=0.0, ge=0, le=1, description="Expected success rate a route must reach."
    )
    max_cost_per_1k_tokens: Money | None = Field(
        default=None,
        alias="maxCostPer1kTokens",
        description='Most a route may cost per 1000 tokens, e.g. "0.05".',
    )
    latency_budget_ms: float | None = Field(
        default=None, gt=0, le=3_600_000, description="End-to-end latency a route must meet."
    )


ClusterName = Annotated[str, StringConstraints(min_length=1, max_length=63)]


Utterance = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class QueryCluster(ApiModel):
    """A kind of query, declared by examples: a query belongs to the cluster whose examples'
    mean sentence embedding (all-MiniLM-L6-v2) is nearest to its own."""

    name: ClusterName = Field(description="How profiles refer to the cluster, e.g. math.")
    examples: list[Utterance] = Field(
        min_length=1, max_length=64, description="Typical queries of the cluster, 1 to 64."
    )


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
    EASY = "Easy"
    MEDIUM = "Medium"
    HARD = "Hard"


class ThinkingBudget(ApiModel):
    """A cap on reasoning tokens for queries of one difficulty."""

    difficulty: Difficulty = Field(description="Easy, Medium or Hard.")
    max_tokens: int = Field(ge=0, le=1_000_000, description="Reasoning tokens allowed.")


class RoutingPolicySpec(ApiModel):
    """The desired routing behaviour."""

    targets: list[RouteTarget] = Field(
        min_length=1,
        max_length=32,
        description="Models requests may go to, 1 to 32.",
        json_schema_extra=list_map("name"),
    )
    strategy: Strategy = Field(
        default=Strategy.WEIGHTED,
        description="Weighted, LeastLatency, CostOfPass, Capability or Cascade. "
        "Default: Weighted, the one strategy that needs no prices or quality data.",
    )
    objectives: Objectives = Field(default_factory=Objectives)
    query_clusters: list[QueryCluster] = Field(
        default_factory=list,
        max_length=32,
        description="Kinds of query, by example. Quality is estimated per target and cluster "
        "(from capabilityProfiles, then from feedback); without clusters, per target.",
        json_schema_extra=list_map("name"),
    )
    capability_profiles: list[CapabilityProfile] = Field(
        default_factory=list,
        max_length=1024,
        description="Prior success rates by target and query cluster; feedback refines them.",
        json_schema_extra=list_map("target", "cluster"),
    )
    cascade: Cascade | None = Field(default=None, description="Needed with strategy Cascade.")
    thinking_budgets: list[ThinkingBudget] = Field(
        default_factory=list,
        max_length=3,
        description="Reasoning-token caps by difficulty.",
        json_schema_extra=list_map("difficulty"),
    )
    fallback: Name | None = Field(default=None, description="Target used when none qualifies.")
    auth: Auth = Field(
        description="API keys callers must present, or mode None. The router forwards the "
        "caller's key to the pools, so they accept the same keys (or check none)."
    )
    pod: Pod = None

    _require_auth = model_validator(mode="before")(require_auth)

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
        self._check_clusters()
        self._check_costs()
        referenced += [
            ("spec.cascade.order", n) for n in (self.cascade.order if self.cascade else [])
        ]
        for field, name in referenced:
            if name not in known:
                raise ValueError(f"{field}: '{name}' is not one of spec.targets {names}")
        if self.strategy is Strategy.CASCADE and self.cascade is None:
            raise ValueError("spec.cascade is required with strategy Cascade")
        if self.strategy is Strategy.CAPABILITY and not self.query_clusters:
            raise ValueError(
                "spec.queryClusters is required with strategy Capability: the strategy picks "
                "the best target per kind of query"
            )
        if self.cascade is not None and self.strategy is not Strategy.CASCADE:
            raise ValueError(
                f"spec.cascade is only read with strategy Cascade, not {self.strategy.value}; "
                "remove it or set strategy: Cascade"
            )
        if self.thinking_budgets and not any(t.reasoning for t in self.targets):
            raise ValueError(
                "spec.thinkingBudgets: no target has reasoning: true, so no budget would apply"
            )
        if self.strategy is Strategy.WEIGHTED and not any(t.weight > 0 for t in self.targets):
            raise ValueError("spec.targets: strategy Weighted needs a target with weight > 0")
        difficulties = [b.difficulty for b in self.thinking_budgets]
        if len(set(difficulties)) != len(difficulties):
            raise ValueError("spec.thinkingBudgets: one entry per difficulty")
        return self

    def _check_clusters(self) -> None:
        clusters = [c.name for c in self.query_clusters]
        if len(set(clusters)) != len(clusters):
            raise ValueError(f"spec.queryClusters: names must be unique; got {clusters}")
        require_unique(
            "spec.capabilityProfiles",
            "target/cluster",
            [f"{p.target}/{p.cluster}" for p in self.capability_profiles],
        )
        for profile in self.capability_profiles:
            if profile.cluster not in clusters:
                raise ValueError(
                    f"spec.capabilityProfiles.cluster: '{profile.cluster}' is not one of "
                    f"spec.queryClusters {clusters}"
                )

    def _check_costs(self) -> None:
        unpriced = [t.name for t in self.targets if t.cost_per_1k_tokens is None]
        if not unpriced:
            return
        if self.strategy is Strategy.COST_OF_PASS:
            raise ValueError(
                f"spec.targets.costPer1kTokens is required with strategy CostOfPass; "
                f"missing on {unpriced}"
            )
        if self.objectives.max_cost_per_1k_tokens is not None:
            raise ValueError(
                f"spec.targets.costPer1kTokens is required with "
                f"objectives.maxCostPer1kTokens; missing on {unpriced}"
            )


class LearnedProfile(StatusModel):
    """Feedback outcomes of one target on one query cluster ('' without clusters)."""

    target: str = Field(max_length=63, description="A target of spec.targets.")
    cluster: str = Field(default="", max_length=63, description="A spec.queryClusters name.")
    trials: int = Field(default=0, ge=0, description="Answers rated.")
    successes: int = Field(default=0, ge=0, description="Answers rated correct.")


class TargetObservation(StatusModel):
    """What the router measured of one target."""

    name: str = Field(max_length=63, description="A target of spec.targets.")
    requests: int = Field(default=0, ge=0, description="Requests answered.")
    healthy: bool = Field(default=True, description="False while the target is failing.")
    ttft_ms: float | None = Field(default=None, ge=0, description="Mean time to first token.")
    quality: float | None = Field(default=None, ge=0, le=1, description="From feedback.")


class RoutingPolicyStatus(BaseStatus):
    """What the operator observed of the policy."""

    endpoint: str = Field(default="", max_length=2048, description="Where to send requests.")
    decisions: dict[str, int] = Field(
        default_factory=dict, max_length=32, description="Requests routed, by target."
    )
    observed_quality: float | None = Field(
        default=None, ge=0, le=1, description="Measured success rate of routed requests."
    )
    observed_cost_per_1k_tokens: Money | None = Field(
        default=None,
        alias="observedCostPer1kTokens",
        description="Measured cost of 1000 tokens of routed requests.",
    )
    ready_targets: int = Field(default=0, ge=0, description="Targets whose pool is Ready.")
    targets: list[TargetObservation] = Field(
        default_factory=list,
        max_length=32,
        description="Per target, as the router sees it.",
        json_schema_extra=list_map("name"),
    )
    profiles: list[LearnedProfile] = Field(
        default_factory=list,
        max_length=1056,
        description="Feedback by target and cluster; a restarted router resumes from it.",
    )
    feedback: int = Field(default=0, ge=0, description="Outcomes reported to the router.")
    workload: str = Field(default="", max_length=253, description="Name of the router workload.")
