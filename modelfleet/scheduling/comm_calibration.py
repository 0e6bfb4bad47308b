"""Calibrate the cost model's communication terms by timing collectives over gloo.

Spawns ``world`` processes that join a gloo group on 127.0.0.1 and time the two
collectives the planners price: ``all_to_all_single`` (Ulysses' exchange, priced by
``costmodel.time_all_to_all``) and ``all_reduce`` (gradient sync, ``time_allreduce``).
Each timing is turned into per-message (bytes, seconds) samples through the same formulas
the cost model prices with, so ``costmodel.fit_link`` yields a ``Link`` that reproduces the
measured collectives when plugged back into them.

This module imports torch; only the calibration path imports it, so the planners stay on
numpy and scipy.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from multiprocessing.queues import SimpleQueue

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn

from modelfleet.scheduling.costmodel import (
    Link,
    LinkKind,
    LinkSample,
    fit_link,
    time_all_to_all,
    time_allreduce,
)


class Collective(StrEnum):
    ALL_TO_ALL = "all_to_all"
    ALL_REDUCE = "all_reduce"


@dataclass(frozen=True)
class CollectiveTiming:
    """One collective on ``world`` ranks, each holding a buffer of ``nbytes``."""

    collective: Collective
    nbytes: int
    world: int
    seconds: float


def _messages(timing: CollectiveTiming) -> int:
    """Sequential messages the cost model charges a latency for (ring / pairwise exchange)."""
    steps = timing.world - 1
    return steps if timing.collective is Collective.ALL_TO_ALL else 2 * steps


def to_link_sample(timing: CollectiveTiming) -> LinkSample:
    """Per-message bytes and seconds: both collectives move ``nbytes / world`` per message.

    Dividing by the message count inverts ``time_all_to_all`` / ``time_allreduce``, so a link
    fitted to these samples predicts the collectives themselves.
    """
    count = _messages(timing)
    return LinkSample(timing.nbytes / timing.world, timing.seconds / count)


def predict(timing: CollectiveTiming, link: Link) -> float:
    """The cost model's time for the measured collective on ``link``."""
    if timing.collective is Collective.ALL_TO_ALL:
        return time_all_to_all(timing.nbytes, timing.world, link)
    return time_allreduce(timing.nbytes, timing.world, link)


def measure_collectives(
    sizes: Sequence[int], world: int = 2, repeats: int = 10
) -> list[CollectiveTiming]:
    """Time both collectives for each per-rank buffer size (bytes, a multiple of 4 x world)."""
    # Rank 0 puts a few hundred bytes per size, well under a pipe's buffer, so its put
    # cannot block on the read that follows the join.
    context = multiprocessing.get_context("spawn")
    results: SimpleQueue[list[tuple[str, int, float]]] = context.SimpleQueue()
    # torch's spawn, unlike multiprocessing's, stops the other ranks when one fails (they
    # would wait in the collective forever) and re-raises the failure here.
    spawn(  # type: ignore[no-untyped-call]
        _run_rank, args=(world, _free_port(), tuple(sizes), repeats, results), nprocs=world
    )
    return [
        CollectiveTiming(Collective(name), nbytes, world, seconds)
        for name, nbytes, seconds in results.get()
    ]


def fit_collectives(kind: LinkKind, timings: Sequence[CollectiveTiming]) -> Link:
    """One link for both collectives: the planners price all of them with a single link."""
    return fit_link(kind, [to_link_sample(t) for t in timings])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_rank(
    rank: int,
    world: int,
    port: int,
    sizes: tuple[int, ...],
    repeats: int,
    results: SimpleQueue[list[tuple[str, int, float]]],
) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        # The ranks share the machine's cores: one thread each keeps them from contending.
        torch.set_num_threads(1)
        rows = []
        for nbytes in sizes:
            send = torch.ones(nbytes // 4, dtype=torch.float32)
            received = torch.empty_like(send)
            operations: dict[Collective, Callable[[], object]] = {
                Collective.ALL_TO_ALL: partial(dist.all_to_all_single, received, send),
                Collective.ALL_REDUCE: partial(dist.all_reduce, send),
            }
            for collective, operation in operations.items():
                rows.append((collective.value, nbytes, _time_collective(operation, repeats)))
        if rank == 0:
            results.put(rows)
    finally:
        dist.destroy_process_group()


def _time_collective(operation: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` after a warm-up, each started together behind a barrier.

    A collective cannot finish on one rank before every rank has joined, so rank 0's time
    covers the whole exchange; the minimum is the run least disturbed by other load.
    """
    operation()
    best = float("inf")
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        operation()
        best = min(best, time.perf_counter() - started)
    return best
