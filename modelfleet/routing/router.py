"""The router behind a RoutingPolicy's endpoint: classify, choose, forward, learn.

One :class:`Router` per router replica. For each request it finds the query's cluster
(sentence embedding, nearest declared cluster), estimates each target's success from
profiles and feedback, asks the policy's strategy for an order of targets, and forwards
the request to the first that answers: a target that fails before its first token is
skipped for the next, and marked unhealthy for a while. Streams are relayed event by
event, never buffered. Answers are remembered by id so that feedback (correct or not)
lands on the target and cluster that produced them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import httpx
import numpy as np
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field

from modelfleet.access.gate import AccessGate, Caller
from modelfleet.api.common import ApiModel
from modelfleet.api.routingpolicy import RoutingPolicySpec
from modelfleet.core.openai_api import ApiError
from modelfleet.routing.clusters import ClusterIndex, assign, build_index
from modelfleet.routing.profiles import NO_CLUSTER, ProfileBook, import_learned
from modelfleet.routing.strategies import (
    Candidate,
    Objectives,
    Route,
    RouteContext,
    choose_route,
    estimate_difficulty,
)
from modelfleet.routing.telemetry import Ledger, TargetTelemetry
from modelfleet.routing.wire import (
    answer_as_events,
    ask_logprobs,
    cap_tokens,
    confidence,
    event_payload,
    parse_body,
    query_text,
    strip_logprobs,
    total_tokens,
)

REMEMBERED_ANSWERS = 100_000
"""Answers kept for feedback; older ones can no longer be rated."""
TARGET_HEADER = "x-modelfleet-target"
REASON_HEADER = "x-modelfleet-route"
RETRYABLE = {404, 408, 429, 500, 502, 503, 504}
"""Upstream statuses that mean: this target cannot answer now, another may."""


class RouterConfig(ApiModel):
    """The router deployment's arguments: the policy, where its targets answer, and the
    outcomes learned by earlier routers (used when this one starts)."""

    policy_name: str = Field(min_length=1)
    policy: RoutingPolicySpec
    endpoints: dict[str, str] = Field(
        default_factory=dict, description="Target name to its pool's OpenAI base URL."
    )
    learned: list[dict[str, Any]] = Field(default_factory=list)
    api_keys_dir: str = Field(
        default="", description="Where the keys of spec.auth are; set by the backend."
    )


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Query:
    """One request as the router decides on it."""

    payload: dict[str, Any]
    chat: bool
    cluster: str
    streaming: bool
    wants_usage: bool
    wants_logprobs: bool
    caller: Caller
    credentials: str | None
    """The caller's ``Authorization`` header, forwarded to the pools as it came."""


@dataclass(frozen=True)
class Answered:
    """Which target produced an answer and for which cluster, for feedback."""

    target: str
    cluster: str


