"""API keys, token buckets and the gate in front of every endpoint, without Ray.

Buckets are checked against their closed form (a burst of the limit, then the limit's
rate) and, with hypothesis, against the bound any token bucket must keep over a window.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.access.gate import ANONYMOUS, AccessGate, bearer_key
from modelfleet.access.keys import KeyFiles, KeyRing, digest, read_key_ring
from modelfleet.access.limits import Limit, RateLimiter, TokenBucket
from modelfleet.api.auth import Auth, AuthMode
from modelfleet.backends.key_files import write_key_files
from modelfleet.core.openai_api import ApiError

RIGHT = "sk-right-key-0123456789"


class Clock:
    """Monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def keyed_gate(tmp_path: Path, **auth: object) -> tuple[AccessGate, Clock]:
    write_key_files(tmp_path / "keys", {"team-a": RIGHT + "\n", "team-b": "sk-other"})
    clock = Clock()
    gate = AccessGate(str(tmp_path / "keys"), clock=clock)
    gate.configure(Auth.model_validate({"mode": "ApiKey", "secretName": "keys", **auth}))
    return gate, clock


def refusal(gate: AccessGate, header: str | None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        gate.admit(header)
    return caught.value


def test_a_ring_names_the_key_presented_and_nothing_else() -> None:
    ring = KeyRing((("a", digest("one")), ("b", digest("two"))))
    assert (ring.match("one"), ring.match("two"), ring.match("three"), ring.match("")) == (
        "a",
        "b",
        None,
        None,
    )


def test_a_secret_volume_is_read_without_the_kubelets_bookkeeping(tmp_path: Path) -> None:
    write_key_files(tmp_path, {"team-a": "k1\n", "empty": "  "})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "..data" in names and "empty" in names and "team-a" in names
    ring = read_key_ring(tmp_path)
    assert [key_id for key_id, _ in ring.digests] == ["team-a"]
    assert ring.match("k1") == "team-a", "a trailing newline is not part of the key"


def test_rotated_keys_are_read_again_once_the_recheck_interval_passes(tmp_path: Path) -> None:
    clock = Clock()
    write_key_files(tmp_path, {"team-a": "old"})
    files = KeyFiles(str(tmp_path), recheck_s=1.0, clock=clock)
    assert files.ring().match("old") == "team-a"
    assert write_key_files(tmp_path, {"team-a": "new"})
    assert files.ring().match("old") == "team-a", "within the interval the ring is cached"
    clock.now += 1.0
    assert (files.ring().match("old"), files.ring().match("new")) == (None, "team-a")
    assert not write_key_files(tmp_path, {"team-a": "new"}), "unchanged keys are not rewritten"


def test_a_missing_directory_refuses_every_key(tmp_path: Path) -> None:
    assert len(KeyFiles(str(tmp_path / "nowhere")).ring()) == 0


def test_removed_keys_leave_no_file_behind(tmp_path: Path) -> None:
    write_key_files(tmp_path, {"a": "1", "b": "2"})
    write_key_files(tmp_path, {"b": "3"})
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["b"]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("..20")]) == 1
    assert read_key_ring(tmp_path).match("3") == "b"
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700"


def test_the_bearer_scheme_is_required() -> None:
    assert bearer_key("Bearer abc") == bearer_key("bearer  abc ") == "abc"
    assert bearer_key("Basic abc") is None and bearer_key("Bearer ") is None
    assert bearer_key(None) is None


def test_missing_and_wrong_keys_get_openais_401s(tmp_path: Path) -> None:
    gate, _ = keyed_gate(tmp_path)
    missing, wrong = refusal(gate, None), refusal(gate, "Bearer sk-wrong")
    assert (missing.status, missing.code, missing.headers) == (
        401,
        None,
        {"WWW-Authenticate": "Bearer"},
    )
    assert "Authorization header using Bearer auth" in missing.message
    assert (wrong.status, wrong.code, wrong.body()["error"]["type"]) == (
        401,
        "invalid_api_key",
        "invalid_request_error",
    )
    assert "sk-wrong" not in wrong.message, "a presented key is never echoed"
    assert gate.admit(f"Bearer {RIGHT}").key_id == "team-a"


