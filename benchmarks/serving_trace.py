"""Trace replay against a pool of engine replica actors: the pool's dispatch and migration
against power-of-two-choices routing (Ray Serve's rule), round-robin and dispatch alone.

Run: ``python benchmarks/serving_trace.py``. Every figure is a ratio against a baseline
measured in the same run, so the numbers compare across machines; nothing is asserted.

Traces (bursty gamma arrivals, long-tailed output lengths) from SEEDS seeds are replayed
on a local Ray against fresh replicas of the tiny model under four policies: power of two
choices on queue length (the rule of Ray Serve's default router, emulated inside the pool
manager: it is not Serve's router, and it has no ``max_ongoing_requests`` bound, so
requests queue in the engines rather than at the router), round-robin, load-aware
dispatch by KV freeness without migration, and the pool's policy (load-aware dispatch plus
live-migration rebalancing). The policies take turns in a different order for each seed so
none profits from its position. The pool manager drives real Ray actors; HTTP is left out
so the client does not compete for the two CPU cores. Printed: p50/p99 time to first
token and end-to-end latency per policy over every seed's requests, and baseline / pool
ratios with 95% bootstrap intervals (above 1: the pool is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

import numpy as np
import ray
from result_lines import print_result, slug

from modelfleet.api.modelpool import ModelPoolSpec, ServedModel
from modelfleet.serving.dispatch import DispatchPolicy
from modelfleet.serving.frontend import ServingOptions, pool_settings
from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.manager import PoolManager, Stream

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


async def replay(
    trace: list[TraceRequest],
    replicas: int,
    num_blocks: int,
    policy: DispatchPolicy,
    migration: bool,
    app: str,
    rebalance_below: float = ServingOptions().rebalance_below,
) -> tuple[list[Latency], int]:
    """Latencies of every request of the trace under one policy, and the migrations done."""
    model = ServedModel(name="tiny", uri="builtin://tiny-llama", max_model_len=MAX_MODEL_LEN)
    spec = ModelPoolSpec(models=[model], replicas=replicas)
    options = ServingOptions(
        dispatch=policy,
        num_blocks=num_blocks,
        max_requests_per_replica=10_000,
        replica_num_cpus=0.5,
        rebalance_below=rebalance_below,
    )
    manager = PoolManager(pool_settings(model, spec, options, app))
    await manager.configure(replicas, migration, max_concurrent=2)
    start = time.perf_counter()
    latencies = await asyncio.gather(*(serve_one(manager, r, start) for r in trace))
    migrations = manager.migrations
    await manager.shutdown()
    return list(latencies), migrations


SEEDS = range(5)
RUNS = {
    "power of two (Serve rule)": (DispatchPolicy.POWER_OF_TWO, False),
    "round-robin": (DispatchPolicy.ROUND_ROBIN, False),
    "load-aware, no migration": (DispatchPolicy.LOAD_AWARE, False),
    POOL: (DispatchPolicy.LOAD_AWARE, True),
}


def percentiles(values: np.ndarray) -> tuple[float, float]:
    """p50 and p99."""
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def bootstrap_ratio(
    baseline: np.ndarray, pool: np.ndarray, quantile: float
) -> tuple[float, float, float]:
    """A quantile of ``baseline`` over the same quantile of ``pool``, with its 95% bootstrap
    interval (requests resampled within each policy)."""
    rng = np.random.default_rng(0)
    draws = [
        np.percentile(values[rng.integers(0, len(values), (2000, len(values)))], quantile, axis=1)
        for values in (baseline, pool)
    ]
    low, high = np.percentile(draws[0] / draws[1], [2.5, 97.5])
    ratio = np.percentile(baseline, quantile) / np.percentile(pool, quantile)
    return float(ratio), float(low), float(high)


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
    latencies: dict[str, list[Latency]] = {label: [] for label in RUNS}
    migrations: dict[str, int] = dict.fromkeys(RUNS, 0)
    labels = list(RUNS)
    for seed in range(args.seeds):
        trace = make_trace(args.requests, args.rate, args.burstiness, seed)
        for turn in range(len(labels)):
            label = labels[(seed + turn) % len(labels)]
            policy, migration = RUNS[label]
            measured, moved = asyncio.run(
                replay(
                    trace,
                    args.replicas,
                    args.num_blocks,
                    policy,
                    migration,
                    f"trace{seed}-{turn}",
                    args.rebalance_below,
                )
            )
            latencies[label] += measured
            migrations[label] += moved
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
                ratio, low, high = bootstrap_ratio(values[label], values[POOL], quantile)
                cells.append(f"{metric} p{quantile} {ratio:.2f}x [{low:.2f}, {high:.2f}]")
                if quantile == 99:
                    headline[f"trace_p99_{metric.lower()}_speedup_vs_{slug(label)}"] = ratio
        print(f"{label} / pool: " + "  ".join(cells))
    for name, value in headline.items():
        print_result(name, value)


if __name__ == "__main__":
    main()
