"""The check every request of a pool or router endpoint passes: key, limits, usage.

One :class:`AccessGate` per ingress replica. It answers 401 (OpenAI's error body, no hint
of what was wrong with a key) and 429 with ``Retry-After``, caps a request's priority at
its key's, and counts requests and tokens per key id (never the key) in Prometheus
metrics that the endpoint serves at ``/metrics`` for charge-back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, generate_latest

from modelfleet.access.keys import KeyFiles
from modelfleet.access.limits import Limit, RateLimiter
from modelfleet.api.auth import Auth, AuthMode, KeyLimits
from modelfleet.core.openai_api import ApiError

ANONYMOUS = "anonymous"
"""The key id of every request to an endpoint with ``auth.mode: None``."""
MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
INVALID_KEY = "Incorrect API key provided."


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, as far as limits and priority are concerned."""

    key_id: str
    limits: KeyLimits

    def priority(self, asked: int, explicit: bool) -> int:
        """The request's dispatch priority: its key's, or less if the request asks less."""
        if self.limits.priority is None:
            return asked
        return min(asked, self.limits.priority) if explicit else self.limits.priority


def bearer_key(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header, ``None`` if there is none."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def unauthorized(message: str, code: str | None) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def rate_limited(caller: Caller, kind: Limit, limit: int, wait_s: float) -> ApiError:
    retry_after = max(1, math.ceil(wait_s))
    return ApiError(
        429,
        f"Rate limit reached for {kind.value} per minute on key {caller.key_id!r}: limit "
        f"{limit}; retry after {retry_after} s.",
        code="rate_limit_exceeded",
        kind=kind.value,
        headers={"Retry-After": str(retry_after)},
    )


class UsageMetrics:
    """Per-key counters in a registry of the endpoint's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_api_requests",
            "Requests admitted, by key id.",
            ["key"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "modelfleet_api_prompt_tokens",
            "Prompt tokens of admitted requests, by key id.",
            ["key"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "modelfleet_api_completion_tokens",
            "Completion tokens generated, by key id.",
            ["key"],
            registry=self.registry,
        )
        self.refused = Counter(
            "modelfleet_api_refused_requests",
            "Requests refused: unauthenticated (missing or invalid key) or rate limited.",
            ["reason"],
            registry=self.registry,
        )


class AccessGate:
    """Authenticates, limits and meters the requests of one endpoint."""

    def __init__(self, keys_dir: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = KeyFiles(keys_dir, clock=clock) if keys_dir else None
        self._clock = clock
        self._auth = Auth(mode=AuthMode.NONE)
        self._limiter = RateLimiter()
        self.usage = UsageMetrics()

    def configure(self, auth: Auth) -> None:
        """Apply a changed ``spec.auth`` in place: limits change, buckets carry on."""
        self._auth = auth

    def admit(self, authorization: str | None) -> Caller:
        """The caller of a request, one request taken from its key's allowance; raises
        :class:`ApiError` 401 or 429."""
        caller = self._identify(authorization)
        limit = caller.limits.requests_per_minute
        wait = self._limiter.admit(caller.key_id, Limit.REQUESTS, 1, limit, self._clock())
        if wait > 0 and limit is not None:
            self.usage.refused.labels(reason="requests_per_minute").inc()
            raise rate_limited(caller, Limit.REQUESTS, limit, wait)
        self.usage.requests.labels(key=caller.key_id).inc()
        return caller

    def admit_tokens(self, caller: Caller, prompt_tokens: int) -> None:
        """Take a request's prompt tokens from its key's allowance, or raise 429."""
        limit = caller.limits.tokens_per_minute
        wait = self._limiter.admit(caller.key_id, Limit.TOKENS, prompt_tokens, limit, self._clock())
        if wait > 0 and limit is not None:
            self.usage.refused.labels(reason="tokens_per_minute").inc()
            raise rate_limited(caller, Limit.TOKENS, limit, wait)
        self.usage.prompt_tokens.labels(key=caller.key_id).inc(prompt_tokens)

    def record_completion(
        self, caller: Caller, completion_tokens: int, prompt_tokens: int = 0
    ) -> None:
        """Charge the tokens a finished (or cut short) completion generated, and prompt
        tokens learnt only afterwards (a router sees them in the pool's usage)."""
        self._limiter.charge(
            caller.key_id,
            Limit.TOKENS,
            completion_tokens + prompt_tokens,
            caller.limits.tokens_per_minute,
            self._clock(),
        )
        self.usage.completion_tokens.labels(key=caller.key_id).inc(completion_tokens)
        self.usage.prompt_tokens.labels(key=caller.key_id).inc(prompt_tokens)

    def metrics(self) -> bytes:
        """The endpoint's usage metrics in Prometheus' text format."""
        return generate_latest(self.usage.registry)

    def _identify(self, authorization: str | None) -> Caller:
        if self._auth.mode is AuthMode.NONE:
            return Caller(ANONYMOUS, KeyLimits(name=ANONYMOUS))
        key = bearer_key(authorization)
        if key is None:
            self.usage.refused.labels(reason="missing_key").inc()
            raise unauthorized(MISSING_KEY, None)
        key_id = None if self._keys is None else self._keys.ring().match(key)
        if key_id is None:
            self.usage.refused.labels(reason="invalid_key").inc()
            raise unauthorized(INVALID_KEY, "invalid_api_key")
        return Caller(key_id, self._auth.limits_of(key_id))
