"""One engine replica as an asyncio Ray actor.

Ray Serve replicas cannot be addressed one by one, but migration and recovery must
name the replica a request lives on. Engine replicas are therefore plain named Ray
actors placed by the pool manager (after Llumnix's llumlets). Each wraps one engine
behind :class:`~modelfleet.serving.interface.ServingEngine` and runs a background loop
that calls ``step()`` whenever there is work; the manager collects the token events
with a long ``poll``, one call per replica rather than per request. Between two steps
the actor serves the migration calls, so KV staging overlaps decoding.

A replica outlives the ingress that created it (it is detached), so more than one
manager may use it: the next ingress after a crash, or the new and the old ingress
while Serve redeploys. Every request therefore has an *owner*, the manager that placed
it, and each owner polls only its own events. An owner that has not polled for
``orphan_after_s`` is gone (its process died): its requests are aborted, since no
client can read their tokens any more, and their KV is freed.
"""

from __future__ import annotations

import asyncio
import hashlib
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

    def config_hash(self) -> str:
        """A digest of the spec, equal in every process for equal specs (the spec is
        frozen dataclasses of plain values, whose ``repr`` is deterministic); an ingress
        adopts a running replica only when the digests match."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReplicaInfo:
    """What ``start`` reports: the spec digest the replica was built from, its load,
    whether it was already running (adopted) rather than started by this call, and
    whether a manager was draining it."""

    config_hash: str
    load: EngineLoad
    already_running: bool
    draining: bool


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
    """The actor body: an engine, its step loop and one outbox of token events per owner."""

    def __init__(self, spec: EngineSpec, orphan_after_s: float = 10.0, threads: int = 1) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        self._config_hash = spec.config_hash()
        self._engine = build_engine(spec)
        self._orphan_after_s = orphan_after_s
        self._owners: dict[str, str] = {}
        """Owner of each request this replica holds (running, waiting or staged)."""
        self._outboxes: dict[str, list[TokenEvent]] = {}
        self._has_events: dict[str, asyncio.Event] = {}
        self._seen: dict[str, float] = {}
        """When each owner last called in, on the monotonic clock."""
        self._has_work = asyncio.Event()
        self._draining = False
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> ReplicaInfo:
        """Start the step loop if it is not running; returns once the replica can serve."""
        already_running = self._loop is not None
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run())
        return ReplicaInfo(self._config_hash, self._engine.load(), already_running, self._draining)

    async def add(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        priority: int,
        owner: str = "",
    ) -> None:
        """Queue a new request (``ValueError`` for bad input, as the engine raises it)."""
        self._refuse_if_draining()
        self._engine.add_request(request_id, prompt, params, priority)
        self._own(request_id, owner)
        self._has_work.set()

    async def poll(self, timeout_s: float, owner: str = "") -> list[TokenEvent]:
        """Every event of ``owner``'s requests since its last poll, waiting up to
        ``timeout_s`` for the first one. Aborts the requests of owners gone silent."""
        self._seen[owner] = time.monotonic()
        self._abort_orphans()
        has_events = self._has_events.setdefault(owner, asyncio.Event())
        if not self._outboxes.get(owner):
            try:
                await asyncio.wait_for(has_events.wait(), timeout_s)
            except TimeoutError:
                return []
        has_events.clear()
        return self._outboxes.pop(owner, [])

    async def release(self, owner: str) -> int:
        """Abort every request of ``owner`` (a manager shutting down); returns how many."""
        mine = [request_id for request_id, o in self._owners.items() if o == owner]
        for request_id in mine:
            self._abort(request_id)
        self._forget_owner(owner)
        return len(mine)

    async def load(self) -> EngineLoad:
        """Running and waiting requests and KV blocks, for dispatch and migration."""
        return self._engine.load()

    async def abort(self, request_id: str) -> bool:
        """Drop a request or staged import; ``False`` if this replica does not hold it."""
        return self._abort(request_id)

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
        owner = self._owners.pop(request_id, "")
        outbox = self._outboxes.get(owner, [])
        mine = [event for event in outbox if event.request_id == request_id]
        self._outboxes[owner] = [event for event in outbox if event.request_id != request_id]
        return state, mine, Span(started, time.monotonic())

    async def import_kv_blocks(
        self, request_id: str, chunk: KVChunk, owner: str = ""
    ) -> tuple[int, int]:
        """Write a staged chunk of a request still decoding on another replica.

        Returns the chunk's ``(num_blocks, end_block)``, so the manager can pass the
        chunk from source to target by reference without fetching the tensor itself.
        """
        self._refuse_if_draining()
        self._engine.import_kv_blocks(request_id, chunk)
        self._own(request_id, owner)
        return chunk.num_blocks, chunk.end_block

    async def import_request(self, state: RequestState, owner: str = "") -> Span:
        """Continue a migrated request, or resume one by recomputation (``kv is None``);
        the span is when the import started and when the request was ready to decode."""
        started = time.monotonic()
        self._refuse_if_draining()
        self._engine.import_request(state)
        self._own(state.request_id, owner)
        self._has_work.set()
        return Span(started, time.monotonic())

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise ReplicaDrainingError("replica is draining")

    def _own(self, request_id: str, owner: str) -> None:
        self._owners[request_id] = owner
        self._seen.setdefault(owner, time.monotonic())

    def _abort(self, request_id: str) -> bool:
        self._owners.pop(request_id, None)
        try:
            self._engine.abort(request_id)
        except ValueError:
            return False
        return True

    def _forget_owner(self, owner: str) -> None:
        self._seen.pop(owner, None)
        self._outboxes.pop(owner, None)
        self._has_events.pop(owner, None)

    def _abort_orphans(self) -> None:
        """Abort the requests of owners that have not called in for ``orphan_after_s``."""
        cutoff = time.monotonic() - self._orphan_after_s
        for owner in [owner for owner, seen in self._seen.items() if seen < cutoff]:
            for request_id in [r for r, o in self._owners.items() if o == owner]:
                self._abort(request_id)
            self._forget_owner(owner)

    def _deliver(self, events: list[TokenEvent]) -> None:
        """Put each event in its owner's outbox; a finished request has no owner after."""
        for event in events:
            owner = self._owners.get(event.request_id)
            if owner is None:
                continue
            if event.finished:
                del self._owners[event.request_id]
            self._outboxes.setdefault(owner, []).append(event)
            self._has_events.setdefault(owner, asyncio.Event()).set()

    async def _run(self) -> None:
        """Step while requests are in the engine, yielding to other calls between steps."""
        while True:
            load = self._engine.load()
            if not (load.running or load.waiting):
                self._has_work.clear()
                await self._has_work.wait()
                continue
            self._deliver(self._engine.step())
            await asyncio.sleep(0)