class Router:
    """Routes OpenAI requests across a policy's targets and learns from feedback."""

    def __init__(
        self,
        config: dict[str, Any],
        encoder_factory: Callable[[], Encoder],
        rng: random.Random | None = None,
    ) -> None:
        parsed = RouterConfig.model_validate(config)
        self._encoder_factory = encoder_factory
        self._encoder: Encoder | None = None
        self._rng = rng or random.Random()
        self._book = ProfileBook({}, import_learned(parsed.learned))
        self._telemetry: dict[str, TargetTelemetry] = {}
        self._ledger = Ledger()
        self._answers: OrderedDict[str, Answered] = OrderedDict()
        self._client: httpx.AsyncClient | None = None
        self._index: ClusterIndex | None = None
        self._config = parsed
        self._gate = AccessGate(parsed.api_keys_dir)
        self._apply(parsed)

    def configure(self, config: dict[str, Any]) -> None:
        """Apply a new policy or new endpoints in place; what was learned is kept."""
        parsed = RouterConfig.model_validate(config)
        if parsed.policy.query_clusters != self._config.policy.query_clusters:
            self._index = None
        if parsed.api_keys_dir != self._config.api_keys_dir:
            self._gate = AccessGate(parsed.api_keys_dir)
        self._config = parsed
        self._apply(parsed)

    def _apply(self, config: RouterConfig) -> None:
        """Priors, telemetry slots and the by-name view of the current policy's targets."""
        spec = config.policy
        self._targets = {target.name: target for target in spec.targets}
        self._gate.configure(spec.auth)
        self._book.set_priors({(p.target, p.cluster): p.score for p in spec.capability_profiles})
        for name in self._targets:
            self._telemetry.setdefault(name, TargetTelemetry())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # ---- requests -------------------------------------------------------------------

    def admit(self, authorization: str | None) -> Caller:
        """The caller of a request by its ``Authorization`` header; 401 or 429 if refused."""
        return self._gate.admit(authorization)

    def metrics(self) -> bytes:
        """Requests and tokens per key id, in Prometheus' text format."""
        return self._gate.metrics()

    async def complete(
        self, body: bytes, chat: bool, caller: Caller, credentials: str | None
    ) -> Response:
        """``POST /v1/completions`` or ``/v1/chat/completions``, routed. The router has no
        tokenizer, so a key's tokens are charged from the pools' usage once answered."""
        self._gate.admit_tokens(caller, 0)
        payload = parse_body(body)
        pinned = self._pinned_target(payload.get("model"))
        cluster = await self._classify(query_text(payload, chat))
        options = payload.get("stream_options") or {}
        query = Query(
            payload=payload,
            chat=chat,
            cluster=cluster,
            streaming=bool(payload.get("stream")),
            wants_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            wants_logprobs=bool(payload.get("logprobs")),
            caller=caller,
            credentials=credentials,
        )
        route = (
            Route((pinned,), f"pinned: model names target {pinned}")
            if pinned
            else choose_route(self._context(cluster))
        )
        if route.confidence_threshold is not None and len(route.order) > 1:
            return await self._cascade(query, route)
        return await self._forward(query, route, route.order)

    def _pinned_target(self, model: Any) -> str | None:
        """A target named as ``model`` is used as is; the policy's name routes."""
        names = list(self._targets)
        if model == self._config.policy_name:
            return None
        if model in self._targets:
            return str(model)
        raise ApiError(
            404,
            f"model: {model!r} is neither this routing policy "
            f"({self._config.policy_name!r}) nor one of its targets {names}",
            param="model",
            code="model_not_found",
        )

    async def _classify(self, text: str) -> str:
        """The query's cluster: the nearest declared cluster by sentence embedding."""
        clusters = self._config.policy.query_clusters
        if not clusters:
            return NO_CLUSTER
        encoder = await self._ensure_encoder()
        if self._index is None:
            examples = {
                c.name: await asyncio.to_thread(encoder.encode, list(c.examples)) for c in clusters
            }
            self._index = build_index(examples)
        vector = await asyncio.to_thread(encoder.encode, [text])
        return assign(self._index, vector)[0]

    async def _ensure_encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = await asyncio.to_thread(self._encoder_factory)
        return self._encoder

    def _context(self, cluster: str) -> RouteContext:
        """What the strategy sees: every target's estimate for this cluster and telemetry."""
        spec = self._config.policy
        now = time.monotonic()
        candidates = []
        for target in spec.targets:
            seen = self._telemetry[target.name]
            reachable = target.name in self._config.endpoints
            candidates.append(
                Candidate(
                    name=target.name,
                    success=self._book.success(target.name, cluster),
                    cost_per_1k=_estimate(target.cost_per_1k_tokens),
                    weight=target.weight,
                    healthy=reachable and seen.healthy(now),
                    latency_ms=seen.latency_ms,
                    ttft_ms=seen.ttft_ms,
                    tokens=seen.tokens,
                    reasoning=target.reasoning,
                )
            )
        informed = self._book.informed(cluster)
        difficulty = estimate_difficulty([c.success for c in candidates] if informed else [])
        objectives = spec.objectives
        return RouteContext(
            strategy=spec.strategy,
            candidates=tuple(candidates),
            objectives=Objectives(
                objectives.min_quality,
                _estimate(objectives.max_cost_per_1k_tokens),
                objectives.latency_budget_ms,
            ),
            cascade=tuple(spec.cascade.order) if spec.cascade else (),
            confidence_threshold=spec.cascade.confidence_threshold if spec.cascade else 0.8,
            fallback=spec.fallback,
            draw=self._rng.random(),
            difficulty=difficulty,
            budgets={b.difficulty: b.max_tokens for b in spec.thinking_budgets},
        )

    # ---- forwarding -----------------------------------------------------------------

    async def _forward(self, query: Query, route: Route, order: tuple[str, ...]) -> Response:
        """The first target of ``order`` that answers; 503 naming each failure if none."""
        failures = []
        for target in order:
            payload = self._upstream_payload(query, route, target)
            try:
                if query.streaming:
                    return await self._stream(query, route, target, payload)
                answer = await self._call(query, target, payload)
            except _TargetFailed as failed:
                failures.append(f"{target}: {failed}")
                continue
            self._record_answer(query, target, answer)
            body = answer if query.wants_logprobs else strip_logprobs(answer)
            return JSONResponse(body, headers=_route_headers(target, route.reason))
        raise ApiError(
            503,
            f"no target of routing policy {self._config.policy_name!r} could answer: "
            + "; ".join(failures),
            code="no_target_available",
            headers={"Retry-After": "1"},
        )

    async def _cascade(self, query: Query, route: Route) -> Response:
        """Cheapest first; accept a stage's answer when its confidence reaches the
        threshold, else pay for it and escalate. The last stage answers as asked."""
        threshold = route.confidence_threshold or 0.0
        for position, target in enumerate(route.order[:-1]):
            payload = ask_logprobs(self._upstream_payload(query, route, target), query.chat)
            payload = {**payload, "stream": False}
            payload.pop("stream_options", None)
            try:
                answer = await self._call(query, target, payload)
            except _TargetFailed:
                continue
            score = confidence(answer)
            if score < threshold:
                self._spend(query, target, answer)
                continue
            reason = f"{route.reason}; stage {position + 1} {target} confident ({score:.2f})"
            self._record_answer(query, target, answer)
            body = answer if query.wants_logprobs else strip_logprobs(answer)
            headers = _route_headers(target, reason)
            if query.streaming:
                events = answer_as_events(body, query.chat, query.wants_usage)
                return StreamingResponse(
                    _iterate(events), media_type="text/event-stream", headers=headers
                )
            return JSONResponse(body, headers=headers)
        escalated = Route(route.order, f"{route.reason}; escalated to {route.order[-1]}")
        return await self._forward(query, escalated, route.order[-1:])

    def _upstream_payload(self, query: Query, route: Route, target: str) -> dict[str, Any]:
        payload = {**query.payload, "model": self._targets[target].model}
        return cap_tokens(payload, query.chat, route.max_tokens.get(target))

    def _url(self, target: str, chat: bool) -> str:
        base = self._config.endpoints.get(target)
        if base is None:
            raise _TargetFailed("its ModelPool has no endpoint yet")
        return base.rstrip("/") + ("/chat/completions" if chat else "/completions")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(connect=2.0, read=600.0, write=30.0, pool=30.0)
            self._client = httpx.AsyncClient(timeout=timeout)
        return self._client

    async def _call(self, query: Query, target: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming upstream request; client errors pass through as they are."""
        started = time.monotonic()
        try:
            response = await self._http().post(
                self._url(target, query.chat), json=payload, headers=_forwarded(query)
            )
        except httpx.HTTPError as error:
            self._fail(target)
            raise _TargetFailed(f"{type(error).__name__}: {error}") from error
        if response.status_code in RETRYABLE:
            self._fail(target)
            raise _TargetFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise _client_error(response.status_code, response.json())
        answer: dict[str, Any] = response.json()
        answer["_latency_ms"] = 1000.0 * (time.monotonic() - started)
        return answer

    async def _stream(
        self, query: Query, route: Route, target: str, payload: dict[str, Any]
    ) -> Response:
        """Open the upstream stream and wait for its first event before committing to
        this target; then relay events as they come."""
        started = time.monotonic()
        payload = {**payload, "stream_options": {"include_usage": True}}
        client = self._http()
        request = client.build_request(
            "POST", self._url(target, query.chat), json=payload, headers=_forwarded(query)
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as error:
            self._fail(target)
            raise _TargetFailed(f"{type(error).__name__}: {error}") from error
        if response.status_code >= 400:
            content = await response.aread()
            await response.aclose()
            if response.status_code in RETRYABLE:
                self._fail(target)
                raise _TargetFailed(f"HTTP {response.status_code}: {content[:200]!r}")
            raise _client_error(response.status_code, httpx.Response(200, content=content).json())
        lines = response.aiter_lines()
        try:
            first = await _first_event(lines)
        except httpx.HTTPError as error:
            await response.aclose()
            self._fail(target)
            raise _TargetFailed(f"the stream broke before its first token: {error}") from error
        ttft_ms = 1000.0 * (time.monotonic() - started)
        relay = self._relay(query, target, response, first, lines, started, ttft_ms)
        return StreamingResponse(
            relay, media_type="text/event-stream", headers=_route_headers(target, route.reason)
        )

    async def _relay(
        self,
        query: Query,
        target: str,
        response: httpx.Response,
        first: str,
        lines: AsyncIterator[str],
        started: float,
        ttft_ms: float,
    ) -> AsyncIterator[str]:
        """Relay the stream; keep the usage event only if the client asked for it."""
        answer: dict[str, Any] = {}
        try:
            async for line in _prepend(first, lines):
                event = event_payload(line)
                if event is not None:
                    answer.setdefault("id", event.get("id"))
                    if event.get("usage") and not event.get("choices"):
                        answer["usage"] = event["usage"]
                        if not query.wants_usage:
                            continue
                if line:
                    yield line + "\n\n"
        finally:
            await response.aclose()
            answer["_latency_ms"] = 1000.0 * (time.monotonic() - started)
            self._record_answer(query, target, answer, ttft_ms)

    # ---- learning -------------------------------------------------------------------

    def _fail(self, target: str) -> None:
        self._telemetry[target].record_failure(time.monotonic())

    def _spend(self, query: Query, target: str, answer: dict[str, Any]) -> None:
        """Book an answer's tokens against the policy's cost and the caller's key."""
        self._ledger.record_spend(total_tokens(answer), self._targets[target].cost_per_1k_tokens)
        usage = answer.get("usage") or {}
        self._gate.record_completion(
            query.caller,
            int(usage.get("completion_tokens") or 0),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
        )

    def _record_answer(
        self, query: Query, target: str, answer: dict[str, Any], ttft_ms: float | None = None
    ) -> None:
        latency = float(answer.pop("_latency_ms", 0.0))
        self._telemetry[target].record_answer(latency, total_tokens(answer), ttft_ms)
        self._spend(query, target, answer)
        self._ledger.record_decision(target)
        answer_id = answer.get("id")
        if isinstance(answer_id, str) and answer_id:
            self._answers[answer_id] = Answered(target, query.cluster)
            while len(self._answers) > REMEMBERED_ANSWERS:
                self._answers.popitem(last=False)

    def feedback(self, body: bytes) -> dict[str, Any]:
        """``POST /v1/feedback`` ``{"id": <response id>, "correct": true|false}``.

        Each answer may be rated once; its target's profile for the answer's cluster moves.
        """
        payload = parse_body(body)
        answer_id, correct = payload.get("id"), payload.get("correct")
        if not isinstance(answer_id, str) or not isinstance(correct, bool):
            raise ApiError(400, "feedback needs {'id': <response id>, 'correct': true|false}")
        answered = self._answers.pop(answer_id, None)
        if answered is None:
            raise ApiError(
                404,
                f"id: {answer_id!r} is not an unrated answer of this router (each answer is "
                f"rated once; the last {REMEMBERED_ANSWERS} are kept)",
                param="id",
            )
        self._book.record(answered.target, answered.cluster, correct)
        self._telemetry[answered.target].record_outcome(correct)
        self._ledger.record_outcome(correct)
        return {"id": answer_id, "target": answered.target, "cluster": answered.cluster}

    # ---- reporting ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Decisions, per-target telemetry, observed quality and cost, learned profiles."""
        now = time.monotonic()
        return {
            "endpoint": "/v1",
            "decisions": dict(self._ledger.decisions),
            "targets": [
                self._telemetry[t.name].report(t.name, now) for t in self._config.policy.targets
            ],
            "observedQuality": self._ledger.quality(),
            "observedCostPer1kTokens": _money(self._ledger.cost_per_1k_tokens()),
            "spend": {"tokens": self._ledger.tokens, "cost": _money(self._ledger.cost)},
            "feedback": self._ledger.trials,
            "profiles": self._book.export(),
        }

    def list_models(self) -> dict[str, Any]:
        """The policy (route by strategy) and its targets (pinned), as ``GET /v1/models``."""
        names = [self._config.policy_name, *(t.name for t in self._config.policy.targets)]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "modelfleet"} for n in names]
        return {"object": "list", "data": data}


