"""The ModelPool's OpenAI endpoint behind the Serve deployment, and its serving options.

One :class:`PoolFrontend` per ingress replica parses requests, runs one
:class:`~modelfleet.serving.manager.PoolManager` per served model and turns token
streams into OpenAI responses and server-sent events.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field

from modelfleet.api.common import ApiModel
from modelfleet.api.modelpool import ModelPoolSpec, ServedModel, Slo
from modelfleet.serving.catalog import resolve_served_model
from modelfleet.serving.dispatch import DispatchPolicy
from modelfleet.serving.interface import TokenEvent
from modelfleet.serving.manager import MigrationReport, OverloadedError, PoolManager, PoolSettings
from modelfleet.serving.openai_api import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    TextDecoder,
    check_length,
    completion_body,
    overloaded,
    parse_request,
    sse,
    text_choice,
    unknown_model,
    usage,
)
from modelfleet.serving.replica import EngineSpec
from modelfleet.serving.slo import RequestTiming, SloWindow, time_per_output_token
from modelfleet.serving.tokenizer import ByteTokenizer
from modelfleet.serving.torch_engine import EngineConfig

OPTIONS_KEY = "servingOptions"
"""Optional key next to the spec fields in ``build``'s args; the operator leaves it out."""

DEFAULT_MAX_TOKENS = 16


class ServingOptions(ApiModel):
    """Runtime tuning that is not part of the ModelPool API; defaults suit the tiny models."""

    dispatch: DispatchPolicy = DispatchPolicy.LOAD_AWARE
    num_blocks: int = Field(default=256, ge=1)
    block_size: int = Field(default=16, ge=1)
    max_running: int = Field(default=32, ge=1)
    max_requests_per_replica: int = Field(default=64, ge=1)
    headroom_blocks: int = Field(default=32, ge=0)
    rebalance_below: float = Field(default=8.0, ge=0)
    replica_num_cpus: float = Field(default=1.0, ge=0)
    control_interval_s: float = Field(default=0.2, gt=0)
    retry_after_s: int = Field(default=1, ge=1)
    namespace: str = "modelfleet"


def split_args(args: dict[str, Any]) -> tuple[ModelPoolSpec, ServingOptions]:
    """The spec and the serving options in ``build``'s args (``ValueError`` if invalid)."""
    spec_wire = {key: value for key, value in args.items() if key != OPTIONS_KEY}
    return ModelPoolSpec.model_validate(spec_wire), ServingOptions.model_validate(
        args.get(OPTIONS_KEY, {})
    )


