"""One engine replica as an asyncio Ray actor.

Ray Serve replicas cannot be addressed one by one, but migration and recovery must
name the replica a request lives on. Engine replicas are therefore plain named Ray
actors owned by the pool manager (after Llumnix's llumlets). Each wraps one engine
behind :class:`~modelfleet.serving.interface.ServingEngine` and runs a background loop
that calls ``step()`` whenever there is work; the manager collects the token events
with a long ``poll``, one call per replica rather than per request. Between two steps
the actor serves the migration calls, so KV staging overlaps decoding.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from modelfleet.artifacts.fetch import materialize
from modelfleet.serving.catalog import CheckpointModel
from modelfleet.serving.checkpoint import load_decoder
from modelfleet.serving.grammar import GrammarVocabulary
from modelfleet.serving.interface import (
    EngineLoad,
    KVChunk,
    RequestState,
    SamplingParams,
    ServingEngine,
    TokenEvent,
)
from modelfleet.serving.lora import read_adapter
from modelfleet.serving.model import Decoder, ModelConfig
from modelfleet.serving.model_tokenizer import HfTokenizer
from modelfleet.serving.tokenizer import ByteTokenizer
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine
from modelfleet.serving.vllm_engine import VllmEngine, VllmModel


@dataclass(frozen=True)
class Span:
    """Start and end of work inside a replica, on the host's monotonic clock (shared by
    every process on the host, so spans from two replicas compare)."""

    started: float
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class ReplicaDrainingError(RuntimeError):
    """The replica is being drained and takes no new requests."""


@dataclass(frozen=True)
class EngineSpec:
    """What a replica builds its engine from; plain data so it travels to the actor.

    ``model`` chooses the engine: a :class:`VllmModel` runs on vLLM; a
    :class:`CheckpointModel` (a Hugging Face directory) or a builtin ``ModelConfig`` on
    the torch engine. ``engine`` holds the block size and batch limit both honour
    (the torch engine also its pool size), which the manager's view of a replica uses.
    """

    model: ModelConfig | CheckpointModel | VllmModel
    engine: EngineConfig

    def gpus(self) -> int:
        """GPUs the replica actor must reserve, so Ray exposes them to the engine."""
        return self.model.tensor_parallel if isinstance(self.model, VllmModel) else 0


def build_engine(spec: EngineSpec) -> ServingEngine:
    """The engine ``spec.model`` asks for, with its artifacts fetched to this node.

    Raises :class:`~modelfleet.artifacts.errors.ArtifactError` for a model or adapter
    that cannot be fetched, ``ValueError`` for one the engine cannot serve, and
    :class:`~modelfleet.serving.vllm_engine.VllmUnavailableError` for a vLLM model where
    vLLM or a CUDA device is missing; each names the spec field to change.
    """
    if isinstance(spec.model, VllmModel):
        return VllmEngine(localize_vllm_model(spec.model), spec.engine)
    if isinstance(spec.model, CheckpointModel):
        decoder, vocabulary = load_checkpoint(spec.model)
        return TorchEngine(decoder, spec.engine, vocabulary)
    config = spec.model
    vocabulary = GrammarVocabulary.from_bytes(config.vocab_size, (ByteTokenizer.EOS,))
    return TorchEngine(Decoder(config), spec.engine, vocabulary)


def load_checkpoint(model: CheckpointModel) -> tuple[Decoder, GrammarVocabulary]:
    """The checkpoint's decoder with its adapters attached, and its token vocabulary."""
    directory = materialize(model.uri, model.field)
    try:
        decoder = load_decoder(directory, model.max_model_len)
        adapters = [
            read_adapter(materialize(a.uri, a.field, "adapter"), a.name) for a in model.adapters
        ]
        decoder.load_adapters(adapters)
    except ValueError as error:
        raise ValueError(f"{model.field} {model.uri!r}: {error}") from error
    vocabulary = GrammarVocabulary.from_tokenizer_dir(
        directory, decoder.config.vocab_size, HfTokenizer.from_dir(directory).eos_token_ids
    )
    return decoder, vocabulary


