"""The engine-side record of one live request."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelfleet.serving.interface import SamplingParams


@dataclass(eq=False)
class LiveRequest:
    """Tokens, sampling parameters and KV ownership of a request inside an engine.

    Whenever it holds KV, ``num_cached`` is ``len(tokens) - 1``: the newest output token is
    the input of the next decode step. A waiting request holds KV only when it was
    imported with KV; a preempted one holds none and is resumed by recomputation.
    """

    request_id: str
    prompt: tuple[int, ...]
    output: list[int]
    params: SamplingParams
    priority: int
    arrival: int
    block_table: list[int] = field(default_factory=list)
    num_cached: int = 0

    @property
    def tokens(self) -> list[int]:
        """Prompt followed by the output so far."""
        return [*self.prompt, *self.output]

    @property
    def length(self) -> int:
        """Number of prompt and output tokens."""
        return len(self.prompt) + len(self.output)

    def admission_order(self) -> tuple[int, int]:
        """Sort key: higher priority first, then first come first served."""
        return (-self.priority, self.arrival)
