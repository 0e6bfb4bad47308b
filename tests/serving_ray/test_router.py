"""The RoutingPolicy router on a real Serve, in front of a real pool, through real HTTP.

The pool serves two models of very different quality: the zoo's ``llama-arith``, which
adds, and the builtin random-weight ``mini``, which cannot. Every routing claim is
therefore checkable: an answer is right or wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from ray import serve

from modelfleet.routing.app import deploy as deploy_router
from modelfleet.serving.app import deploy as deploy_pool
from tests.serving_ray.conftest import MAX_MODEL_LEN, MINI_URI, URIS, ZOO, client, free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL = "mini"
SPEC = {
    "models": [
        {"name": ZOO, "uri": URIS[ZOO], "maxModelLen": MAX_MODEL_LEN},
        {"name": MODEL, "uri": MINI_URI, "maxModelLen": MAX_MODEL_LEN},
    ],
    "replicas": 1,
    "migration": {"enabled": False, "maxConcurrent": 2},
    "auth": {"mode": "None"},
    "servingOptions": {"replicaNumCpus": 0.5, "controlIntervalS": 0.05},
}
BIG = {"name": "big", "pool": "p", "model": ZOO, "costPer1kTokens": "1.0"}
TINY = {"name": "tiny", "pool": "p", "model": MODEL, "costPer1kTokens": "0.1"}
QUESTIONS = [(a, b) for a, b in ((347, 85), (12, 709), (455, 31), (68, 240), (503, 96))]


@pytest.fixture(scope="module")
def routers(pool: str, serve_url: str) -> Iterator[Any]:
    """Deploys routers by name in front of the module's pool; their base URLs."""
    names: list[str] = []

    def start(
        name: str,
        policy: dict[str, Any],
        endpoints: dict[str, str] | None = None,
        learned: list[dict[str, Any]] | None = None,
    ) -> str:
        urls = endpoints or {"big": f"{pool}/v1", "tiny": f"{pool}/v1"}
        open_policy = {"auth": {"mode": "None"}, **policy}
        config = {
            "policyName": name,
            "policy": open_policy,
            "endpoints": urls,
            "learned": learned or [],
        }
        deploy_router(config, name=name, route_prefix=f"/{name}")
        names.append(name)
        base = f"{serve_url}/{name}"
        _wait_ready(base)
        return base

    yield start
    for name in names:
        serve.delete(name)


def _wait_ready(base: str) -> None:
    for _ in range(240):
        try:
            if httpx.get(f"{base}/v1/router/status", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"router at {base} never became ready")


def _question(policy: str, a: int, b: int) -> dict[str, Any]:
    return {
        "model": policy,
        "messages": [{"role": "user", "content": f"What is {a} + {b}?"}],
        "temperature": 0,
        "max_tokens": 8,
    }


def _ask(base: str, policy: str, a: int, b: int) -> Any:
    """One routed chat question, with the raw response so headers can be read."""
    return client(base).chat.completions.with_raw_response.create(**_question(policy, a, b))


def _stream(base: str, policy: str, a: int, b: int) -> list[Any]:
    """The chunks of one routed chat question, streamed."""
    return list(client(base).chat.completions.create(**_question(policy, a, b), stream=True))


