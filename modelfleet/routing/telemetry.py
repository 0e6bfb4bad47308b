"""What the router measures of each target and of its own routing: latency, tokens,
health, decisions, cost and feedback."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

SMOOTHING = 0.2
"""Weight of the newest sample in the running means: recent enough to follow a pool that
slows down, smooth enough that one slow answer does not reroute everything."""
FAILURE_COOLDOWN_S = 10.0
"""How long a target that failed stays out of first choice before it is tried again."""
COST_QUANTUM = Decimal("1e-9")
"""The finest money the status reports (its decimal strings carry 9 fractional digits)."""


def smooth(previous: float | None, sample: float) -> float:
    """An exponentially weighted running mean; the first sample starts it."""
    return sample if previous is None else previous + SMOOTHING * (sample - previous)


@dataclass
class TargetTelemetry:
    """Running means and health of one target."""

    requests: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens: float | None = None
    failures: int = 0
    failed_until: float = 0.0
    trials: int = 0
    successes: int = 0

    def record_answer(self, latency_ms: float, tokens: int, ttft_ms: float | None) -> None:
        self.requests += 1
        self.latency_ms = smooth(self.latency_ms, latency_ms)
        self.tokens = smooth(self.tokens, float(tokens))
        if ttft_ms is not None:
            self.ttft_ms = smooth(self.ttft_ms, ttft_ms)

    def record_failure(self, now: float) -> None:
        self.failures += 1
        self.failed_until = now + FAILURE_COOLDOWN_S

    def healthy(self, now: float) -> bool:
        return now >= self.failed_until

    def record_outcome(self, correct: bool) -> None:
        self.trials += 1
        self.successes += int(correct)

    def report(self, name: str, now: float) -> dict[str, object]:
        """The target's line in the policy's status (``TargetObservation``)."""
        row: dict[str, object] = {
            "name": name,
            "requests": self.requests,
            "healthy": self.healthy(now),
        }
        if self.ttft_ms is not None:
            row["ttftMs"] = round(self.ttft_ms, 1)
        if self.trials:
            row["quality"] = round(self.successes / self.trials, 4)
        return row


@dataclass
class Ledger:
    """What routed requests cost and how often they were right, over the router's life.
    Money is kept in decimals, so a long-running router's total does not drift."""

    decisions: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    cost: Decimal = Decimal(0)
    trials: int = 0
    successes: int = 0

    def record_spend(self, tokens: int, cost_per_1k: Decimal | None) -> None:
        """Tokens a target processed, answered or not (a cascade pays every stage)."""
        self.tokens += tokens
        self.cost += (cost_per_1k or Decimal(0)) * tokens / 1000

    def record_decision(self, target: str) -> None:
        self.decisions[target] = self.decisions.get(target, 0) + 1

    def record_outcome(self, correct: bool) -> None:
        self.trials += 1
        self.successes += int(correct)

    def quality(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    def cost_per_1k_tokens(self) -> Decimal | None:
        """The mean cost of 1000 routed tokens, to the status's precision."""
        if not self.tokens:
            return None
        return (1000 * self.cost / self.tokens).quantize(COST_QUANTUM)
