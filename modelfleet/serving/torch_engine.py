"""The CPU/torch implementation of :class:`~modelfleet.serving.interface.ServingEngine`.

It runs a :class:`~modelfleet.serving.model.Decoder` over a paged KV cache with
continuous batching: every ``step`` admits waiting requests while KV blocks allow,
decodes all running requests together in one batched forward, and prefills at most
``prefill_chunk_size`` prompt tokens (chunked prefill), so a long prompt arriving delays
each decode step by one chunk rather than by its whole prefill. Requests may each use
their own LoRA adapter, repetition penalties, ``response_format`` grammar and logprobs.
When a running request needs a block and none is free, the least important running
request (lowest priority, latest arrival) is preempted back to the queue and later
resumed by recomputation, so running out of blocks delays requests but never fails them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from modelfleet.serving.grammar import GrammarState, GrammarVocabulary
from modelfleet.serving.interface import (
    EngineLoad,
    FinishReason,
    KVChunk,
    RequestState,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    TokenStash,
)
from modelfleet.serving.kvcache import BlockAllocator, KVPool, OutOfBlocksError
from modelfleet.serving.model import Decoder
from modelfleet.serving.paged_attention import PagedAttention
from modelfleet.serving.request import LiveRequest
from modelfleet.serving.sampling import apply_penalties, sample_token, token_logprobs
from modelfleet.serving.validation import check_from_block, check_tokens


@dataclass(frozen=True)
class EngineConfig:
    """KV pool size and batching limits of one engine instance.

    ``prefill_chunk_size`` is the most prompt tokens one step prefills (over all
    prefilling requests), which bounds how long a long prompt stalls the decode batch.
    """

    num_blocks: int = 256
    block_size: int = 16
    max_running: int = 32
    prefill_chunk_size: int = 128

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_running", "prefill_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class TorchEngine:
    """Continuous-batching engine over a paged KV cache; see the module docstring."""

    def __init__(
        self,
        model: Decoder,
        config: EngineConfig | None = None,
        vocabulary: GrammarVocabulary | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.model = model
        self._vocabulary = vocabulary
        model_config = model.config
        capacity = self.config.num_blocks * self.config.block_size
        if capacity < model_config.max_positions:
            raise ValueError(
                f"num_blocks * block_size = {capacity} must hold one request of "
                f"max_positions = {model_config.max_positions} tokens, or it could never finish"
            )
        self._allocator = BlockAllocator(self.config.num_blocks)
        self._pool = KVPool(
            model_config.num_layers,
            self.config.num_blocks,
            self.config.block_size,
            model_config.kv_heads,
            model_config.head_dim,
        )
        self._running: dict[str, LiveRequest] = {}
        self._waiting: dict[str, LiveRequest] = {}
        self._staged: dict[str, list[int]] = {}
        self._stash = TokenStash()
        self._arrivals = itertools.count()
        self._generator = torch.Generator()

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        priority: int = 0,
    ) -> None:
        """Queue a request; it is prefilled by the first ``step`` with room for it."""
        self._check_new_id(request_id)
        self._check_unstaged(request_id)
        prompt = tuple(int(token) for token in prompt_token_ids)
        check_tokens(self.model.config, prompt, (), params)
        self._check_adapter(params)
        request = LiveRequest(
            request_id, prompt, [], params.seeded(), priority, next(self._arrivals)
        )
        request.grammar = self._constrain(params)
        self._waiting[request_id] = request

    def step(self) -> list[TokenEvent]:
        """Advance every running request by one token.

        Also returns events that ``stream`` produced for other requests while it drove
        the engine, so each event is delivered exactly once.
        """
        return self._stash.step(self._advance)

    def stream(self, request_id: str) -> Iterator[TokenEvent]:
        """Yield ``request_id``'s tokens until it finishes, is aborted or is exported."""
        self._get(request_id)
        return self._stash.stream(
            request_id,
            self._advance,
            lambda: request_id in self._running or request_id in self._waiting,
        )

    def abort(self, request_id: str) -> None:
        """Drop a request, or the staged KV of an unfinished import, and free its blocks."""
        if request_id in self._staged:
            self._release_staged(request_id)
        else:
            self._remove(self._get(request_id))

    def load(self) -> EngineLoad:
        """Running and waiting requests and KV block usage."""
        return EngineLoad(
            running=len(self._running),
            waiting=len(self._waiting),
            blocks_used=self._allocator.num_used,
            blocks_free=self._allocator.num_free,
            block_size=self.config.block_size,
        )

    def block_table(self, request_id: str) -> tuple[int, ...]:
        """The pool blocks a request (or its staged import) owns, in token order."""
        if request_id in self._staged:
            return tuple(self._staged[request_id])
        return tuple(self._get(request_id).block_table)

    def export_kv_blocks(self, request_id: str, from_block: int = 0) -> KVChunk:
        """Copy the request's full blocks from ``from_block`` on while it keeps decoding.

        Full blocks never change again, so the copy stays valid however many tokens the
        request generates before ``export_request``.
        """
        request = self._get(request_id)
        check_from_block(from_block)
        full = request.num_cached // self.config.block_size
        return KVChunk(from_block, self._pool.copy_out(request.block_table[from_block:full]))

    def export_request(self, request_id: str, from_block: int = 0) -> RequestState:
        """Stop the request and return its state with the KV blocks from ``from_block`` on.

        Only the blocks not staged by ``export_kv_blocks`` are copied here, which is what
        keeps migration downtime independent of the sequence length. A request still
        prefilling its prompt (chunked prefill) is exported without KV: the target
        prefills it again, as after a preemption.
        """
        request = self._get(request_id)
        check_from_block(from_block)
        kv = None
        if request.num_cached and request.pending == 1:
            end = self._blocks_for(request.num_cached)
            if from_block > end:
                raise ValueError(f"from_block {from_block} is past the request's {end} blocks")
            kv = KVChunk(from_block, self._pool.copy_out(request.block_table[from_block:end]))
        self._remove(request)
        return RequestState(
            request_id=request_id,
            prompt_token_ids=request.prompt,
            output_token_ids=tuple(request.output),
            params=request.params,
            priority=request.priority,
            num_cached_tokens=request.num_cached if kv is not None else 0,
            kv=kv,
        )

    def import_kv_blocks(self, request_id: str, chunk: KVChunk) -> None:
        """Write a staged chunk of a request that is still decoding elsewhere into the pool.

        Chunks must arrive in block order. Staging reserves the blocks right away, so the
        final ``import_request`` only copies the last few; raises
        :class:`~modelfleet.serving.kvcache.OutOfBlocksError` when they do not fit, and
        ``abort(request_id)`` releases them if the migration is called off.
        """
        self._check_new_id(request_id)
        table = self._staged.get(request_id, [])
        if chunk.num_blocks and chunk.first_block != len(table):
            raise ValueError(
                f"kv_chunks must arrive in order: chunk starts at block {chunk.first_block}, "
                f"{len(table)} blocks are staged"
            )
        shape = (*chunk.data.shape[:2], *chunk.data.shape[3:])
        if shape != self._pool.block_shape:
            raise ValueError(
                f"kv_chunks block shape {shape} does not match this engine's "
                f"{self._pool.block_shape}"
            )
        blocks = self._allocator.allocate(chunk.num_blocks)
        self._pool.copy_in(blocks, chunk.data)
        self._staged[request_id] = [*table, *blocks]

    def import_request(self, state: RequestState, kv_chunks: Sequence[KVChunk] = ()) -> None:
        """Continue an exported request here.

        With ``state.kv`` the blocks staged by ``import_kv_blocks``, then ``kv_chunks``,
        then ``state.kv`` must cover the request's blocks in order; the request then waits
        with its KV for a place in the batch and decodes on. If the KV does not fit, or
        ``state.kv`` is ``None``, staged blocks are released and the request is resumed by
        recomputation instead, so an accepted import is never lost. A rejected import
        (``ValueError``) releases the staged blocks too.
        """
        try:
            request = self._restore(state, kv_chunks)
        except ValueError:
            self._release_staged(state.request_id)
            raise
        self._waiting[state.request_id] = request

    def _restore(self, state: RequestState, kv_chunks: Sequence[KVChunk]) -> LiveRequest:
        """The engine record of an imported request, with its KV in the pool if it fits."""
        self._check_new_id(state.request_id)
        check_tokens(
            self.model.config, state.prompt_token_ids, state.output_token_ids, state.params
        )
        self._check_adapter(state.params)
        request = LiveRequest(
            state.request_id,
            tuple(state.prompt_token_ids),
            list(state.output_token_ids),
            state.params.seeded(),
            state.priority,
            next(self._arrivals),
        )
        request.grammar = self._constrain(state.params)
        if request.grammar is not None:
            request.grammar.replay(request.output)
        if state.kv is not None:
            if state.num_cached_tokens != request.length - 1:
                raise ValueError(
                    f"num_cached_tokens must be {request.length - 1} (all tokens but the "
                    f"newest), got {state.num_cached_tokens}"
                )
            request.block_table = self._stage_all(state, [*kv_chunks, state.kv])
            request.num_cached = state.num_cached_tokens if request.block_table else 0
        else:
            self._release_staged(state.request_id)
        return request

    def _stage_all(self, state: RequestState, chunks: Sequence[KVChunk]) -> list[int]:
        """Stage the remaining chunks; the request's block table, or ``[]`` if out of blocks."""
        try:
            for chunk in chunks:
                self.import_kv_blocks(state.request_id, chunk)
        except OutOfBlocksError:
            self._release_staged(state.request_id)
            return []
        table = self._staged.pop(state.request_id, [])
        needed = self._blocks_for(state.num_cached_tokens)
        if len(table) != needed:
            self._allocator.free(table)
            raise ValueError(f"kv_chunks cover {len(table)} blocks, the request needs {needed}")
        return table

    def _advance(self) -> list[TokenEvent]:
        """One step: admit, decode every request that has its prompt cached, then spend
        the step's prefill budget on the prefilling requests in admission order."""
        with torch.inference_mode():
            self._admit()
            running = sorted(self._running.values(), key=LiveRequest.admission_order)
            events = self._decode([r for r in running if r.pending == 1])
            budget = self.config.prefill_chunk_size
            for request in (r for r in running if r.pending > 1):
                if budget == 0 or request.request_id not in self._running:
                    continue
                chunk = min(budget, request.pending)
                budget -= chunk
                event = self._prefill(request, chunk)
                if event is not None:
                    events.append(event)
            return events

    def _admit(self) -> None:
        """Move waiting requests into the batch in priority order while blocks allow.

        A request without KV gets blocks for all its tokens now and is prefilled over the
        next steps; an imported request already holds its KV and decodes at once.
        """
        for request in sorted(self._waiting.values(), key=LiveRequest.admission_order):
            needed = 0 if request.num_cached else self._blocks_for(request.length)
            if len(self._running) >= self.config.max_running or needed > self._allocator.num_free:
                break
            del self._waiting[request.request_id]
            self._running[request.request_id] = request
            if not request.num_cached:
                request.block_table = self._allocator.allocate(needed)

    def _prefill(self, request: LiveRequest, chunk: int) -> TokenEvent | None:
        """Cache the next ``chunk`` uncached tokens; the chunk that completes the prompt
        samples the request's next token."""
        tokens = request.tokens
        start, end = request.num_cached, request.num_cached + chunk
        positions = torch.arange(start, end).unsqueeze(0)
        attend = PagedAttention(
            self._pool, [request.block_table[: self._blocks_for(end)]], positions
        )
        self.model.lora.route([request.params.adapter])
        hidden = self.model(torch.tensor([tokens[start:end]]), positions, attend)[0]
        request.num_cached = end
        if request.params.prompt_logprobs and not request.output:
            self._record_prompt_logprobs(request, hidden, start)
        if end < len(tokens):
            return None
        return self._emit(request, self.model.logits(hidden[-1]))

    def _record_prompt_logprobs(
        self, request: LiveRequest, hidden: torch.Tensor, start: int
    ) -> None:
        """Log-probabilities of the prompt tokens that this chunk's positions predict."""
        if start == 0:
            request.prompt_logprobs = [None]
        targets = request.prompt[start + 1 : start + 1 + hidden.shape[0]]
        if not targets:
            return
        logprobs = torch.log_softmax(self.model.logits(hidden[: len(targets)]).float(), dim=-1)
        picked = logprobs.gather(1, torch.tensor(targets).unsqueeze(1))[:, 0]
        request.prompt_logprobs.extend(
            TokenLogprob(token, float(lp)) for token, lp in zip(targets, picked, strict=True)
        )

    def _decode(self, requests: list[LiveRequest]) -> list[TokenEvent]:
        """One batched forward that feeds each request its newest token."""
        batch = self._reserve_decode_slots(requests)
        if not batch:
            return []
        positions = torch.tensor([[request.num_cached] for request in batch])
        attend = PagedAttention(self._pool, [request.block_table for request in batch], positions)
        token_ids = torch.tensor([[request.tokens[request.num_cached]] for request in batch])
        self.model.lora.route([request.params.adapter for request in batch])
        logits = self.model.logits(self.model(token_ids, positions, attend)[:, 0])
        events = []
        for request, row in zip(batch, logits, strict=True):
            request.num_cached += 1
            events.append(self._emit(request, row))
        return events

    def _reserve_decode_slots(self, requests: list[LiveRequest]) -> list[LiveRequest]:
        """Give each request room for one more token, preempting when blocks run out.

        The most important requests are served first; the victim is always the least
        important running request, which may be the requester itself.
        """
        for request in sorted(requests, key=LiveRequest.admission_order):
            if request.num_cached < len(request.block_table) * self.config.block_size:
                continue
            while self._allocator.num_free == 0 and request.request_id in self._running:
                self._preempt(max(self._running.values(), key=LiveRequest.admission_order))
            if request.request_id in self._running:
                request.block_table.extend(self._allocator.allocate(1))
        return [request for request in requests if request.request_id in self._running]

    def _preempt(self, request: LiveRequest) -> None:
        """Free a running request's KV and requeue it to be resumed by recomputation."""
        self._remove(request)
        request.num_cached = 0
        request.prompt_logprobs = []
        self._waiting[request.request_id] = request

    def _emit(self, request: LiveRequest, logits: torch.Tensor) -> TokenEvent:
        """Choose the request's next token, record it, and finish the request if done.

        Penalties and the grammar shape what is sampled; logprobs report the model's own
        distribution, as OpenAI and vLLM report them.
        """
        params, index = request.params, len(request.output)
        shaped = apply_penalties(logits, request.output, params)
        if request.grammar is not None:
            shaped = request.grammar.mask(shaped)
        token = sample_token(shaped, params, index, self._generator)
        if request.grammar is not None:
            request.grammar.accept(token)
        request.output.append(token)
        logprob: float | None = None
        top: tuple[TokenLogprob, ...] = ()
        if params.logprobs is not None:
            logprob, top = token_logprobs(logits, token, params.logprobs)
        prompt_logprobs = None
        if params.prompt_logprobs and index == 0:
            prompt_logprobs = tuple(request.prompt_logprobs)
        reason = self._finish_reason(request, token)
        if reason is not None:
            self._remove(request)
        return TokenEvent(request.request_id, token, index, reason, logprob, top, prompt_logprobs)

    def _finish_reason(self, request: LiveRequest, token: int) -> FinishReason | None:
        if token in request.params.stop_token_ids:
            return "stop"
        if request.grammar is not None and request.grammar.terminated:
            return "stop"
        at_limit = len(request.output) >= request.params.max_tokens
        if at_limit or request.length >= self.model.config.max_positions:
            return "length"
        return None

    def _remove(self, request: LiveRequest) -> None:
        """Take the request out of the engine and free its blocks."""
        self._running.pop(request.request_id, None)
        self._waiting.pop(request.request_id, None)
        self._allocator.free(request.block_table)
        request.block_table = []

    def _get(self, request_id: str) -> LiveRequest:
        request = self._running.get(request_id) or self._waiting.get(request_id)
        if request is None:
            raise ValueError(f"request_id {request_id!r} is unknown to this engine")
        return request

    def _release_staged(self, request_id: str) -> None:
        self._allocator.free(self._staged.pop(request_id, []))

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.config.block_size)

    def _check_new_id(self, request_id: str) -> None:
        if not request_id:
            raise ValueError("request_id must be a non-empty string")
        if request_id in self._running or request_id in self._waiting:
            raise ValueError(f"request_id {request_id!r} already exists in this engine")

    def _check_adapter(self, params: SamplingParams) -> None:
        if params.adapter is not None and params.adapter not in self.model.adapter_names:
            raise ValueError(
                f"model: adapter {params.adapter!r} is not served here; served adapters: "
                f"{sorted(self.model.adapter_names)}"
            )

    def _constrain(self, params: SamplingParams) -> GrammarState | None:
        """The request's grammar matcher, or ``None`` when it has no ``response_format``."""
        if params.grammar is None:
            return None
        if self._vocabulary is None:
            raise ValueError("response_format: this engine has no vocabulary to constrain with")
        return self._vocabulary.constrain(params.grammar)

    def _check_unstaged(self, request_id: str) -> None:
        if request_id in self._staged:
            raise ValueError(f"request_id {request_id!r} has KV staged for an import")
