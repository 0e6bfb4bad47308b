"""Trace replay against a pool of engine replicas: the pool's dispatch and migration
against Ray Serve's own router, round-robin and dispatch alone.

Run: ``python benchmarks/serving_trace.py``. Every figure is a ratio against a baseline
measured in the same run, so the numbers compare across machines; nothing is asserted.

Traces (bursty gamma arrivals, long-tailed output lengths) from SEEDS seeds are replayed
on a local Ray against fresh replicas of the tiny model, the same engine replica with the
same KV cache under every policy:

- Ray Serve's router: the replica as a plain Serve deployment, called through a
  deployment handle with Serve's defaults (power of two choices on queue length,
  ``max_ongoing_requests`` 5, requests beyond it queued at the router);
- round-robin, in the pool manager;
- load-aware dispatch by KV freeness without migration, in the pool manager;
- the pool's policy: load-aware dispatch plus live-migration rebalancing.

The policies take turns in a different order for each seed so none profits from its
position. HTTP is left out (no Serve proxy) so the client does not compete for the two
CPU cores. Printed: p50/p99 time to first token and end-to-end latency per policy over
every seed's requests, and baseline / pool ratios with 95% bootstrap intervals (above 1:
the pool is faster). Ends with ``RESULT`` lines ``trace_p99_ttft_speedup_vs_<baseline>``
and ``trace_p99_e2e_speedup_vs_<baseline>`` for each baseline (``ray_serve_router``,
``round_robin``, ``load_aware_no_migration``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import ray
from common.bootstrap import ratio_interval
from common.result_lines import print_result, slug
from ray import serve

from modelfleet.api.auth import Auth, AuthMode
from modelfleet.api.modelpool import ModelPoolSpec, ServedModel
from modelfleet.serving.dispatch import DispatchPolicy
from modelfleet.serving.frontend import ServingOptions, pool_settings
from modelfleet.serving.interface import SamplingParams, TokenEvent
from modelfleet.serving.manager import PoolManager, Stream
from modelfleet.serving.replica import EngineReplica, EngineSpec
from modelfleet.serving.replica_names import kill_pool_replicas

MAX_PROMPT = 160
MAX_OUTPUT = 480
MAX_MODEL_LEN = MAX_PROMPT + MAX_OUTPUT
POOL = "load-aware + migration"


@dataclass(frozen=True)
class TraceRequest:
    """One request of the trace: when it arrives, its prompt and how much it generates."""

    arrival_s: float
    prompt: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True)
class Latency:
    """Time to first token and end-to-end latency of one request, in seconds."""

    ttft_s: float
    e2e_s: float


def make_trace(requests: int, rate: float, burstiness: float, seed: int) -> list[TraceRequest]:
    """Gamma inter-arrivals (shape ``1/burstiness``: bursts when above 1) and lognormal
    output lengths, so a few long requests dominate the KV cache."""
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(1 / burstiness, burstiness / rate, requests)
    outputs = np.clip(rng.lognormal(np.log(48), 1.0, requests), 8, MAX_OUTPUT).astype(int)
    prompts = rng.integers(16, MAX_PROMPT, requests)
    return [
        TraceRequest(
            float(arrival),
            tuple(int(t) for t in rng.integers(0, 256, int(length))),
            int(output),
        )
        for arrival, length, output in zip(np.cumsum(gaps), prompts, outputs, strict=True)
    ]


async def serve_one(manager: PoolManager, request: TraceRequest, start: float) -> Latency:
    """Submit at the request's arrival time and wait for its last token."""
    await asyncio.sleep(max(0.0, start + request.arrival_s - time.perf_counter()))
    submitted = time.perf_counter()
    params = SamplingParams(max_tokens=request.max_tokens, temperature=0.0)
    stream: Stream = await manager.submit(request.prompt, params, priority=0)
    first = None
    while True:
        event = await stream.events.get()
        if isinstance(event, Exception):
            raise event
        first = first or time.perf_counter()
        if event.finished:
            return Latency(first - submitted, time.perf_counter() - submitted)