class _TargetFailed(Exception):
    """A target could not answer; the router tries the next one."""


def _client_error(status: int, body: Any) -> ApiError:
    """An upstream 4xx as the client's own error: every target would refuse it too."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return ApiError(
        status, str(error.get("message", body)), param=error.get("param"), code=error.get("code")
    )


def _estimate(money: Decimal | None) -> float | None:
    """A price in the strategies' units: they weigh expectations, which floats serve, while
    the ledger books the exact decimals."""
    return None if money is None else float(money)


def _money(amount: Decimal | None) -> str | None:
    """An amount as the status carries it: a decimal string."""
    return None if amount is None else format(amount, "f")


def _forwarded(query: Query) -> dict[str, str]:
    """The caller's credentials for the pool: its header as it came, never an empty one."""
    return {"Authorization": query.credentials} if query.credentials else {}


def _route_headers(target: str, reason: str) -> dict[str, str]:
    ascii_reason = reason.encode("ascii", "replace").decode()
    return {TARGET_HEADER: target, REASON_HEADER: ascii_reason}


async def _first_event(lines: AsyncIterator[str]) -> str:
    """The first ``data:`` line of a stream (an error if the stream ends before one)."""
    async for line in lines:
        if line.startswith("data:"):
            return line
    raise httpx.RemoteProtocolError("the stream ended without an event")


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    """``first``, then every line of ``rest``."""
    yield first
    async for line in rest:
        yield line


async def _iterate(events: list[str]) -> AsyncIterator[str]:
    for event in events:
        yield event
