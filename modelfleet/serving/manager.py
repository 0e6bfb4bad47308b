"""The global scheduler of one model's replicas: dispatch, live migration, recovery, scaling.

After Llumnix, the manager owns the engine replica actors and knows where every request
lives, which Ray Serve's router does not. It

* dispatches each request to a replica chosen by :mod:`~modelfleet.serving.dispatch`;
* collects token events with one long poll per replica and hands each request's events,
  in index order and exactly once, to that request's :class:`Stream`;
* rebalances with :func:`~modelfleet.serving.migration.plan_rebalance`, migrating in
  stages: full KV blocks are copied while the request decodes on, then a short
  stop-and-copy moves the rest; if the KV cannot be imported the request is resumed by
  recomputation;
* resumes the requests of a replica that died by recomputation from the prompt and the
  tokens the client already has; the seeded sampler continues identically;
* scales in place: new replicas join, surplus ones are drained (every request migrated
  off) before they are removed.

The replicas are detached actors named per pool, model and slot
(:mod:`~modelfleet.serving.replica_names`), so they outlive the ingress process. A
manager in a (re)started ingress adopts the replica it finds under each slot's name when
that replica was built from the same engine spec (same config hash), and replaces it
otherwise; replicas of its model in slots beyond the desired count are killed. Requests
that ran in the engines keep running while the ingress is down, but their clients'
connections lived in the dead ingress: Serve's proxy ends those responses mid-stream
(a streaming client sees its connection close before ``[DONE]``, which the OpenAI
client raises as ``APIConnectionError``; a non-streaming one gets an error status),
and the replicas abort those requests once the dead manager has not polled them for
``orphan_after_s``. Requests placed later are served by the adopted replicas without
any replica being restarted.

A request's tokens are accepted only at the next index, so events that reach the manager
twice (from a source before and a target after a migration) are dropped, and the client
stream stays continuous.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import RayActorError

from modelfleet.serving.dispatch import (
    DispatchPolicy,
    ReplicaView,
    choose_power_of_two,
    choose_replica,
    choose_round_robin,
    has_capacity,
)
from modelfleet.serving.interface import RequestState, SamplingParams, TokenEvent
from modelfleet.serving.kvcache import OutOfBlocksError
from modelfleet.serving.migration import Move, RequestView, plan_drain, plan_rebalance
from modelfleet.serving.replica import (
    EngineReplica,
    EngineSpec,
    ReplicaDrainingError,
    ReplicaInfo,
    Span,
)
from modelfleet.serving.replica_names import DEFAULT_NAMESPACE, model_replica_names, replica_name

log = logging.getLogger(__name__)

REPLACE_ATTEMPTS = 3
"""How often a manager replaces a stale replica in one slot before it gives up."""

_REMOTE_REPLICA: Any = ray.remote(EngineReplica)


class OverloadedError(RuntimeError):
    """The pool is at its queue bound; the client should retry later."""


class SupersededError(RuntimeError):
    """A replica slot holds a replica of another spec that a newer ingress started; this
    manager's ingress is being replaced, so it leaves the slot alone."""


@dataclass(frozen=True)
class PoolSettings:
    """How one model's replicas are built, placed and scheduled."""

    model: str
    engine: EngineSpec
    replicas: int
    dispatch: DispatchPolicy = DispatchPolicy.LOAD_AWARE
    migration: bool = True
    max_concurrent: int = 2
    staging_rounds: int = 4
    """At most this many KV copies while the request decodes; 0 is plain stop-and-copy.
    Staging stops earlier once a round copies at most one block: the rest is small."""
    max_requests_per_replica: int = 64
    headroom_blocks: int = 0
    rebalance_below: float = 8.0
    """Rebalance only off replicas whose freeness (blocks per request) is below this."""
    control_interval_s: float = 0.2
    poll_timeout_s: float = 1.0
    replica_num_cpus: float = 1.0
    namespace: str = DEFAULT_NAMESPACE
    name_prefix: str = "pool"
    """The pool's application name: replica actors are named ``<prefix>:<model>:<slot>``."""
    orphan_after_s: float = 10.0
    """A replica aborts the requests of a manager that has not polled it for this long."""
    release_timeout_s: float = 30.0
    """How long to wait for Ray to release the name of a replica that was killed."""