def pool_settings(
    model: ServedModel, spec: ModelPoolSpec, options: ServingOptions, app: str
) -> PoolSettings:
    """Scheduling settings of one served model's replicas (``ValueError`` for a bad URI)."""
    index = [m.name for m in spec.models].index(model.name)
    engine = EngineConfig(
        num_blocks=max(options.num_blocks, -(-model.max_model_len // options.block_size)),
        block_size=options.block_size,
        max_running=options.max_running,
    )
    return PoolSettings(
        model=model.name,
        engine=EngineSpec(resolve_served_model(model, index), engine),
        replicas=spec.replicas,
        dispatch=options.dispatch,
        migration=spec.migration.enabled,
        max_concurrent=spec.migration.max_concurrent,
        max_requests_per_replica=options.max_requests_per_replica,
        headroom_blocks=options.headroom_blocks,
        rebalance_below=options.rebalance_below,
        control_interval_s=options.control_interval_s,
        replica_num_cpus=options.replica_num_cpus,
        namespace=options.namespace,
        name_prefix=app,
    )


class PoolFrontend:
    """The pool's OpenAI endpoint logic and the home of its per-model managers.

    A plain class, so that the Serve deployment stays a thin shell: Serve pickles the
    deployment class by value, while this module is imported by reference.
    """

    def __init__(self, models: list[dict[str, Any]], options: dict[str, Any], app: str) -> None:
        self._models = [ServedModel.model_validate(m) for m in models]
        self._options = ServingOptions.model_validate(options)
        self._app = app
        self._tokenizer = ByteTokenizer()
        self._pools: dict[str, PoolManager] = {}
        self._slo = Slo()
        self._timings = SloWindow()

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply the spec: start the managers, or change replica counts in place."""
        spec = ModelPoolSpec.model_validate(config)
        self._slo = spec.slo
        for model in self._models:
            if model.name not in self._pools:
                settings = pool_settings(model, spec, self._options, self._app)
                self._pools[model.name] = PoolManager(settings)
            await self._pools[model.name].configure(
                spec.replicas, spec.migration.enabled, spec.migration.max_concurrent
            )

    async def shutdown(self) -> None:
        """Stop every manager and its replica actors."""
        for pool in self._pools.values():
            await pool.shutdown()

    async def apply(self, spec_wire: dict[str, Any], options: dict[str, Any]) -> bool:
        """Apply a spec in place; ``False`` when its models or options need a redeploy."""
        spec = ModelPoolSpec.model_validate(spec_wire)
        same = spec.models == self._models and options == self._options.to_wire()
        if same:
            await self.reconfigure(spec_wire)
        return same

    def list_models(self) -> dict[str, Any]:
        """The served models, as ``GET /v1/models`` lists them."""
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "modelfleet"}
            for m in self._models
        ]
        return {"object": "list", "data": data}

    async def complete(self, body: bytes, chat: bool) -> Response:
        """``POST /v1/completions`` or ``/v1/chat/completions``, streaming or not."""
        if chat:
            conversation = parse_request(ChatCompletionRequest, body)
            return await self._generate(conversation, conversation.text(), "messages", chat=True)
        completion = parse_request(CompletionRequest, body)
        return await self._generate(completion, completion.text(), "prompt", chat=False)

    def status(self) -> dict[str, Any]:
        """Ready replicas, migrations and recoveries per model, and the endpoint path."""
        models = {name: pool.status() for name, pool in self._pools.items()}
        return {
            "endpoint": "/v1",
            "readyReplicas": min((m["readyReplicas"] for m in models.values()), default=0),
            "migrations": sum(m["migrations"] for m in models.values()),
            "sloAttainment": self._timings.attainment(self._slo),
            "models": models,
        }

    async def migrate(self, request_id: str, target: str | None = None) -> MigrationReport | None:
        """Migrate a running request now (for tests, benchmarks and operators)."""
        request_id = internal_id(request_id)
        return await self._pool_of(request_id).migrate(request_id, target)

    def locate(self, request_id: str) -> str | None:
        """The replica actor a running request is on."""
        request_id = internal_id(request_id)
        return self._pool_of(request_id).locate(request_id)

    def _pool_of(self, request_id: str) -> PoolManager:
        model = request_id.rsplit("-", 1)[0]
        if model not in self._pools:
            raise ValueError(f"request_id {request_id!r} names no model of this pool")
        return self._pools[model]

    async def _generate(
        self, request: GenerationRequest, text: str, prompt_param: str, chat: bool
    ) -> Response:
        arrived = time.monotonic()
        model = next((m for m in self._models if m.name == request.model), None)
        if model is None or model.name not in self._pools:
            raise unknown_model(request.model, [m.name for m in self._models])
        prompt = self._tokenizer.encode(text)
        params = request.sampling(DEFAULT_MAX_TOKENS)
        check_length(len(prompt), params.max_tokens, model.max_model_len, prompt_param)
        try:
            stream = await self._pools[model.name].submit(prompt, params, request.priority)
        except OverloadedError as error:
            raise overloaded(str(error), self._options.retry_after_s) from error
        except ValueError as error:
            raise ApiError(400, str(error), param=prompt_param) from error
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{stream.request_id}"
        pool = self._pools[model.name]
        events = _timed(_events(stream.events), arrived, self._timings)
        if request.stream:
            body = _stream_sse(response_id, request, len(prompt), chat, events)
            return StreamingResponse(
                _cancel_on_exit(body, pool, stream.request_id), media_type="text/event-stream"
            )
        try:
            text_out, finish, tokens = await _collect(events)
        finally:
            await pool.cancel(stream.request_id)
        ids = tokens if request.return_token_ids else None
        choice = text_choice(text_out, finish, chat, stream=False, token_ids=ids)
        return JSONResponse(
            completion_body(
                response_id,
                request.model,
                [choice],
                chat,
                stream=False,
                usage=usage(len(prompt), len(tokens)),
            )
        )


def internal_id(response_id: str) -> str:
    """The manager's request id in a response id (``cmpl-``/``chatcmpl-`` + request id)."""
    for prefix in ("cmpl-", "chatcmpl-"):
        if response_id.startswith(prefix):
            return response_id.removeprefix(prefix)
    return response_id


async def _timed(
    events: AsyncIterator[TokenEvent], arrived: float, timings: SloWindow
) -> AsyncIterator[TokenEvent]:
    """Pass events on, recording the request's latencies as its client sees them once it
    finishes; a request cut short (client gone, error) is not a sample."""
    first: float | None = None
    async for event in events:
        elapsed = time.monotonic() - arrived
        first = elapsed if first is None else first
        if event.finished:
            tpot = time_per_output_token(first, elapsed, event.index + 1)
            timings.record(RequestTiming(first, tpot))
        yield event


async def _events(queue: Any) -> AsyncIterator[TokenEvent]:
    """A stream's events until its last token; a failure the manager reported is raised."""
    while True:
        item = await queue.get()
        if isinstance(item, Exception):
            raise item
        yield item
        if item.finished:
            return


async def _collect(events: AsyncIterator[TokenEvent]) -> tuple[str, str | None, list[int]]:
    """Text, finish reason and token ids of a whole non-streamed completion."""
    decoder, parts, finish, tokens = TextDecoder(), [], None, []
    async for event in events:
        tokens.append(event.token_id)
        parts.append(decoder.feed(event.token_id, final=event.finished))
        finish = event.finish_reason
    return "".join(parts), finish, tokens


async def _stream_sse(
    response_id: str,
    request: GenerationRequest,
    prompt_tokens: int,
    chat: bool,
    events: AsyncIterator[TokenEvent],
) -> AsyncIterator[str]:
    """SSE chunks: (chat: a role chunk,) one chunk per token, then usage and ``[DONE]``."""
    if chat:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield sse(completion_body(response_id, request.model, [role], chat, stream=True))
    decoder, count = TextDecoder(), 0
    async for event in events:
        count += 1
        text = decoder.feed(event.token_id, final=event.finished)
        ids = [event.token_id] if request.return_token_ids else None
        choice = text_choice(text, event.finish_reason, chat, stream=True, token_ids=ids)
        yield sse(completion_body(response_id, request.model, [choice], chat, stream=True))
    if request.include_usage:
        total = usage(prompt_tokens, count)
        yield sse(completion_body(response_id, request.model, [], chat, stream=True, usage=total))
    yield sse("[DONE]")


async def _cancel_on_exit(
    body: AsyncIterator[str], pool: PoolManager, request_id: str
) -> AsyncIterator[str]:
    """Pass the body through; whatever ends it (a client that left included) frees the KV."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        await pool.cancel(request_id)