def make_options(policy: DispatchPolicy, args: argparse.Namespace) -> ServingOptions:
    return ServingOptions(
        dispatch=policy,
        num_blocks=args.num_blocks,
        max_requests_per_replica=10_000,
        replica_num_cpus=0.5,
        rebalance_below=args.rebalance_below,
    )


def make_spec(args: argparse.Namespace) -> tuple[ServedModel, ModelPoolSpec]:
    model = ServedModel(name="tiny", uri="builtin://tiny-llama", max_model_len=MAX_MODEL_LEN)
    return model, ModelPoolSpec(
        models=[model], replicas=args.replicas, auth=Auth(mode=AuthMode.NONE)
    )


async def replay_pool(
    trace: list[TraceRequest],
    args: argparse.Namespace,
    policy: DispatchPolicy,
    migration: bool,
    app: str,
) -> tuple[list[Latency], int]:
    """Latencies of every request under one of the pool manager's policies, and the
    migrations done."""
    model, spec = make_spec(args)
    manager = PoolManager(pool_settings(model, spec, make_options(policy, args), app))
    await manager.configure(args.replicas, migration, max_concurrent=2)
    start = time.perf_counter()
    latencies = await asyncio.gather(*(serve_one(manager, r, start) for r in trace))
    migrations = manager.migrations
    await manager.shutdown()
    kill_pool_replicas(app)
    return list(latencies), migrations


@serve.deployment
class EngineDeployment:
    """The pool's engine replica as a plain Ray Serve replica, so that requests reach it
    through Serve's own router (power of two choices, ``max_ongoing_requests``)."""

    def __init__(self, spec: EngineSpec) -> None:
        self._replica = EngineReplica(spec)
        self._queues: dict[str, asyncio.Queue[TokenEvent]] = {}
        self._pump: asyncio.Task[None] | None = None

    async def generate(self, prompt: Sequence[int], max_tokens: int) -> AsyncIterator[list[int]]:
        """Token ids as the engine produces them, every token already there in one message
        (one message per token would charge Serve's streaming for what the pool batches)."""
        if self._pump is None:
            await self._replica.start()
            self._pump = asyncio.get_running_loop().create_task(self._deliver())
        request_id = uuid.uuid4().hex
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[request_id] = queue
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        try:
            await self._replica.add(request_id, prompt, params, 0)
            while True:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                yield [event.token_id for event in events]
                if events[-1].finished:
                    return
        finally:
            self._queues.pop(request_id, None)

    async def _deliver(self) -> None:
        while True:
            for event in await self._replica.poll(1.0):
                if (queue := self._queues.get(event.request_id)) is not None:
                    queue.put_nowait(event)


async def serve_through_handle(
    handle: serve.handle.DeploymentHandle, request: TraceRequest, start: float
) -> Latency:
    """Submit at the request's arrival time through Serve's router; wait for the last token."""
    await asyncio.sleep(max(0.0, start + request.arrival_s - time.perf_counter()))
    submitted = time.perf_counter()
    first = None
    stream = handle.options(stream=True).generate.remote(list(request.prompt), request.max_tokens)
    async for _ in stream:
        first = first or time.perf_counter()
    assert first is not None, "Serve returned no token"
    return Latency(first - submitted, time.perf_counter() - submitted)


def replay_serve(
    trace: list[TraceRequest], args: argparse.Namespace, app: str
) -> tuple[list[Latency], int]:
    """Latencies of every request through Ray Serve's router with its defaults."""
    model, spec = make_spec(args)
    settings = pool_settings(model, spec, make_options(DispatchPolicy.LOAD_AWARE, args), app)
    deployment = EngineDeployment.options(
        num_replicas=args.replicas, ray_actor_options={"num_cpus": 0.5}
    )
    handle = serve.run(deployment.bind(settings.engine), name=app, route_prefix=None)

    async def drive() -> list[Latency]:
        warm = TraceRequest(0.0, (1, 2, 3), 2)
        await asyncio.gather(*(serve_through_handle(handle, warm, 0.0) for _ in range(4)))
        start = time.perf_counter()
        return list(await asyncio.gather(*(serve_through_handle(handle, r, start) for r in trace)))

    try:
        return asyncio.run(drive()), 0
    finally:
        serve.delete(app)


