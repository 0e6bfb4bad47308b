"""The engine interface every ModelPool replica engine implements.

The torch engine in this package and a vLLM-backed engine share this contract so the
Ray Serve deployment, the router and the migration coordinator never depend on which
engine runs a replica.

Protocol, in the order a replica uses it:

* ``add_request`` queues a request; ``step`` advances every running request by exactly
  one token (continuous batching: requests join and leave between steps) and returns the
  new :class:`TokenEvent` objects. ``stream`` is the per-request view of the same events.
* ``load`` reports what a scheduler needs to place and migrate requests.
* Live migration (after Llumnix) is staged so that downtime does not grow with the
  sequence. While the request keeps decoding on the source, ``export_kv_blocks`` copies
  the KV blocks that are already full (full blocks never change again) and the target
  writes them into its pool with ``import_kv_blocks``, possibly in several rounds.
  ``export_request`` then stops the request and returns only the blocks not yet staged,
  together with everything else needed to continue it, and ``import_request`` on the
  target completes the import: the request continues with exactly the tokens it would
  have produced on the source. Calling the migration off is ``abort`` on the target.
* A :class:`RequestState` without KV (``kv is None``) is resumed by recomputation:
  the target re-prefills prompt and tokens so far. Replica-death recovery and engines that
  cannot export KV (vLLM) use this path; sampling stays identical because the random
  stream of a request is a pure function of its seed and the token index.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint on the output's form, enforced token by token while decoding.

    ``json_object`` admits any JSON object; ``json_schema`` admits JSON valid under
    ``schema`` (JSON text). The constraint is a pure function of the tokens generated so
    far, so a migrated or recovered request rebuilds it by replaying its output.
    """

    kind: Literal["json_object", "json_schema"]
    schema: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "json_schema") != (self.schema is not None):
            raise ValueError("grammar: json_schema needs a schema, json_object takes none")


MAX_LOGPROBS = 20
"""Most alternatives per token a request may ask for, as the OpenAI API allows."""


@dataclass(frozen=True)
class SamplingParams:
    """How a request decodes; validated on construction so engines never see bad values.

    ``temperature == 0`` is greedy decoding. ``seed`` fixes the random stream of a sampled
    request; engines replace ``None`` with a fresh seed they record in the request state,
    so a migrated request still continues identically. ``logprobs`` asks for the chosen
    token's log-probability plus that many most likely alternatives (``None``: none);
    ``prompt_logprobs`` for those of the prompt tokens too. Penalties subtract
    ``presence_penalty`` once and ``frequency_penalty`` per occurrence from the logits of
    tokens already generated, as OpenAI defines them. ``adapter`` names the LoRA adapter
    that decodes the request on top of the base model (``None``: the base model).
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    grammar: GrammarSpec | None = None
    adapter: str | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite value >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")

    @property
    def penalised(self) -> bool:
        """Whether any repetition penalty applies."""
        return bool(self.presence_penalty or self.frequency_penalty)

    def seeded(self) -> SamplingParams:
        """These params with a seed fixed now, so a request's random stream survives
        migration and recovery: it is a pure function of the seed and the token index."""
        return self if self.seed is not None else replace(self, seed=secrets.randbits(63))


@dataclass(frozen=True)
class TokenLogprob:
    """A token and its log-probability under the model (before penalties or grammar)."""

    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one request; ``index`` counts output tokens from zero."""

    request_id: str
    token_id: int
    index: int
    finish_reason: FinishReason | None = None
    logprob: float | None = None
    """The token's log-probability, when the request asked for ``logprobs``."""
    top_logprobs: tuple[TokenLogprob, ...] = ()
    """The ``logprobs`` most likely tokens at this position, most likely first."""
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    """On the first event of a request that asked for them: one entry per prompt token,
    ``None`` for the first (nothing precedes it)."""

    @property
    def finished(self) -> bool:
        """Whether this is the request's last token."""
        return self.finish_reason is not None


