"""OpenAI completion and chat completion requests: parsed, checked, mapped to sampling.

Every field the OpenAI API defines for these endpoints is either honoured or refused
with a 400 naming it; nothing is silently ignored. A field the pool does not implement
is accepted only when it asks for nothing: ``null`` or OpenAI's own default (``{}`` for
``logit_bias``, ``false`` for ``store``, ...), see :data:`COMPLETION_UNSUPPORTED`,
:data:`CHAT_UNSUPPORTED` and :data:`MESSAGE_UNSUPPORTED`. Fields OpenAI does not
define are refused, except three extensions (pass them in ``extra_body``): ``priority``,
where higher-priority requests get KV headroom when dispatched, ``return_token_ids`` (as
in vLLM), which adds each choice's generated token ids so clients can compare exact
outputs, and ``ignore_eos`` (as in vLLM), which decodes past the model's EOS until
``max_tokens`` or a stop string, for load tests and benchmarks of fixed length.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

import xgrammar
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelfleet.core.openai_api import ApiError
from modelfleet.serving.interface import MAX_LOGPROBS, GrammarSpec, SamplingParams
from modelfleet.serving.tokenizer import ChatTurn

COMPLETION_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for completions; chat defaults to the context left."""
MAX_CHOICES = 128
MAX_STOPS = 4
SEED_RANGE = 2**63

COMPLETION_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "suffix": (None,),
    "user": (None,),
}
"""Completion fields not implemented, with the values that ask for nothing."""

CHAT_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "audio": (None,),
    "function_call": (None, "none"),
    "functions": (None, []),
    "logit_bias": (None, {}),
    "metadata": (None, {}),
    "modalities": (None, ["text"]),
    "parallel_tool_calls": (None, True),
    "prediction": (None,),
    "prompt_cache_key": (None,),
    "reasoning_effort": (None,),
    "safety_identifier": (None,),
    "service_tier": (None, "auto"),
    "store": (None, False),
    "tool_choice": (None, "none"),
    "tools": (None, []),
    "user": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
}
"""Chat completion fields not implemented, with the values that ask for nothing."""

MESSAGE_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "name": (None,),
    "refusal": (None,),
    "tool_calls": (None, []),
    "function_call": (None,),
    "audio": (None,),
    "annotations": (None, []),
}
"""Chat message fields not implemented (the ones a client echoes back as ``null``)."""

RequestT = TypeVar("RequestT", bound="GenerationRequest")


def _as_list(value: Any) -> Any:
    """A lone string where OpenAI also takes a list of them."""
    return [value] if isinstance(value, str) else value


def _as_parts(value: Any) -> Any:
    """Message content given as a string, as the one text part it stands for."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


StopString = Annotated[str, Field(min_length=1)]


class RequestModel(BaseModel):
    """A request object that refuses fields it does not know and values of the wrong JSON
    type (``"5"`` or ``true`` for a number), as OpenAI does."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(RequestModel):
    """``stream_options``: whether a streamed response ends with a usage chunk."""

    include_usage: bool | None = None