def _status(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/v1/router/status", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def _rate(base: str, answer_id: str, correct: bool) -> httpx.Response:
    return httpx.post(f"{base}/v1/feedback", json={"id": answer_id, "correct": correct}, timeout=10)


def test_cost_of_pass_moves_to_the_model_that_is_right(routers: Any) -> None:
    """Both targets start equally unknown, so the cheap one is tried; feedback that it is
    wrong drops it below minQuality, and the dearer, correct one takes over."""
    policy = {"targets": [BIG, TINY], "strategy": "CostOfPass", "objectives": {"minQuality": 0.3}}
    base = routers("cop", policy)
    targets = []
    for a, b in QUESTIONS * 2:
        raw = _ask(base, "cop", a, b)
        answer = raw.parse()
        target = raw.headers["x-modelfleet-target"]
        targets.append(target)
        correct = answer.choices[0].message.content.strip() == str(a + b)
        assert _rate(base, answer.id, correct).json()["target"] == target
    assert (
        targets[0] == "tiny"
        and "CostOfPass" in _ask(base, "cop", 1, 2).headers["x-modelfleet-route"]
    )
    assert targets[1:] == ["big"] * (len(targets) - 1), targets
    status = _status(base)
    assert status["decisions"]["tiny"] >= 1 and status["decisions"]["big"] >= 3
    assert status["feedback"] == len(QUESTIONS) * 2
    quality = {t["name"]: t.get("quality") for t in status["targets"]}
    assert quality["big"] >= 0.7 and quality["tiny"] == 0.0, "llama-arith adds, mini cannot"
    assert {p["target"] for p in status["profiles"]} == {"big", "tiny"}
    assert _rate(base, answer.id, True).status_code == 404, "an answer is rated once"

    successor = routers("cop-restarted", policy, learned=status["profiles"])
    assert _status(successor)["profiles"] == status["profiles"]
    first = _ask(successor, "cop-restarted", 1, 2).headers["x-modelfleet-target"]
    assert first == "big", "a new router starts from what its predecessor learned"


def test_a_failing_target_falls_through_and_streams_relay(routers: Any, pool: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    heavy_dead = {**TINY, "weight": 1000.0}
    policy = {"targets": [heavy_dead, {**BIG, "weight": 0.001}], "strategy": "Weighted"}
    base = routers("fall", policy, {"tiny": dead, "big": f"{pool}/v1"})
    whole = _ask(base, "fall", 347, 85)
    assert whole.headers["x-modelfleet-target"] == "big"
    expected = whole.parse().choices[0].message.content
    assert expected == "432"
    chunks = _stream(base, "fall", 347, 85)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert all(c.usage is None for c in chunks), "usage only when the client asks for it"
    with_usage = list(
        client(base).completions.create(
            model="fall",
            prompt="What is 1 + 2?",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0
    health = {t["name"]: t["healthy"] for t in _status(base)["targets"]}
    assert health == {"tiny": False, "big": True}


def test_cascade_escalates_only_when_unsure(routers: Any) -> None:
    sure = {"order": ["tiny", "big"], "confidenceThreshold": 0.95}
    base = routers("cascade", {"targets": [BIG, TINY], "strategy": "Cascade", "cascade": sure})
    raw = _ask(base, "cascade", 455, 31)
    assert raw.headers["x-modelfleet-target"] == "big"
    assert "escalated to big" in raw.headers["x-modelfleet-route"]
    assert raw.parse().choices[0].message.content == "486"
    assert raw.parse().choices[0].logprobs is None, "log-probabilities only when asked"
    lax = {"order": ["tiny", "big"], "confidenceThreshold": 0.0001}
    base = routers("lax", {"targets": [BIG, TINY], "strategy": "Cascade", "cascade": lax})
    raw = _ask(base, "lax", 455, 31)
    assert raw.headers["x-modelfleet-target"] == "tiny"
    assert re.search(r"stage 1 tiny confident", raw.headers["x-modelfleet-route"])
    streamed = _stream(base, "lax", 455, 31)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == raw.parse().choices[0].message.content


def test_capability_routes_each_kind_of_query_to_its_best_target(routers: Any) -> None:
    clusters = [
        {"name": "math", "examples": ["What is 12 + 7?", "What is 340 + 95?", "What is 5 + 81?"]},
        {"name": "words", "examples": ["Reverse: c a t", "Reverse: d o g s", "Reverse: b e e"]},
    ]
    profiles = [
        {"target": "big", "cluster": "math", "score": 0.95},
        {"target": "tiny", "cluster": "math", "score": 0.05},
        {"target": "big", "cluster": "words", "score": 0.1},
        {"target": "tiny", "cluster": "words", "score": 0.9},
    ]
    policy = {
        "targets": [BIG, TINY],
        "strategy": "Capability",
        "queryClusters": clusters,
        "capabilityProfiles": profiles,
    }
    base = routers("cap", policy)
    assert _ask(base, "cap", 208, 19).headers["x-modelfleet-target"] == "big"
    words = client(base).completions.with_raw_response.create(
        model="cap", prompt="Reverse: f o x", max_tokens=4
    )
    assert words.headers["x-modelfleet-target"] == "tiny"


def test_models_and_bad_requests_are_named(routers: Any) -> None:
    base = routers("named", {"targets": [BIG, TINY]})
    assert [m.id for m in client(base).models.list()] == ["named", "big", "tiny"]
    pinned = _ask(base, "tiny", 1, 2)
    assert pinned.headers["x-modelfleet-target"] == "tiny"
    with pytest.raises(openai.NotFoundError, match="neither this routing policy"):
        _ask(base, "nope", 1, 2)
    bad = httpx.post(f"{base}/v1/feedback", json={"id": 3}, timeout=10)
    assert bad.status_code == 400 and "correct" in bad.json()["error"]["message"]


def test_a_pool_and_its_router_deploy_together(serve_url: str) -> None:
    """Ray toggles pickling by value process-wide while it builds an application; both
    rollouts, started at once on two threads, must still succeed."""
    spec = {**SPEC, "models": SPEC["models"][1:]}  # type: ignore[index]
    policy = {"targets": [TINY], "auth": {"mode": "None"}}
    config = {"policyName": "together", "policy": policy, "endpoints": {}}
    with ThreadPoolExecutor(max_workers=2) as pool:
        rollouts = [
            pool.submit(deploy_pool, spec, name="together-pool", route_prefix="/together-pool"),
            pool.submit(deploy_router, config, name="together", route_prefix="/together"),
        ]
        for rollout in rollouts:
            rollout.result(timeout=240)
    try:
        assert httpx.get(f"{serve_url}/together/v1/models", timeout=10).status_code == 200
        assert httpx.get(f"{serve_url}/together-pool/v1/models", timeout=10).status_code == 200
    finally:
        serve.delete("together")
        serve.delete("together-pool")