@dataclass(frozen=True)
class EngineLoad:
    """Occupancy a scheduler uses for placement, autoscaling and migration decisions."""

    running: int
    waiting: int
    blocks_used: int
    blocks_free: int
    block_size: int


@dataclass(frozen=True)
class KVChunk:
    """Consecutive KV blocks of one request, starting at block index ``first_block``.

    ``data`` has shape ``[layers, 2 (key, value), blocks, block_size, heads, head_dim]``.
    """

    first_block: int
    data: torch.Tensor

    @property
    def num_blocks(self) -> int:
        """How many blocks the chunk holds."""
        return int(self.data.shape[2])

    @property
    def end_block(self) -> int:
        """The block index right after the chunk: where the next stage starts."""
        return self.first_block + self.num_blocks


@dataclass(frozen=True)
class RequestState:
    """Everything needed to continue a request on another engine.

    ``num_cached_tokens`` tokens of ``prompt_token_ids + output_token_ids`` have KV;
    ``kv`` holds the blocks from ``kv.first_block`` on (earlier blocks travel as staged
    :class:`KVChunk` objects), or is ``None`` to resume by recomputation.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    params: SamplingParams
    priority: int
    num_cached_tokens: int
    kv: KVChunk | None

    def without_kv(self) -> RequestState:
        """This state for the recomputation path: tokens and sampling state, no KV."""
        return RequestState(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            output_token_ids=self.output_token_ids,
            params=self.params,
            priority=self.priority,
            num_cached_tokens=0,
            kv=None,
        )


@runtime_checkable
class ServingEngine(Protocol):
    """A replica's inference engine; see the module docstring for the protocol."""

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        priority: int = 0,
    ) -> None:
        """Queue a request; higher ``priority`` is admitted first and preempted last."""
        ...

    def step(self) -> list[TokenEvent]:
        """Advance every running request by one token and return the new tokens."""
        ...

    def stream(self, request_id: str) -> Iterator[TokenEvent]:
        """Yield the tokens of one request as they are produced, driving ``step``."""
        ...

    def abort(self, request_id: str) -> None:
        """Drop a request and release its KV blocks."""
        ...

    def load(self) -> EngineLoad:
        """Report running and waiting requests and KV block usage."""
        ...

    def export_kv_blocks(self, request_id: str, from_block: int = 0) -> KVChunk:
        """Copy the request's full KV blocks from ``from_block`` on; it keeps running."""
        ...

    def export_request(self, request_id: str, from_block: int = 0) -> RequestState:
        """Stop the request and return its state with the KV blocks from ``from_block``."""
        ...

    def import_kv_blocks(self, request_id: str, chunk: KVChunk) -> None:
        """Write a staged chunk into this engine's pool ahead of ``import_request``."""
        ...

    def import_request(self, state: RequestState, kv_chunks: Sequence[KVChunk] = ()) -> None:
        """Continue an exported request here: staged blocks, then ``kv_chunks``, then
        ``state.kv`` form its KV; without KV it is resumed by recomputation."""
        ...


class TokenStash:
    """Events ``stream`` produced for other requests while it drove an engine.

    ``stream`` advances the whole batch, so it sees every request's tokens; the ones not
    its own wait here and come out of the next ``step``, so each event is delivered once.
    """

    def __init__(self) -> None:
        self._events: list[TokenEvent] = []

    def step(self, advance: Callable[[], list[TokenEvent]]) -> list[TokenEvent]:
        """The stashed events, then those of one more ``advance``."""
        events, self._events = [*self._events, *advance()], []
        return events

    def stream(
        self, request_id: str, advance: Callable[[], list[TokenEvent]], live: Callable[[], bool]
    ) -> Iterator[TokenEvent]:
        """``request_id``'s events, advancing the engine while ``live()`` says it runs."""
        while True:
            mine = [event for event in self._events if event.request_id == request_id]
            self._events = [event for event in self._events if event.request_id != request_id]
            yield from mine
            if not live():
                return
            self._events.extend(advance())
