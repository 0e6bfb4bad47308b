"""Scaling in place: a smaller replica count drains a replica without losing a stream."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import ray

from modelfleet.serving.app import deploy

from .conftest import ZOO, expected_tokens, open_stream, pool_spec, read_tokens, status_of

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SPEC = pool_spec(3, model=ZOO)
STREAMS = 6
PROMPTS = [f"Stream number {i} survives the scale-down. " for i in range(STREAMS)]


def test_scale_down_drains_without_losing_streams(pool: str) -> None:
    name = pool.rsplit("/", 1)[-1]
    started = threading.Barrier(STREAMS + 1)
    results: dict[int, list[int]] = {}

    def consume(i: int) -> None:
        chunks = iter(open_stream(pool, PROMPTS[i], 500, model=ZOO))
        head = read_tokens(chunks, 10)
        started.wait()
        results[i] = head + read_tokens(chunks)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    started.wait()
    before = status_of(name, ZOO)
    deploy({**SPEC, "replicas": 2}, name=name, route_prefix=f"/{name}")
    for thread in threads:
        thread.join(timeout=120)
    assert {i: results.get(i) for i in range(STREAMS)} == {
        i: expected_tokens(PROMPTS[i], 500, model=ZOO) for i in range(STREAMS)
    }
    after = _wait_until_drained(name)
    removed = set(before["replicas"]) - set(after["replicas"])
    assert len(removed) == 1 and after["readyReplicas"] == 2
    assert after["migrations"] > before["migrations"]
    with pytest.raises(ValueError):
        ray.get_actor(removed.pop(), namespace="modelfleet")


def _wait_until_drained(name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = status_of(name, ZOO)
        if not status["draining"]:
            return status
        time.sleep(0.2)
    raise AssertionError(f"pool {name} is still draining: {status}")