@dataclass(frozen=True)
class MigrationReport:
    """What one migration did, with its downtime taken apart.

    ``downtime_s`` runs from the request stopping on the source to its being ready on the
    target: ``export_s`` + ``transfer_s`` + ``import_s``. ``step_wait_s`` comes before
    it: from the manager's call until the source reached a step boundary; the step in
    flight meanwhile still produced the request's token, so the request was not stalled.
    """

    request_id: str
    source: str
    target: str
    staged_blocks: int
    final_blocks: int
    downtime_s: float
    recomputed: bool
    step_wait_s: float = 0.0
    export_s: float = 0.0
    transfer_s: float = 0.0
    import_s: float = 0.0


@dataclass(eq=False)
class Stream:
    """The manager's record of a request and the queue its client reads."""

    request_id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    priority: int
    replica: str
    tokens: list[int] = field(default_factory=list)
    events: asyncio.Queue[TokenEvent | Exception] = field(default_factory=asyncio.Queue)
    migrating: bool = False
    done: bool = False

    def deliver(self, event: TokenEvent) -> None:
        """Pass the event on if it is the next token; earlier indices are duplicates."""
        if self.done or event.index != len(self.tokens):
            return
        self.tokens.append(event.token_id)
        self.done = event.finished
        self.events.put_nowait(event)

    def deliver_tokens(self, tokens: Sequence[int]) -> None:
        """Pass on tokens an exported state holds that its events have not brought yet."""
        for index in range(len(self.tokens), len(tokens)):
            self.deliver(TokenEvent(self.request_id, tokens[index], index))

    def fail(self, error: Exception) -> None:
        """End the client's stream with ``error``."""
        self.done = True
        self.events.put_nowait(error)

    def recomputation_state(self) -> RequestState:
        """Resume from the prompt and the tokens the client has: no KV, same sampler."""
        return RequestState(
            request_id=self.request_id,
            prompt_token_ids=self.prompt,
            output_token_ids=tuple(self.tokens),
            params=self.params,
            priority=self.priority,
            num_cached_tokens=0,
            kv=None,
        )

    def blocks(self, block_size: int) -> int:
        """KV blocks the request holds (or will hold once prefilled)."""
        return -(-(len(self.prompt) + len(self.tokens)) // block_size)


@dataclass(eq=False)
class Replica:
    """A replica actor the manager owns, and the task polling its events."""

    name: str
    slot: int
    actor: Any
    total_blocks: int
    """KV blocks the replica's engine reported at start (vLLM sizes its pool to the GPU)."""
    draining: bool = False
    pump: asyncio.Task[None] | None = None


class PoolManager:
    """Owns one model's replica actors; see the module docstring."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self._desired = settings.replicas
        self._replicas: dict[str, Replica] = {}
        self._streams: dict[str, Stream] = {}
        self._in_flight: Counter[str] = Counter()
        # Replicas may serve two managers at once (old and new ingress during a redeploy);
        # each polls only the events of the requests it placed.
        self._owner = secrets.token_hex(8)
        self._config_hash = settings.engine.config_hash()
        self._adopted = False
        self._turn = itertools.count()
        self._rng = random.Random()
        self._scaling = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control: asyncio.Task[None] | None = None
        self.migrations = 0
        self.recoveries = 0
        self.replica_failures = 0
        self.adoptions = 0

    async def configure(self, replicas: int, migration: bool, max_concurrent: int) -> None:
        """Apply a new replica count and migration settings without dropping streams.

        Scaling up waits for the new replicas; scaling down drains in the background.
        """
        self.settings = replace(self.settings, migration=migration, max_concurrent=max_concurrent)
        self._desired = replicas
        if self._control is None:
            self._control = asyncio.get_running_loop().create_task(self._control_loop())
        if self._serving_count() <= replicas:
            await self._reconcile()
        else:
            self._spawn(self._reconcile())

    async def submit(self, prompt: Sequence[int], params: SamplingParams, priority: int) -> Stream:
        """Place a new request; raises ``OverloadedError`` at the queue bound and
        ``ValueError`` for input the engine rejects."""
        views = self._views()
        if not has_capacity(views, self.settings.max_requests_per_replica):
            raise OverloadedError(
                f"model {self.settings.model!r} is at its queue bound of "
                f"{self.settings.max_requests_per_replica} requests per replica"
            )
        replica = self._dispatch(views, priority)
        seeded = params.seeded()
        request_id = f"{self.settings.model}-{secrets.token_hex(8)}"
        stream = Stream(request_id, tuple(prompt), seeded, priority, replica.name)
        self._streams[request_id] = stream
        try:
            await replica.actor.add.remote(request_id, stream.prompt, seeded, priority, self._owner)
        except ValueError:
            del self._streams[request_id]
            raise
        except (RayActorError, ReplicaDrainingError):
            await self._resume(stream)
        return stream

    async def cancel(self, request_id: str) -> None:
        """Stop a request whose client went away and free its KV."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return
        stream.done = True
        replica = self._replicas.get(stream.replica)
        if replica is not None:
            await self._abort_quietly(replica, request_id)

    async def migrate(self, request_id: str, target: str | None = None) -> MigrationReport | None:
        """Migrate one request now, to ``target`` or the freest other replica.

        ``None`` when the request finished before it could move.
        """
        stream = self._streams.get(request_id)
        if stream is None or stream.done:
            raise ValueError(f"request_id {request_id!r} is not running in this pool")
        others = [v for v in self._views() if v.name != stream.replica]
        chosen = target or getattr(choose_replica(others, stream.priority), "name", None)
        if chosen not in self._replicas or chosen == stream.replica:
            raise ValueError(f"no replica to migrate {request_id!r} to (asked for {target!r})")
        return await self._migrate(stream, self._replicas[stream.replica], self._replicas[chosen])

    def locate(self, request_id: str) -> str | None:
        """The replica actor name a request runs on, ``None`` when unknown or finished."""
        stream = self._streams.get(request_id)
        return None if stream is None else stream.replica

    def status(self) -> dict[str, Any]:
        """Replica counts and migration/recovery counters for the pool status."""
        return {
            "desiredReplicas": self._desired,
            "readyReplicas": self._serving_count(),
            "replicas": sorted(name for name, r in self._replicas.items() if not r.draining),
            "draining": sorted(name for name, r in self._replicas.items() if r.draining),
            "requests": len(self._streams),
            "migrations": self.migrations,
            "recoveries": self.recoveries,
            "replicaFailures": self.replica_failures,
            "adoptions": self.adoptions,
        }

    async def shutdown(self) -> None:
        """Stop background work and abort this manager's requests on its replicas.

        The replica actors stay: the next ingress adopts them, and the pool's deletion
        kills them (:func:`~modelfleet.serving.replica_names.kill_pool_replicas`).
        """
        for task in [self._control, *self._tasks]:
            if task is not None:
                task.cancel()
        for replica in self._replicas.values():
            if replica.pump is not None:
                replica.pump.cancel()
        releases = [r.actor.release.remote(self._owner) for r in self._replicas.values()]
        await asyncio.gather(*releases, return_exceptions=True)

    def _dispatch(self, views: list[ReplicaView], priority: int) -> Replica:
        if self.settings.dispatch is DispatchPolicy.ROUND_ROBIN:
            chosen = choose_round_robin(views, next(self._turn))
        elif self.settings.dispatch is DispatchPolicy.POWER_OF_TWO:
            chosen = choose_power_of_two(views, self._rng)
        else:
            chosen = choose_replica(views, priority, self.settings.headroom_blocks)
        if chosen is None:
            raise OverloadedError(f"model {self.settings.model!r} has no serving replica")
        return self._replicas[chosen.name]

    def _views(self) -> list[ReplicaView]:
        """Load of each replica from the requests the manager placed there."""
        engine = self.settings.engine.engine
        views = {
            name: ReplicaView(name, replica.total_blocks, 0, 0, draining=replica.draining)
            for name, replica in self._replicas.items()
        }
        for stream in self._streams.values():
            if stream.replica in views:
                view = views[stream.replica]
                views[stream.replica] = view.with_request(
                    stream.blocks(engine.block_size), stream.priority
                )
        return list(views.values())

    def _request_views(self) -> list[RequestView]:
        block_size = self.settings.engine.engine.block_size
        return [
            RequestView(s.request_id, s.replica, s.blocks(block_size), s.priority)
            for s in self._streams.values()
            if not s.migrating and not s.done and s.replica in self._replicas
        ]

    def _serving_count(self) -> int:
        return sum(not replica.draining for replica in self._replicas.values())

    async def _control_loop(self) -> None:
        """Rebalance periodically while migration is on."""
        while True:
            await asyncio.sleep(self.settings.control_interval_s)
            if self.settings.migration:
                moves = plan_rebalance(
                    self._views(),
                    self._request_views(),
                    self._in_flight,
                    self.settings.max_concurrent,
                    self.settings.rebalance_below,
                )
                for move in moves:
                    self._spawn(self._run_move(move))

    async def _run_move(self, move: Move) -> None:
        stream = self._streams.get(move.request_id)
        source, target = self._replicas.get(move.source), self._replicas.get(move.target)
        if stream is not None and source is not None and target is not None:
            await self._migrate(stream, source, target)

    async def _migrate(
        self, stream: Stream, source: Replica, target: Replica
    ) -> MigrationReport | None:
        """Move a request in stages, keeping the in-flight counts the policy respects."""
        if stream.migrating or stream.done:
            return None
        stream.migrating = True
        self._in_flight.update((source.name, target.name))
        try:
            return await self._move(stream, source, target)
        finally:
            stream.migrating = False
            self._in_flight.subtract((source.name, target.name))
            if not stream.done and stream.replica not in self._replicas:
                await self._resume(stream)

    async def _move(
        self, stream: Stream, source: Replica, target: Replica
    ) -> MigrationReport | None:
        """Stage full blocks while the source decodes, then stop, copy the rest and resume.

        If anything fails before the source stops the request, the migration is called
        off and the request never noticed; after that, the target (or, failing it, any
        replica by recomputation) must take it, because the source no longer has it.
        """
        rid = stream.request_id
        staged = end = 0
        try:
            for _ in range(self.settings.staging_rounds):
                chunk = source.actor.export_kv_blocks.remote(rid, end)
                count, end = await target.actor.import_kv_blocks.remote(rid, chunk, self._owner)
                staged += count
                if count <= 1:
                    break
            called = time.monotonic()
            exported: tuple[RequestState, list[TokenEvent], Span]
            exported = await source.actor.export_request.remote(rid, end)
            state, unpolled, export = exported
        except (RayActorError, ValueError, ReplicaDrainingError, OutOfBlocksError) as error:
            log.info("migration of %s from %s called off: %s", rid, source.name, error)
            await self._abort_quietly(target, rid)
            return None
        for event in unpolled:
            stream.deliver(event)
        stream.deliver_tokens(state.output_token_ids)
        stream.replica = target.name
        try:
            imported: Span = await target.actor.import_request.remote(state, self._owner)
        except (RayActorError, ValueError, ReplicaDrainingError) as error:
            log.warning("import of %s into %s failed, recomputing: %s", rid, target.name, error)
            await self._abort_quietly(target, rid)
            await self._resume(stream)
            return None
        if stream.done:
            await self._abort_quietly(target, rid)
        self.migrations += 1
        return MigrationReport(
            request_id=rid,
            source=source.name,
            target=target.name,
            staged_blocks=staged,
            final_blocks=0 if state.kv is None else state.kv.num_blocks,
            downtime_s=imported.finished - export.started,
            recomputed=state.kv is None,
            step_wait_s=export.started - called,
            export_s=export.seconds,
            transfer_s=imported.started - export.finished,
            import_s=imported.seconds,
        )

    async def _resume(self, stream: Stream) -> None:
        """Continue a request that lost its replica, by recomputation on a serving one."""
        state = stream.recomputation_state()
        while not stream.done:
            try:
                replica = self._dispatch(self._views(), stream.priority)
            except OverloadedError:
                await asyncio.sleep(self.settings.control_interval_s)
                continue
            stream.replica = replica.name
            try:
                await replica.actor.import_request.remote(state, self._owner)
            except (RayActorError, ReplicaDrainingError):
                await asyncio.sleep(self.settings.control_interval_s)
                continue
            except ValueError as error:
                stream.fail(error)
                self._streams.pop(stream.request_id, None)
                return
            self.recoveries += 1
            return

    async def _pump(self, replica: Replica) -> None:
        """Forward a replica's token events to their streams until the replica goes away."""
        while True:
            try:
                events = await replica.actor.poll.remote(self.settings.poll_timeout_s, self._owner)
            except RayActorError:
                await self._on_replica_died(replica)
                return
            for event in events:
                stream = self._streams.get(event.request_id)
                if stream is not None:
                    stream.deliver(event)
                    if stream.done:
                        del self._streams[event.request_id]

    async def _on_replica_died(self, replica: Replica) -> None:
        """Resume the dead replica's requests elsewhere and replace it."""
        if self._replicas.get(replica.name) is not replica:
            return
        log.warning("replica %s died; resuming its requests by recomputation", replica.name)
        del self._replicas[replica.name]
        self.replica_failures += 1
        orphans = [
            s for s in self._streams.values() if s.replica == replica.name and not s.migrating
        ]
        self._spawn(self._reconcile())
        await asyncio.gather(*(self._resume(stream) for stream in orphans))

    async def _reconcile(self) -> None:
        """Add or drain replicas until the serving count is the desired one.

        The first reconcile adopts what a previous ingress left and kills its strays.
        """
        async with self._scaling:
            try:
                while self._serving_count() != self._desired:
                    if self._serving_count() < self._desired:
                        await self._add_replica()
                    else:
                        serving = [r for r in self._replicas.values() if not r.draining]
                        load = Counter(s.replica for s in self._streams.values())
                        await self._drain(min(serving, key=lambda r: (load[r.name], r.name)))
            except SupersededError as error:
                log.warning("%s", error)
            if not self._adopted:
                self._adopted = True
                await self._kill_strays()

    async def _add_replica(self) -> None:
        """Fill the lowest free slot with the replica running under its name, or a new one.

        The running one is adopted when it was built from this manager's spec and is not
        draining; otherwise, on the first reconcile, it is stale and replaced. Later it
        can only have been started by a newer ingress: ``SupersededError``. The old
        ingress may refill a slot while it is being replaced, so replacing is retried.
        """
        slot = min(set(range(len(self._replicas) + 1)) - {r.slot for r in self._replicas.values()})
        name = replica_name(self.settings.name_prefix, self.settings.model, slot)
        for _ in range(REPLACE_ATTEMPTS):
            actor, info = await self._start(name)
            if info.config_hash == self._config_hash and not info.draining:
                break
            if self._adopted:
                raise SupersededError(f"replica {name} runs another spec, of a newer ingress")
            log.info("replacing replica %s: it runs another spec or is draining", name)
            await self._kill(name, actor)
        else:
            raise RuntimeError(f"replica {name} kept being replaced by one of another spec")
        if info.already_running:
            log.info("adopted running replica %s", name)
            self.adoptions += 1
        replica = Replica(name, slot, actor, info.load.blocks_used + info.load.blocks_free)
        replica.pump = asyncio.get_running_loop().create_task(self._pump(replica))
        self._replicas[name] = replica

    async def _start(self, name: str) -> tuple[Any, ReplicaInfo]:
        """Find or create the detached replica ``name`` and start it. A dead actor may
        still hold the name for a moment: then its release is waited for and the replica
        created anew (a constructor that fails raises ``RayActorError`` as before)."""
        actor = self._actor(name)
        try:
            info: ReplicaInfo = await actor.start.remote()
        except RayActorError:
            await self._released(name)
            actor = self._actor(name)
            info = await actor.start.remote()
        return actor, info

    def _actor(self, name: str) -> Any:
        """The live actor called ``name``, or a new replica under that name."""
        return _REMOTE_REPLICA.options(
            name=name,
            namespace=self.settings.namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=self.settings.replica_num_cpus,
            num_gpus=self.settings.engine.gpus(),
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        ).remote(self.settings.engine, self.settings.orphan_after_s)

    async def _kill(self, name: str, actor: Any) -> None:
        """Kill a detached replica and wait until its name (its slot) is free again."""
        ray.kill(actor)
        await self._released(name)

    async def _released(self, name: str) -> None:
        """Wait until no live actor holds ``name``; ``TimeoutError`` if one keeps it."""
        deadline = time.monotonic() + self.settings.release_timeout_s
        while True:
            try:
                ray.get_actor(name, namespace=self.settings.namespace)
            except ValueError:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray did not release the replica actor name {name!r}")
            await asyncio.sleep(0.05)

    async def _kill_strays(self) -> None:
        """Kill replicas of this model that a previous ingress left in slots this manager
        did not fill (it ran more replicas than are desired now)."""
        names = model_replica_names(
            self.settings.name_prefix, self.settings.model, self.settings.namespace
        )
        for name in set(names) - set(self._replicas):
            log.info("killing replica %s, left by a previous ingress beyond the desired", name)
            try:
                actor = ray.get_actor(name, namespace=self.settings.namespace)
            except ValueError:
                continue
            await self._kill(name, actor)

    async def _drain(self, replica: Replica) -> None:
        """Migrate every request off ``replica``, then remove it."""
        replica.draining = True
        await replica.actor.drain.remote()
        while any(s.replica == replica.name and not s.done for s in self._streams.values()):
            try:
                moves = plan_drain(self._views(), self._request_views(), replica.name)
            except ValueError:
                moves = []
            await self._run_limited(moves)
            await asyncio.sleep(self.settings.control_interval_s)
        await self._remove(replica)

    async def _run_limited(self, moves: Sequence[Move]) -> None:
        """Run moves with at most ``max_concurrent`` in flight, as the spec asks."""
        limit = asyncio.Semaphore(self.settings.max_concurrent)

        async def run(move: Move) -> None:
            async with limit:
                await self._run_move(move)

        await asyncio.gather(*(run(move) for move in moves))

    async def _remove(self, replica: Replica) -> None:
        """Retire a drained replica: the actor is detached, so it must be killed."""
        self._replicas.pop(replica.name, None)
        if replica.pump is not None:
            replica.pump.cancel()
        await self._kill(replica.name, replica.actor)

    async def _abort_quietly(self, replica: Replica, request_id: str) -> None:
        """Abort where the replica may already be gone: nothing is left to free then."""
        try:
            await replica.actor.abort.remote(request_id)
        except RayActorError:
            return

    def _spawn(self, coroutine: Any) -> None:
        """Run a background coroutine, keeping a reference so it is not collected."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