def test_requests_per_minute_burst_then_follow_the_rate(tmp_path: Path) -> None:
    gate, clock = keyed_gate(tmp_path, requestsPerMinute=30)
    for _ in range(30):
        gate.admit(f"Bearer {RIGHT}")
    limited = refusal(gate, f"Bearer {RIGHT}")
    assert (limited.status, limited.code, limited.kind) == (429, "rate_limit_exceeded", "requests")
    assert limited.headers == {"Retry-After": "2"}, "one request refills in 60/30 s"
    assert gate.admit("Bearer sk-other").key_id == "team-b", "each key has its own bucket"
    clock.now += 2.0
    gate.admit(f"Bearer {RIGHT}")


def test_tokens_are_charged_after_the_fact_and_a_key_in_debt_waits(tmp_path: Path) -> None:
    gate, clock = keyed_gate(tmp_path, tokensPerMinute=600)
    caller = gate.admit(f"Bearer {RIGHT}")
    gate.admit_tokens(caller, 100)
    gate.record_completion(caller, 800)
    with pytest.raises(ApiError) as caught:
        gate.admit_tokens(caller, 10)
    assert caught.value.headers["Retry-After"] == str(math.ceil((300 + 10) / 10))
    clock.now += 31.0
    gate.admit_tokens(caller, 10)


def test_per_key_entries_override_the_defaults_and_cap_priority(tmp_path: Path) -> None:
    gate, _ = keyed_gate(
        tmp_path,
        requestsPerMinute=1,
        keys=[{"name": "team-a", "requestsPerMinute": 100, "priority": 5}],
    )
    vip = gate.admit(f"Bearer {RIGHT}")
    gate.admit(f"Bearer {RIGHT}")
    assert (vip.priority(0, explicit=False), vip.priority(50, True), vip.priority(-3, True)) == (
        5,
        5,
        -3,
    )
    other = gate.admit("Bearer sk-other")
    assert other.priority(50, True) == 50, "a key without a priority leaves the request's"
    assert refusal(gate, "Bearer sk-other").status == 429


def test_usage_is_counted_by_key_id_never_by_key(tmp_path: Path) -> None:
    gate, _ = keyed_gate(tmp_path)
    caller = gate.admit(f"Bearer {RIGHT}")
    gate.admit_tokens(caller, 7)
    gate.record_completion(caller, 3)
    refusal(gate, "Bearer sk-wrong")
    text = gate.metrics().decode()
    assert 'modelfleet_api_requests_total{key="team-a"} 1.0' in text
    assert 'modelfleet_api_prompt_tokens_total{key="team-a"} 7.0' in text
    assert 'modelfleet_api_completion_tokens_total{key="team-a"} 3.0' in text
    assert 'modelfleet_api_refused_requests_total{reason="invalid_key"} 1.0' in text
    assert RIGHT not in text and "sk-wrong" not in text


def test_mode_none_admits_anyone_as_anonymous(tmp_path: Path) -> None:
    gate = AccessGate("")
    gate.configure(Auth(mode=AuthMode.NONE))
    assert gate.admit(None).key_id == gate.admit("Bearer whatever").key_id == ANONYMOUS


def test_a_changed_limit_starts_a_fresh_bucket() -> None:
    limiter = RateLimiter()
    assert limiter.admit("k", Limit.REQUESTS, 1, 1, now=0.0) == 0.0
    assert limiter.admit("k", Limit.REQUESTS, 1, 1, now=0.0) == pytest.approx(60.0)
    assert limiter.admit("k", Limit.REQUESTS, 1, 2, now=0.0) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=600),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=300),
)
def test_a_bucket_never_admits_more_than_its_burst_plus_its_rate(
    limit: int, gaps: list[float]
) -> None:
    """Over any window of length T a token bucket admits at most limit + T*limit/60, and
    it refuses only when a unit is truly missing (its wait is exact)."""
    bucket = TokenBucket.per_minute(limit, now=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.wait_for(1, now)
        if wait == 0.0:
            bucket.take(1, now)
            admitted += 1
        else:
            assert bucket.level < 1
            assert wait == pytest.approx((1 - bucket.level) * 60 / limit)
    assert admitted <= limit + now * limit / 60 + 1e-9
