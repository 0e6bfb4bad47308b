"""SLO attainment of a pool: the share of recent requests that met both latency objectives.

A ModelPool states its objectives as p95 targets for time to first token and time per
output token. Attainment over a sliding window of finished requests is what the
status, the ``modelfleet_modelpool_slo_attainment_ratio`` series and the burn-rate alert
read: below 0.95 the pool misses its p95 objectives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from modelfleet.api.modelpool import Slo

WINDOW = 512
"""Finished requests attainment is computed over: recent enough to follow load changes."""


@dataclass(frozen=True)
class RequestTiming:
    """One finished request as its client saw it, from arrival at the endpoint."""

    ttft_s: float
    tpot_s: float

    def meets(self, slo: Slo) -> bool:
        return self.ttft_s * 1000 <= slo.ttft_p95_ms and self.tpot_s * 1000 <= slo.tpot_p95_ms


def time_per_output_token(ttft_s: float, e2e_s: float, tokens: int) -> float:
    """Decode time per token after the first; a one-token answer has no decode time."""
    return (e2e_s - ttft_s) / (tokens - 1) if tokens > 1 else 0.0


class SloWindow:
    """The last ``size`` finished requests' timings."""

    def __init__(self, size: int = WINDOW) -> None:
        self._timings: deque[RequestTiming] = deque(maxlen=size)

    def record(self, timing: RequestTiming) -> None:
        self._timings.append(timing)

    def attainment(self, slo: Slo) -> float | None:
        """Share of the window within both objectives; ``None`` before any request."""
        if not self._timings:
            return None
        return sum(timing.meets(slo) for timing in self._timings) / len(self._timings)