Replay = Callable[[list[TraceRequest], argparse.Namespace, str], tuple[list[Latency], int]]


def on_pool(policy: DispatchPolicy, migration: bool) -> Replay:
    """A replay under one of the pool manager's policies."""

    def run(
        trace: list[TraceRequest], args: argparse.Namespace, app: str
    ) -> tuple[list[Latency], int]:
        return asyncio.run(replay_pool(trace, args, policy, migration, app))

    return run


SEEDS = range(5)
RUNS: dict[str, Replay] = {
    "Ray Serve router": replay_serve,
    "round-robin": on_pool(DispatchPolicy.ROUND_ROBIN, False),
    "load-aware, no migration": on_pool(DispatchPolicy.LOAD_AWARE, False),
    POOL: on_pool(DispatchPolicy.LOAD_AWARE, True),
}


def percentiles(values: np.ndarray) -> tuple[float, float]:
    """p50 and p99."""
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="requests per seed")
    parser.add_argument("--rate", type=float, default=6.0, help="mean arrivals per second")
    parser.add_argument("--burstiness", type=float, default=4.0, help="gamma CV squared")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--num-blocks", type=int, default=48, help="KV blocks of 16 tokens per replica"
    )
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument(
        "--rebalance-below",
        type=float,
        default=ServingOptions().rebalance_below,
        help="migrate off replicas with fewer free KV blocks per request than this",
    )
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    latencies: dict[str, list[Latency]] = {label: [] for label in RUNS}
    migrations: dict[str, int] = dict.fromkeys(RUNS, 0)
    labels = list(RUNS)
    for seed in range(args.seeds):
        trace = make_trace(args.requests, args.rate, args.burstiness, seed)
        for turn in range(len(labels)):
            label = labels[(seed + turn) % len(labels)]
            measured, moved = RUNS[label](trace, args, f"trace{seed}-{turn}")
            latencies[label] += measured
            migrations[label] += moved
    serve.shutdown()
    ray.shutdown()
    ttfts = {label: np.array([x.ttft_s for x in values]) for label, values in latencies.items()}
    e2es = {label: np.array([x.e2e_s for x in values]) for label, values in latencies.items()}
    print(f"{args.seeds} seeds x {args.requests} requests per policy")
    for label in RUNS:
        ttft, e2e = percentiles(ttfts[label]), percentiles(e2es[label])
        print(
            f"{label:28s} TTFT p50 {ttft[0] * 1e3:7.0f} ms  p99 {ttft[1] * 1e3:7.0f} ms   "
            f"E2E p50 {e2e[0]:6.2f} s  p99 {e2e[1]:6.2f} s   migrations {migrations[label]}"
        )
    headline: dict[str, float] = {}
    for label in RUNS:
        if label == POOL:
            continue
        cells = []
        for metric, values in (("TTFT", ttfts), ("E2E", e2es)):
            for quantile in (50, 99):
                at = partial(np.percentile, q=quantile)
                ratio, low, high = ratio_interval(values[label], values[POOL], at)
                cells.append(f"{metric} p{quantile} {ratio:.2f}x [{low:.2f}, {high:.2f}]")
                if quantile == 99:
                    headline[f"trace_p99_{metric.lower()}_speedup_vs_{slug(label)}"] = ratio
        print(f"{label} / pool: " + "  ".join(cells))
    for name, value in headline.items():
        print_result(name, value)


if __name__ == "__main__":
    main()
