"""A replica killed mid-stream: its requests resume elsewhere and the client sees no gap."""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray
from ray import serve

from .conftest import ZOO, expected_tokens, open_stream, pool_spec, read_tokens, status_of

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TOKENS = 800
SPEC = pool_spec(2, model=ZOO)
"""Long enough that the request is still decoding when the test acts on it."""

PROMPT = "A replica dies; the stream goes on. " * 2


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_killed_replica_stream_continues_identically(pool: str, temperature: float) -> None:
    name = pool.rsplit("/", 1)[-1]
    expected = expected_tokens(PROMPT, TOKENS, temperature, model=ZOO)
    before = status_of(name, ZOO)
    chunks = iter(open_stream(pool, PROMPT, TOKENS, temperature, model=ZOO))
    first = next(chunks)
    head = first.choices[0].model_extra["token_ids"] + read_tokens(chunks, 40)
    victim = serve.get_app_handle(name).locate.remote(first.id).result()
    killed = ray.get_actor(victim, namespace="modelfleet")
    ray.kill(killed)
    tail = read_tokens(chunks)
    assert head + tail == expected
    after = _wait_for_replicas(name, before["readyReplicas"])
    assert after["recoveries"] >= before["recoveries"] + 1
    assert after["replicaFailures"] == before["replicaFailures"] + 1
    assert victim in after["replicas"], "a new replica fills the dead one's slot"
    assert ray.get_actor(victim, namespace="modelfleet")._actor_id != killed._actor_id


def _wait_for_replicas(name: str, count: int) -> dict[str, Any]:
    """The pool's status once the dead replica has been replaced."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = status_of(name, ZOO)
        if status["readyReplicas"] == count:
            return status
        time.sleep(0.2)
    raise AssertionError(f"pool {name} did not get back to {count} replicas: {status}")
