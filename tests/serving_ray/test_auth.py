"""API keys and per-key limits on a real pool and router, through the official client.

The pool reads its keys from a directory in a Secret volume's layout, written here the
way the local backend writes it; rotating the files must take effect without a restart.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ray import serve

from modelfleet.backends.key_files import write_key_files
from modelfleet.routing.app import deploy as deploy_router
from modelfleet.serving.app import deploy
from tests.serving_ray.conftest import MODEL, pool_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RIGHT, OTHER, ROTATED = "sk-team-a-8c1f", "sk-team-b-77d0", "sk-team-a-rotated-41aa"
KEYS = {"team-a": RIGHT, "team-b": OTHER}
LIMITED_RPM = 30
AUTH = {
    "mode": "ApiKey",
    "secretName": "keys",
    "keys": [{"name": "team-b", "requestsPerMinute": LIMITED_RPM}],
}


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("api-keys")
    write_key_files(directory, KEYS)
    return directory


@pytest.fixture(scope="module")
def guarded(serve_url: str, keys_dir: Path) -> Iterator[str]:
    """A pool that checks the keys of ``keys_dir``; its base URL."""
    spec = {**pool_spec(1), "auth": AUTH, "apiKeysDir": str(keys_dir)}
    deploy(spec, name="guarded", route_prefix="/guarded")
    yield f"{serve_url}/guarded"
    serve.delete("guarded")


def keyed(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def ask(base: str, key: str) -> Any:
    return keyed(base, key).completions.create(model=MODEL, prompt="hi", max_tokens=2)


def test_no_key_and_a_wrong_key_get_401_and_the_right_key_gets_an_answer(guarded: str) -> None:
    bare = httpx.post(
        f"{guarded}/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=60
    )
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert "didn't provide an API key" in bare.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as wrong:
        ask(guarded, "sk-not-a-key")
    assert wrong.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        keyed(guarded, "sk-not-a-key").models.list()
    assert ask(guarded, RIGHT).choices[0].text is not None
    assert [m.id for m in keyed(guarded, RIGHT).models.list()] == [MODEL]


def test_over_the_limit_is_429_with_retry_after_and_the_next_window_succeeds(
    guarded: str,
) -> None:
    client = keyed(guarded, OTHER)
    for _ in range(LIMITED_RPM):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.models.list()
    retry_after = int(limited.value.response.headers["retry-after"])
    assert retry_after == 60 // LIMITED_RPM
    assert ask(guarded, RIGHT).choices, "the other key's bucket is its own"
    time.sleep(retry_after)
    assert [m.id for m in client.models.list()] == [MODEL]


def test_a_thousand_wrong_keys_leave_the_right_key_served(guarded: str) -> None:
    def attempt(index: int) -> int:
        headers = {"Authorization": f"Bearer sk-guess-{index:04d}"}
        return httpx.get(f"{guarded}/v1/models", headers=headers, timeout=60).status_code

    refused_before = refused(guarded)
    with ThreadPoolExecutor(max_workers=8) as threads:
        codes = list(threads.map(attempt, range(1000)))
    assert codes == [401] * 1000
    assert ask(guarded, RIGHT).choices
    assert refused(guarded) - refused_before == 1000
    metrics = httpx.get(f"{guarded}/metrics", timeout=60).text
    assert 'modelfleet_api_completion_tokens_total{key="team-a"}' in metrics
    assert RIGHT not in metrics and OTHER not in metrics


def refused(base: str) -> float:
    """Requests the pool refused for an invalid key so far, from its /metrics."""
    metrics = httpx.get(f"{base}/metrics", timeout=60).text
    found = re.search(r'refused_requests_total\{reason="invalid_key"\} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_router_forwards_the_callers_key_and_checks_its_own(
    guarded: str, serve_url: str, keys_dir: Path
) -> None:
    target = {"name": "only", "pool": "guarded", "model": MODEL}
    for name, auth in (
        ("keyed-router", {"mode": "ApiKey", "secretName": "keys"}),
        ("open-router", {"mode": "None"}),
    ):
        config = {
            "policyName": name,
            "policy": {"targets": [target], "auth": auth},
            "endpoints": {"only": f"{guarded}/v1"},
            "apiKeysDir": str(keys_dir),
        }
        deploy_router(config, name=name, route_prefix=f"/{name}")
    keyed_router, open_router = f"{serve_url}/keyed-router", f"{serve_url}/open-router"
    try:
        reply = keyed(keyed_router, RIGHT).chat.completions.create(
            model="keyed-router", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.choices, "the pool accepted the key the router forwarded"
        with pytest.raises(openai.AuthenticationError):
            ask(keyed_router, "sk-not-a-key")
        bare = httpx.post(
            f"{open_router}/v1/completions",
            json={"model": "open-router", "prompt": "hi", "max_tokens": 2},
            timeout=60,
        )
        assert bare.status_code == 401, "an open router sends no key, and the pool wants one"
        passed = keyed(open_router, RIGHT).completions.create(
            model="open-router", prompt="hi", max_tokens=2
        )
        assert passed.choices, "a caller's own key passes through"
    finally:
        serve.delete("keyed-router")
        serve.delete("open-router")


def test_rotating_the_keys_revokes_the_old_one_without_a_restart(
    guarded: str, keys_dir: Path
) -> None:
    write_key_files(keys_dir, {**KEYS, "team-a": ROTATED})
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                ask(guarded, RIGHT)
            except openai.AuthenticationError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the old key was still accepted 10 s after the rotation")
        assert ask(guarded, ROTATED).choices
    finally:
        write_key_files(keys_dir, KEYS)
