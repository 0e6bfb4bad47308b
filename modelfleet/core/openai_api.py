"""The OpenAI-compatible wire format: errors, response and SSE bodies.

Kept free of FastAPI and Ray so the protocol can be checked on its own. Every client
mistake becomes an :class:`ApiError` with an OpenAI-style body naming the parameter, so
the official clients raise their usual typed exceptions. Requests are parsed in
:mod:`~modelfleet.serving.openai_requests`.
"""

from __future__ import annotations

import json
import time
from typing import Any


class ApiError(Exception):
    """An HTTP error with the body OpenAI clients understand."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}`` as OpenAI sends it; ``type`` is ``kind``, by default
        ``invalid_request_error`` for client errors and ``server_error`` otherwise."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
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


def generation_failed(error: Exception) -> ApiError:
    """500 for a request the pool could not finish."""
    return ApiError(500, f"generation failed: {error}", code="generation_failed")


def check_length(
    prompt_tokens: int, max_tokens: int, max_model_len: int, prompt_param: str, limit_param: str
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
            f"{limit_param}: {prompt_tokens} prompt tokens + {limit_param} {max_tokens} exceed "
            f"the model's maximum context length of {max_model_len} tokens",
            param=limit_param,
            code="context_length_exceeded",
        )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object; with several choices, ``completion_tokens`` sums them."""
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
    index: int,
    text: str,
    finish_reason: str | None,
    chat: bool,
    stream: bool,
    logprobs: dict[str, Any] | None = None,
    token_ids: list[int] | None = None,
) -> dict[str, Any]:
    """Choice ``index`` holding ``text`` (a delta when streaming chat), with its
    log-probabilities and, if asked, ``token_ids``."""
    choice: dict[str, Any] = {"index": index}
    if not chat:
        choice["text"] = text
    elif stream:
        choice["delta"] = {"content": text}
    else:
        choice["message"] = {"role": "assistant", "content": text}
    choice.update(logprobs=logprobs, finish_reason=finish_reason)
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return choice


def role_choice(index: int) -> dict[str, Any]:
    """The first chunk of a streamed chat choice: the assistant's role."""
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event; ``[DONE]`` ends the stream as OpenAI does."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n"
