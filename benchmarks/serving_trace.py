"""Trace replay against a pool of engine replica actors: the pool's dispatch and migration
against Ray Serve's default routing.

Run: ``python benchmarks/serving_trace.py``. Every figure is a ratio against a baseline
measured in the same run, so the numbers compare across machines; nothing is asserted.

One trace (bursty gamma arrivals, long-tailed output lengths) is replayed on a local
Ray against fresh replicas of the tiny model under four policies: Ray Serve's default
router (power of two choices on queue length, no migration), round-robin (no load
information at all), load-aware dispatch by KV freeness without migration, and the
pool's policy (load-aware dispatch plus live-migration rebalancing). The middle rows
separate what dispatch and migration each contribute. Each policy replays the trace
twice, in the order A B C D D C B A so none profits from its position, and the
percentiles pool both replays. The pool manager drives real Ray actors; HTTP is left
out so the client does not compete for the two CPU cores. Printed: p50/p99 time to
first token and end-to-end latency per policy, and baseline / pool ratios (above 1:
the pool is faster).
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


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99."""
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--rate", type=float, default=6.0, help="mean arrivals per second")
    parser.add_argument("--burstiness", type=float, default=4.0, help="gamma CV squared")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--num-blocks", type=int, default=48, help="KV blocks of 16 tokens per replica"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rebalance-below",
        type=float,
        default=ServingOptions().rebalance_below,
        help="migrate off replicas with fewer free KV blocks per request than this",
    )
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    trace = make_trace(args.requests, args.rate, args.burstiness, args.seed)
    runs = {
        "Ray Serve default (pow-2)": (DispatchPolicy.POWER_OF_TWO, False),
        "round-robin": (DispatchPolicy.ROUND_ROBIN, False),
        "load-aware, no migration": (DispatchPolicy.LOAD_AWARE, False),
        POOL: (DispatchPolicy.LOAD_AWARE, True),
    }
    order = [*runs, *reversed(runs)]
    latencies: dict[str, list[Latency]] = {label: [] for label in runs}
    migrations: dict[str, int] = dict.fromkeys(runs, 0)
    for index, label in enumerate(order):
        policy, migration = runs[label]
        measured, moved = asyncio.run(
            replay(
                trace,
                args.replicas,
                args.num_blocks,
                policy,
                migration,
                f"trace{index}",
                args.rebalance_below,
            )
        )
        latencies[label] += measured
        migrations[label] += moved
    results = {}
    for label in runs:
        ttft = percentiles([latency.ttft_s for latency in latencies[label]])
        e2e = percentiles([latency.e2e_s for latency in latencies[label]])
        results[label] = (ttft, e2e)
        print(
            f"{label:26s} TTFT p50 {ttft[0] * 1e3:7.0f} ms  p99 {ttft[1] * 1e3:7.0f} ms   "
            f"E2E p50 {e2e[0]:6.2f} s  p99 {e2e[1]:6.2f} s   migrations {migrations[label]}"
        )
    ray.shutdown()
    pool_ttft, pool_e2e = results[POOL]
    for label, (base_ttft, base_e2e) in results.items():
        if label == POOL:
            continue
        print(
            f"{label} / pool:".ljust(38)
            + f"TTFT p50 {base_ttft[0] / pool_ttft[0]:.2f}x  p99 {base_ttft[1] / pool_ttft[1]:.2f}x"
            f"   E2E p50 {base_e2e[0] / pool_e2e[0]:.2f}x  p99 {base_e2e[1] / pool_e2e[1]:.2f}x"
        )
    for label, (base_ttft, base_e2e) in results.items():
        if label != POOL:
            print_result(f"trace_p99_ttft_speedup_vs_{slug(label)}", base_ttft[1] / pool_ttft[1])
            print_result(f"trace_p99_e2e_speedup_vs_{slug(label)}", base_e2e[1] / pool_e2e[1])


if __name__ == "__main__":
    main()
