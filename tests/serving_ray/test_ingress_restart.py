"""The ingress replica killed mid-stream: Serve restarts it and it adopts the same engines.

The pool's single ingress replica holds every client connection, so all six streams
open at the kill are cut off (the client raises ``APIConnectionError``, never hangs or
gets a wrong token); the engine replica actors survive it, are adopted by the new ingress without a
restart, serve the next request, and abort the dead ingress's requests themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import openai
import pytest
import ray
from ray import serve

from modelfleet.serving.replica_names import DEFAULT_NAMESPACE, pool_replica_names

from .conftest import ZOO, expected_tokens, open_stream, pool_spec, read_tokens, status_of

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SPEC = pool_spec(2, model=ZOO)
STREAMS = 6
TOKENS = 500
"""Long enough that every stream is still decoding when the ingress dies."""
PROMPTS = [f"Stream number {i} outlives nothing but its engine. " for i in range(STREAMS)]
SERVE_NAMESPACE = "serve"
T = TypeVar("T")


def test_engines_survive_an_ingress_crash_and_are_adopted(pool: str) -> None:
    name = pool.rsplit("/", 1)[-1]
    engines = _engine_actor_ids(name)
    assert len(engines) == 2
    ingress = _ingress_actor_ids(name)
    assert len(ingress) == 1

    outcomes = _cut_streams(pool, lambda: _kill_actors(ingress, SERVE_NAMESPACE))

    # (c) every stream's connection was in the dead ingress: each was cut off with a
    # connection error after a correct prefix; none hung, none completed.
    for i, (tokens, error) in outcomes.items():
        assert isinstance(error, openai.APIConnectionError), (i, error)
        assert 10 <= len(tokens) < TOKENS, (i, len(tokens))
        assert tokens == expected_tokens(PROMPTS[i], len(tokens), model=ZOO), i

    status = _wait(lambda: _restarted_status(name, ingress), "the ingress to restart")
    # (a) the same engine actors, adopted, none restarted or replaced.
    assert _engine_actor_ids(name) == engines
    assert sorted(status["replicas"]) == sorted(engines)
    assert status["adoptions"] == 2
    assert status["replicaFailures"] == 0 and status["recoveries"] == 0

    # (b) a new request is served, token for token, by an adopted engine.
    prompt = "After the restart the adopted engines serve. "
    chunks = iter(open_stream(pool, prompt, 60, model=ZOO))
    first = next(chunks)
    assert serve.get_app_handle(name).locate.remote(first.id).result() in engines
    tokens = first.choices[0].model_extra["token_ids"] + read_tokens(chunks)
    assert tokens == expected_tokens(prompt, 60, model=ZOO)

    # The dead ingress's requests are aborted by the engines once it stops polling.
    _wait(lambda: _idle(name) or None, "the engines to abort the dead ingress's requests")


def _cut_streams(
    pool: str, kill: Callable[[], None]
) -> dict[int, tuple[list[int], BaseException | None]]:
    """Open the streams, read a few tokens of each, ``kill``, then read each to its end;
    per stream, the tokens it got and the error that ended it (``None``: completed)."""
    started = threading.Barrier(STREAMS + 1, timeout=120)
    outcomes: dict[int, tuple[list[int], BaseException | None]] = {}

    def consume(i: int) -> None:
        chunks = iter(open_stream(pool, PROMPTS[i], TOKENS, model=ZOO))
        tokens = read_tokens(chunks, 10)
        started.wait()
        try:
            for chunk in chunks:
                tokens.extend(chunk.choices[0].model_extra["token_ids"])
        except openai.APIError as error:
            outcomes[i] = (tokens, error)
        else:
            outcomes[i] = (tokens, None)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    started.wait()
    kill()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == list(range(STREAMS)), "a stream hung after the kill"
    return outcomes


def _engine_actor_ids(app: str) -> dict[str, str]:
    """Actor id of each live engine replica of the pool, by actor name."""
    return {
        name: ray.get_actor(name, namespace=DEFAULT_NAMESPACE)._actor_id.hex()
        for name in pool_replica_names(app)
    }


def _ingress_actor_ids(app: str) -> dict[str, str]:
    """Actor id of each live Serve replica of the pool's ingress deployment, by name."""
    prefix = f"SERVE_REPLICA::{app}#PoolIngress#"
    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == SERVE_NAMESPACE and actor["name"].startswith(prefix)
    ]
    return {n: ray.get_actor(n, namespace=SERVE_NAMESPACE)._actor_id.hex() for n in names}


def _kill_actors(ids: dict[str, str], namespace: str) -> None:
    for name in ids:
        ray.kill(ray.get_actor(name, namespace=namespace))


def _restarted_status(app: str, dead: dict[str, str]) -> dict[str, Any] | None:
    """The pool's status once a new ingress replica answers with both engines ready."""
    live = _ingress_actor_ids(app)
    if not live or set(live.values()) & set(dead.values()):
        return None
    try:
        status = status_of(app, ZOO)
    except Exception:  # Serve raises many types while the replica starts
        return None
    return status if status["readyReplicas"] == 2 else None


def _idle(app: str) -> bool:
    """Whether no engine replica of the pool holds a request."""
    loads = [
        ray.get(ray.get_actor(name, namespace=DEFAULT_NAMESPACE).load.remote())
        for name in pool_replica_names(app)
    ]
    return all(load.running + load.waiting == 0 for load in loads)


def _wait(probe: Callable[[], T | None], what: str, timeout_s: float = 90.0) -> T:
    """``probe``'s first result that is not ``None``; fails naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = probe()
        if result is not None:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