class GenerationRequest(RequestModel):
    """Fields completions and chat completions share; ``null`` means OpenAI's default."""

    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = {}

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=SEED_RANGE)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stop: Annotated[list[StopString] | None, BeforeValidator(_as_list)] = Field(
        default=None, max_length=MAX_STOPS
    )
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    priority: int = Field(default=0, ge=-100, le=100)
    return_token_ids: bool = False
    ignore_eos: bool = False

    @field_validator("stream_options")
    @classmethod
    def _check_streaming(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    @classmethod
    def screen(cls, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` without the unimplemented fields that ask for nothing; 400 for
        one that asks for something."""
        return _screen(payload, cls.unsupported, "")

    @property
    def limit_param(self) -> str:
        """The parameter that set the output limit, for errors about it."""
        return "max_tokens"

    def output_limit(self, room: int) -> int:
        """The output limit asked for, else OpenAI's completions default; ``room`` is the
        context the prompt leaves, which chat defaults to."""
        return self.max_tokens or COMPLETION_MAX_TOKENS

    @property
    def choices(self) -> int:
        """How many independent choices to generate."""
        return self.n or 1

    @property
    def stops(self) -> tuple[str, ...]:
        """Stop strings; the output ends before the first one that appears."""
        return tuple(self.stop or ())

    @property
    def streaming(self) -> bool:
        """Whether the response is a stream of server-sent events."""
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    @property
    def wants_logprobs(self) -> bool:
        """Whether choices carry log-probabilities."""
        return False

    def sampling(
        self, max_tokens: int, eos_token_ids: tuple[int, ...], adapter: str | None
    ) -> SamplingParams:
        """Engine sampling parameters; generation stops at the model's EOS ids."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop_token_ids=() if self.ignore_eos else eos_token_ids,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            adapter=adapter,
        )


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``; a one-element prompt list is accepted like a string."""

    unsupported = COMPLETION_UNSUPPORTED

    prompt: Annotated[list[str], BeforeValidator(_as_list)] = Field(min_length=1)
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def text(self) -> str:
        """The prompt string."""
        if len(self.prompt) != 1:
            raise ApiError(400, "prompt: only one prompt per request is supported", "prompt")
        return self.prompt[0]

    @property
    def wants_logprobs(self) -> bool:
        """Whether ``logprobs`` asked for them."""
        return self.logprobs is not None

    def sampling(
        self, max_tokens: int, eos_token_ids: tuple[int, ...], adapter: str | None
    ) -> SamplingParams:
        """As shared, with ``logprobs`` alternatives; an echo with logprobs also scores
        the prompt."""
        return replace(
            super().sampling(max_tokens, eos_token_ids, adapter),
            logprobs=self.logprobs,
            prompt_logprobs=bool(self.echo) and self.wants_logprobs,
        )


class TextPart(RequestModel):
    """A content part; text is the only kind the pool's models read."""

    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    """One chat turn; content is a string or a list of text parts."""

    role: Literal["system", "user", "assistant"]
    content: Annotated[list[TextPart], BeforeValidator(_as_parts)]

    def turn(self) -> ChatTurn:
        """The turn as a chat template takes it; text parts join with newlines, as in vLLM,
        so both engines see the same prompt."""
        return {"role": self.role, "content": "\n".join(part.text for part in self.content)}


class JsonSchema(RequestModel):
    """``response_format.json_schema``; the schema is always enforced, ``strict`` or not."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _check_schema(self) -> Self:
        """Refuse, up front, a schema the engine's grammar compiler cannot enforce."""
        try:
            xgrammar.Grammar.from_json_schema(self.schema_text, any_whitespace=False)
        except RuntimeError as error:
            cause = str(error).strip().splitlines()[-1]
            raise ValueError(f"schema cannot be enforced: {cause}") from error
        return self

    @property
    def schema_text(self) -> str:
        """The schema as JSON text."""
        return json.dumps(self.schema_)


class ResponseFormat(RequestModel):
    """``response_format``: free text, any JSON object, or JSON valid under a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _check_schema_given(self) -> Self:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema and only then")
        return self

    def grammar(self) -> GrammarSpec | None:
        """The constraint the engine decodes under."""
        if self.json_schema is not None:
            return GrammarSpec("json_schema", self.json_schema.schema_text)
        return GrammarSpec("json_object") if self.type == "json_object" else None


class ChatCompletionRequest(GenerationRequest):
    """``POST /v1/chat/completions``."""

    unsupported = CHAT_UNSUPPORTED

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _check_logprobs_asked(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("requires logprobs: true")
        return value

    @classmethod
    def screen(cls, payload: dict[str, Any]) -> dict[str, Any]:
        """As shared, and each message's unimplemented fields too."""
        screened = super().screen(payload)
        messages = screened.get("messages")
        if isinstance(messages, list):
            screened["messages"] = [
                _screen(message, MESSAGE_UNSUPPORTED, f"messages[{index}].")
                if isinstance(message, dict)
                else message
                for index, message in enumerate(messages)
            ]
        return screened

    @property
    def limit_param(self) -> str:
        """``max_completion_tokens`` when given, else ``max_tokens``."""
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"

    def output_limit(self, room: int) -> int:
        """``max_completion_tokens``, else ``max_tokens``, else all of ``room``."""
        return self.max_completion_tokens or self.max_tokens or room

    @property
    def wants_logprobs(self) -> bool:
        """Whether ``logprobs: true`` asked for them."""
        return bool(self.logprobs)

    def conversation(self) -> list[ChatTurn]:
        """The messages as a chat template takes them."""
        return [message.turn() for message in self.messages]

    def sampling(
        self, max_tokens: int, eos_token_ids: tuple[int, ...], adapter: str | None
    ) -> SamplingParams:
        """As shared, with ``top_logprobs`` alternatives and the response format."""
        return replace(
            super().sampling(max_tokens, eos_token_ids, adapter),
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            grammar=None if self.response_format is None else self.response_format.grammar(),
        )


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """The parameters of choice ``index``: seeded ``seed + index`` when a seed is given,
    so choices differ yet each is reproducible."""
    if params.seed is None:
        return params
    return replace(params, seed=(params.seed + index) % SEED_RANGE)


def parse_request(model_type: type[RequestT], body: bytes) -> RequestT:
    """Parse a JSON body, turning any problem into a 400 naming the parameter."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as error:
        raise ApiError(400, f"request body is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model_type.model_validate(model_type.screen(payload))
    except ValidationError as error:
        first = error.errors()[0]
        param = _param(first["loc"])
        if first["type"] == "extra_forbidden":
            raise ApiError(400, f"{param}: unknown parameter", param=param) from error
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param}: {message}", param=param) from error


def _screen(fields: dict[str, Any], table: dict[str, tuple[Any, ...]], path: str) -> dict[str, Any]:
    """``fields`` without the keys of ``table`` whose value asks for nothing."""
    for key, value in fields.items():
        if key in table and value not in table[key]:
            neutral = " or ".join(json.dumps(option) for option in table[key])
            raise ApiError(
                400,
                f"{path}{key}: not supported by this pool (only {neutral} is accepted)",
                param=f"{path}{key}",
            )
    return {key: value for key, value in fields.items() if key not in table}


def _param(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as a parameter path: ``messages[0].content[1].type``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path
