"""The OpenAI-compatible wire format: request parsing, errors, response and SSE bodies.

Kept free of FastAPI and Ray so the protocol can be checked on its own. Every client
mistake becomes an :class:`ApiError` with an OpenAI-style body naming the parameter, so
the official clients raise their usual typed exceptions.
"""

from __future__ import annotations

import codecs
import json
import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.tokenizer import ByteTokenizer

ModelT = TypeVar("ModelT", bound=BaseModel)


class ApiError(Exception):
    """An HTTP error with the body OpenAI clients understand."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}`` as OpenAI sends it."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


def unknown_model(model: str, known: list[str]) -> ApiError:
    """404 naming the model asked for and the ones this pool serves."""
    return ApiError(
        404,
        f"The model {model!r} does not exist in this pool; known models: {', '.join(known)}",
        param="model",
        code="model_not_found",
    )


def overloaded(message: str, retry_after_s: int) -> ApiError:
    """503 with ``Retry-After``, so clients back off instead of piling up."""
    return ApiError(503, message, code="overloaded", headers={"Retry-After": str(retry_after_s)})


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` is meaningful here."""

    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields completions and chat completions share; unknown OpenAI fields are ignored.

    Two extensions (pass them in ``extra_body``): ``priority``, where higher-priority
    requests get KV headroom when dispatched, and ``return_token_ids`` (as in vLLM),
    which adds each choice's generated token ids so clients can compare exact outputs.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int = Field(default=0, ge=-100, le=100)
    return_token_ids: bool = False

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """Engine sampling parameters; generation stops at the tokenizer's EOS."""
        return SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop_token_ids=(ByteTokenizer.EOS,),
        )

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``; a one-element prompt list is accepted like a string."""

    prompt: str | list[str] = Field(min_length=1)

    def text(self) -> str:
        """The prompt string."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "prompt: only one prompt per request is supported", "prompt")
        return self.prompt[0]


class ChatMessage(BaseModel):
    """One chat turn; content is plain text."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def text(self) -> str:
        """The conversation rendered with the pool's chat template."""
        return render_chat(self.messages)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """As for completions; ``max_completion_tokens`` wins over ``max_tokens``."""
        limit = self.max_completion_tokens or self.max_tokens or default_max_tokens
        return super().sampling(limit)


def render_chat(messages: list[ChatMessage]) -> str:
    """A simple template: each turn tagged with its role, then the assistant's tag."""
    turns = "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages)
    return f"{turns}<|assistant|>\n"


def parse_request(model_type: type[ModelT], body: bytes) -> ModelT:
    """Parse a JSON body, turning any problem into a 400 naming the parameter."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as error:
        raise ApiError(400, f"request body is not valid JSON: {error}") from error
    try:
        return model_type.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", param=param) from error


def check_length(
    prompt_tokens: int, max_tokens: int, max_model_len: int, prompt_param: str
) -> None:
    """400 when the prompt, or prompt plus ``max_tokens``, exceeds the model's length."""
    if prompt_tokens >= max_model_len:
        raise ApiError(
            400,
            f"{prompt_param}: {prompt_tokens} tokens, but the model's maximum context "
            f"length is {max_model_len} tokens",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if prompt_tokens + max_tokens > max_model_len:
        raise ApiError(
            400,
            f"max_tokens: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the "
            f"model's maximum context length of {max_model_len} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )


class TextDecoder:
    """Turns byte tokens into text incrementally, never splitting a UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int, final: bool = False) -> str:
        """The text that ``token_id`` completes; special tokens add none."""
        data = bytes([token_id]) if token_id < 256 else b""
        return self._decoder.decode(data, final=final)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    request_id: str,
    model: str,
    choices: list[dict[str, Any]],
    chat: bool,
    stream: bool,
    **extra: Any,
) -> dict[str, Any]:
    """A completion, chat completion, or a chunk of a streamed one."""
    kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    return {
        "id": request_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def text_choice(
    text: str, finish_reason: str | None, chat: bool, stream: bool, token_ids: list[int] | None
) -> dict[str, Any]:
    """One choice holding ``text`` (a delta when streaming chat), with ``token_ids`` if asked."""
    if not chat:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    elif stream:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}
    else:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return choice


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event; ``[DONE]`` ends the stream as OpenAI does."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n"
