"""The ModelPool's OpenAI endpoint behind the Serve deployment, and its serving options.

One :class:`PoolFrontend` per ingress replica parses requests, tokenizes them with each
model's own tokenizer, runs one :class:`~modelfleet.serving.manager.PoolManager` per
served model (its LoRA adapters share it) and turns token streams into OpenAI responses
and server-sent events. A request with ``n`` choices is ``n`` independent requests in
the pool, interleaved into one response.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field

from modelfleet.access.gate import AccessGate, Caller
from modelfleet.api.common import ApiModel
from modelfleet.api.modelpool import ModelPoolSpec, ServedModel, Slo
from modelfleet.core.openai_api import (
    ApiError,
    check_length,
    completion_body,
    overloaded,
    unknown_model,
    usage,
)
from modelfleet.core.workload import API_KEYS_ARG
from modelfleet.serving.catalog import resolve_served_model
from modelfleet.serving.choices import ChoiceDecoder, Delta
from modelfleet.serving.dispatch import DispatchPolicy
from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.manager import (
    MigrationReport,
    OverloadedError,
    PoolManager,
    PoolSettings,
    Stream,
)
from modelfleet.serving.model_tokenizer import load_tokenizer
from modelfleet.serving.openai_requests import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    choice_params,
    parse_request,
)
from modelfleet.serving.plan import OPTIONS_KEY
from modelfleet.serving.replica import EngineSpec
from modelfleet.serving.replica_names import DEFAULT_NAMESPACE, kill_unserved_replicas
from modelfleet.serving.responses import (
    ChoiceFormat,
    cancel_all,
    cancel_on_exit,
    choice_deltas,
    collect_all,
    stream_sse,
    timed,
)
from modelfleet.serving.slo import SloWindow
from modelfleet.serving.tokenizer import ChatTemplateError, ChatTurn, TextTokenizer
from modelfleet.serving.torch_engine import EngineConfig


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
    namespace: str = DEFAULT_NAMESPACE


def split_args(args: dict[str, Any]) -> tuple[ModelPoolSpec, ServingOptions, str]:
    """The spec, the serving options and the API keys directory ("": keys are not checked)
    in ``build``'s args (``ValueError`` if invalid)."""
    spec_wire = {k: v for k, v in args.items() if k not in (OPTIONS_KEY, API_KEYS_ARG)}
    options = ServingOptions.model_validate(args.get(OPTIONS_KEY, {}))
    return ModelPoolSpec.model_validate(spec_wire), options, str(args.get(API_KEYS_ARG, ""))


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


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a served model with its tokenizer, and the
    adapter to decode with (``None``: the base model)."""

    model: ServedModel
    tokenizer: TextTokenizer
    adapter: str | None


def served_targets(
    models: Sequence[ServedModel], tokenizers: dict[str, TextTokenizer]
) -> dict[str, Target]:
    """Every name a client may pass as ``model``: the models and their adapters."""
    targets = {m.name: Target(m, tokenizers[m.name], None) for m in models}
    targets.update(
        {a.name: Target(m, tokenizers[m.name], a.name) for m in models for a in m.adapters}
    )
    return targets


class PoolFrontend:
    """The pool's OpenAI endpoint logic and the home of its per-model managers.

    A plain class, so that the Serve deployment stays a thin shell: Serve pickles the
    deployment class by value, while this module is imported by reference. Each model's
    tokenizer is loaded here, when the ingress starts (a download for remote URIs), so
    a model whose tokenizer cannot be loaded fails the deployment with the reason.
    """

    def __init__(
        self, models: list[dict[str, Any]], options: dict[str, Any], app: str, keys_dir: str
    ) -> None:
        self._models = [ServedModel.model_validate(m) for m in models]
        self._options = ServingOptions.model_validate(options)
        self._app = app
        self._keys_dir = keys_dir
        self._gate = AccessGate(keys_dir)
        tokenizers = {m.name: load_tokenizer(m, i) for i, m in enumerate(self._models)}
        self._targets = served_targets(self._models, tokenizers)
        self._pools: dict[str, PoolManager] = {}
        self._slo = Slo()
        self._timings = SloWindow()

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply the spec: start the managers, or change replica counts in place."""
        spec = ModelPoolSpec.model_validate(config)
        self._slo = spec.slo
        self._gate.configure(spec.auth)
        for model in self._models:
            if model.name not in self._pools:
                settings = pool_settings(model, spec, self._options, self._app)
                self._pools[model.name] = PoolManager(settings)
            await self._pools[model.name].configure(
                spec.replicas, spec.migration.enabled, spec.migration.max_concurrent
            )

    def kill_unserved_replicas(self) -> list[str]:
        """Kill replicas a previous ingress left for models this pool no longer serves (a
        redeploy dropped them); no manager adopts those. Needs Ray: the ingress calls it."""
        served = [model.name for model in self._models]
        return kill_unserved_replicas(self._app, served, self._options.namespace)

    async def shutdown(self) -> None:
        """Stop every manager; the replica actors stay for the next ingress to adopt."""
        for pool in self._pools.values():
            await pool.shutdown()

    async def apply(
        self, spec_wire: dict[str, Any], options: dict[str, Any], keys_dir: str
    ) -> bool:
        """Apply a spec in place; ``False`` when its models, options or keys directory
        need a redeploy."""
        spec = ModelPoolSpec.model_validate(spec_wire)
        same = (
            spec.models == self._models
            and options == self._options.to_wire()
            and keys_dir == self._keys_dir
        )
        if same:
            await self.reconfigure(spec_wire)
        return same

    def admit(self, authorization: str | None) -> Caller:
        """The caller of a request by its ``Authorization`` header; 401 or 429 if refused."""
        return self._gate.admit(authorization)

    def metrics(self) -> bytes:
        """Requests and tokens per key id, in Prometheus' text format."""
        return self._gate.metrics()

    def list_models(self) -> dict[str, Any]:
        """The served models and their adapters (with ``parent``, as vLLM lists them), as
        ``GET /v1/models`` lists them."""
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "modelfleet",
                "parent": None if target.adapter is None else target.model.name,
            }
            for name, target in self._targets.items()
        ]
        return {"object": "list", "data": data}

    async def complete(self, body: bytes, chat: bool, caller: Caller) -> Response:
        """``POST /v1/completions`` or ``/v1/chat/completions``, streaming or not."""
        if chat:
            conversation = parse_request(ChatCompletionRequest, body)
            target = self._target(conversation.model)
            prompt = _encode_chat(target.tokenizer, conversation.conversation())
            return await self._generate(
                conversation, target, prompt, "messages", echo=None, caller=caller
            )
        completion = parse_request(CompletionRequest, body)
        target = self._target(completion.model)
        text = completion.text()
        prompt = target.tokenizer.encode_prompt(text)
        echo = text if completion.echo else None
        return await self._generate(completion, target, prompt, "prompt", echo, caller)

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

    def _target(self, name: str) -> Target:
        target = self._targets.get(name)
        if target is None or target.model.name not in self._pools:
            raise unknown_model(name, list(self._targets))
        return target

    async def _generate(
        self,
        request: GenerationRequest,
        target: Target,
        prompt: list[int],
        prompt_param: str,
        echo: str | None,
        caller: Caller,
    ) -> Response:
        arrived = time.monotonic()
        chat = isinstance(request, ChatCompletionRequest)
        max_model_len = target.model.max_model_len
        limit = request.output_limit(max_model_len - len(prompt))
        check_length(len(prompt), limit, max_model_len, prompt_param, request.limit_param)
        self._gate.admit_tokens(caller, len(prompt))
        params = request.sampling(limit, target.tokenizer.eos_token_ids, target.adapter)
        pool = self._pools[target.model.name]
        priority = caller.priority(request.priority, "priority" in request.model_fields_set)
        streams = await self._submit(pool, prompt, params, request, prompt_param, priority)
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{streams[0].request_id}"
        request_ids = [stream.request_id for stream in streams]
        choices = [
            self._metered(
                timed(
                    choice_deltas(
                        pool, stream, ChoiceDecoder(target.tokenizer, prompt, request.stops, echo)
                    ),
                    arrived,
                    self._timings,
                ),
                caller,
            )
            for stream in streams
        ]
        form = ChoiceFormat(
            target.tokenizer, chat, request.wants_logprobs, request.return_token_ids
        )
        if request.streaming:
            body = stream_sse(
                response_id, request.model, choices, form, len(prompt), request.include_usage
            )
            return StreamingResponse(
                cancel_on_exit(body, pool, request_ids), media_type="text/event-stream"
            )
        results = await collect_all(choices, pool, request_ids)
        return JSONResponse(
            completion_body(
                response_id,
                request.model,
                [form.choice(index, deltas, stream=False) for index, deltas in enumerate(results)],
                chat,
                stream=False,
                usage=usage(len(prompt), sum(len(deltas) for deltas in results)),
            )
        )

    async def _submit(
        self,
        pool: PoolManager,
        prompt: list[int],
        params: SamplingParams,
        request: GenerationRequest,
        prompt_param: str,
        priority: int,
    ) -> list[Stream]:
        """One pool request per choice; if one cannot be placed, none stays."""
        streams: list[Stream] = []
        try:
            for index in range(request.choices):
                params_i = choice_params(params, index)
                streams.append(await pool.submit(prompt, params_i, priority))
        except (OverloadedError, ValueError) as error:
            await cancel_all(pool, [stream.request_id for stream in streams])
            if isinstance(error, OverloadedError):
                raise overloaded(str(error), self._options.retry_after_s) from error
            raise ApiError(400, str(error), param=prompt_param) from error
        return streams

    async def _metered(self, deltas: AsyncIterator[Delta], caller: Caller) -> AsyncIterator[Delta]:
        """Pass a choice's deltas on (one per generated token) and charge them to the
        caller's key when the choice ends, however it ends."""
        count = 0
        try:
            async for delta in deltas:
                count += 1
                yield delta
        finally:
            self._gate.record_completion(caller, count)


def internal_id(response_id: str) -> str:
    """The manager's request id in a response id (``cmpl-``/``chatcmpl-`` + request id)."""
    for prefix in ("cmpl-", "chatcmpl-"):
        if response_id.startswith(prefix):
            return response_id.removeprefix(prefix)
    return response_id


def _encode_chat(tokenizer: TextTokenizer, turns: list[ChatTurn]) -> list[int]:
    """The conversation's prompt ids; a conversation the model cannot take is a 400."""
    try:
        return tokenizer.encode_chat(turns)
    except ChatTemplateError as error:
        raise ApiError(400, f"messages: {error}", param="messages") from error