def localize_vllm_model(model: VllmModel) -> VllmModel:
    """``model`` with artifact URIs (its own and its adapters') replaced by the local
    directories they are fetched to; Hub ids and local paths stay for vLLM to load."""
    local = model.model
    if "://" in local:
        local = str(materialize(local, f"{model.source}.uri"))
    adapters = tuple(
        (name, str(materialize(uri, f"{model.source}.adapters[{j}].uri", "adapter")))
        for j, (name, uri) in enumerate(model.adapters)
    )
    return replace(model, model=local, adapters=adapters)


class EngineReplica:
    """The actor body: an engine, its step loop and an outbox of token events."""

    def __init__(self, spec: EngineSpec, threads: int = 1) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        self._engine = build_engine(spec)
        self._outbox: list[TokenEvent] = []
        self._has_events = asyncio.Event()
        self._has_work = asyncio.Event()
        self._draining = False
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> EngineLoad:
        """Start the step loop; returns once the replica can serve."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run())
        return self._engine.load()

    async def add(
        self, request_id: str, prompt: Sequence[int], params: SamplingParams, priority: int
    ) -> None:
        """Queue a new request (``ValueError`` for bad input, as the engine raises it)."""
        self._refuse_if_draining()
        self._engine.add_request(request_id, prompt, params, priority)
        self._has_work.set()

    async def poll(self, timeout_s: float) -> list[TokenEvent]:
        """Every event since the last poll, waiting up to ``timeout_s`` for the first one."""
        if not self._outbox:
            try:
                await asyncio.wait_for(self._has_events.wait(), timeout_s)
            except TimeoutError:
                return []
        events, self._outbox = self._outbox, []
        self._has_events.clear()
        return events

    async def load(self) -> EngineLoad:
        """Running and waiting requests and KV blocks, for dispatch and migration."""
        return self._engine.load()

    async def abort(self, request_id: str) -> bool:
        """Drop a request or staged import; ``False`` if this replica does not hold it."""
        try:
            self._engine.abort(request_id)
        except ValueError:
            return False
        return True

    async def drain(self) -> None:
        """Take no new requests or imports; the manager migrates the running ones off."""
        self._draining = True

    async def export_kv_blocks(self, request_id: str, from_block: int) -> KVChunk:
        """Copy the request's full KV blocks from ``from_block`` on; it keeps decoding."""
        return self._engine.export_kv_blocks(request_id, from_block)

    async def export_request(
        self, request_id: str, from_block: int
    ) -> tuple[RequestState, list[TokenEvent], Span]:
        """Stop the request here and hand over its state and the unstaged KV blocks, with
        its events not yet polled: they carry what the state does not (logprobs).

        The span is when the request stopped (between two steps, so the step in flight
        when the call arrived still produced its token) and when the export finished.
        """
        started = time.monotonic()
        state = self._engine.export_request(request_id, from_block)
        mine = [event for event in self._outbox if event.request_id == request_id]
        self._outbox = [event for event in self._outbox if event.request_id != request_id]
        return state, mine, Span(started, time.monotonic())

    async def import_kv_blocks(self, request_id: str, chunk: KVChunk) -> tuple[int, int]:
        """Write a staged chunk of a request still decoding on another replica.

        Returns the chunk's ``(num_blocks, end_block)``, so the manager can pass the
        chunk from source to target by reference without fetching the tensor itself.
        """
        self._refuse_if_draining()
        self._engine.import_kv_blocks(request_id, chunk)
        return chunk.num_blocks, chunk.end_block

    async def import_request(self, state: RequestState) -> Span:
        """Continue a migrated request, or resume one by recomputation (``kv is None``);
        the span is when the import started and when the request was ready to decode."""
        started = time.monotonic()
        self._refuse_if_draining()
        self._engine.import_request(state)
        self._has_work.set()
        return Span(started, time.monotonic())

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise ReplicaDrainingError("replica is draining")

    async def _run(self) -> None:
        """Step while requests are in the engine, yielding to other calls between steps."""
        while True:
            load = self._engine.load()
            if not (load.running or load.waiting):
                self._has_work.clear()
                await self._has_work.wait()
                continue
            events = self._engine.step()
            if events:
                self._outbox.extend(events)
                self._has_events.set()
            await asyncio.sleep(0)
