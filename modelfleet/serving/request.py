"""The engine-side record of one live request."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelfleet.serving.grammar import GrammarState
from modelfleet.serving.interface import SamplingParams, TokenLogprob


@dataclass(eq=False)
class LiveRequest:
    """Tokens, sampling parameters and KV ownership of a request inside an engine.

    ``num_cached`` tokens have KV. While ``pending > 1`` the request is prefilling (in
    chunks, between decode steps); once ``pending == 1`` the newest token is the input of
    the next decode step. A waiting request holds KV only when it was imported with KV; a
    preempted one holds none and is resumed by recomputation. ``grammar`` is its
    ``response_format`` matcher, ``prompt_logprobs`` what prefill found so far for a
    request that asked for them.
    """

    request_id: str
    prompt: tuple[int, ...]
    output: list[int]
    params: SamplingParams
    priority: int
    arrival: int
    block_table: list[int] = field(default_factory=list)
    num_cached: int = 0
    grammar: GrammarState | None = None
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        """Prompt followed by the output so far."""
        return [*self.prompt, *self.output]

    @property
    def length(self) -> int:
        """Number of prompt and output tokens."""
        return len(self.prompt) + len(self.output)

    @property
    def pending(self) -> int:
        """Tokens not yet in the KV cache; the next forward feeds them."""
        return self.length - self.num_cached

    def admission_order(self) -> tuple[int, int]:
        """Sort key: higher priority first, then first come first served."""
        return (-self.priority, self.arrival)
