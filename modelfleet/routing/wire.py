"""The parts of OpenAI requests and responses the router reads or rewrites.

The router forwards bodies it does not otherwise understand: it reads only the query
text (to classify it), the limits it may cap, and, from answers, the id, the usage and
the log-probabilities a cascade judges confidence by.
"""

from __future__ import annotations

import json
import math
from typing import Any

from modelfleet.core.openai_api import ApiError, completion_body, sse, text_choice


def parse_body(body: bytes) -> dict[str, Any]:
    """The request's JSON object, or a 400 saying what is wrong with it."""
    try:
        payload = json.loads(body or b"{}")
    except json.JSONDecodeError as error:
        raise ApiError(400, f"the request body is not JSON: {error}") from error
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return payload


def query_text(payload: dict[str, Any], chat: bool) -> str:
    """What the query asks: the last user message of a chat, the prompt otherwise."""
    if chat:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: a non-empty list is required", param="messages")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return _content_text((users or messages)[-1].get("content"))
    prompt = payload.get("prompt")
    if isinstance(prompt, list):
        prompt = next((p for p in prompt if isinstance(p, str)), "")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt: a string is required to route a completion", param="prompt")
    return prompt


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def limit_param(payload: dict[str, Any], chat: bool) -> str:
    """The field that bounds the answer's length in this request."""
    if chat and "max_completion_tokens" in payload:
        return "max_completion_tokens"
    return "max_tokens"


def cap_tokens(payload: dict[str, Any], chat: bool, cap: int | None) -> dict[str, Any]:
    """``payload`` with its answer length capped at ``cap`` (unchanged when ``None``)."""
    if cap is None:
        return payload
    param = limit_param(payload, chat)
    asked = payload.get(param)
    limit = cap if not isinstance(asked, int) else min(asked, cap)
    return {**payload, param: limit}


def ask_logprobs(payload: dict[str, Any], chat: bool) -> dict[str, Any]:
    """``payload`` asking for the sampled tokens' log-probabilities (a cascade needs them)."""
    if chat:
        return {**payload, "logprobs": True}
    asked = payload.get("logprobs")
    return {**payload, "logprobs": asked if isinstance(asked, int) else 0}


def token_logprobs(answer: dict[str, Any]) -> list[float]:
    """The sampled tokens' log-probabilities of the first choice, chat or completion."""
    choices = answer.get("choices") or [{}]
    logprobs = choices[0].get("logprobs") or {}
    if "content" in logprobs:
        return [float(t["logprob"]) for t in logprobs["content"] or []]
    return [float(v) for v in logprobs.get("token_logprobs") or [] if v is not None]


def confidence(answer: dict[str, Any]) -> float:
    """The geometric mean probability of the answer's tokens: exp(mean log-probability).

    0 for an empty answer, which no cascade should accept as confident.
    """
    values = token_logprobs(answer)
    return math.exp(sum(values) / len(values)) if values else 0.0


def strip_logprobs(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without log-probabilities the client did not ask for."""
    choices = [{**c, "logprobs": None} for c in answer.get("choices") or []]
    return {**answer, "choices": choices}


def total_tokens(answer: dict[str, Any]) -> int:
    """Prompt plus completion tokens from the answer's usage (0 if it has none)."""
    usage = answer.get("usage") or {}
    return int(usage.get("total_tokens") or 0)


def answer_as_events(answer: dict[str, Any], chat: bool, include_usage: bool) -> list[str]:
    """A finished answer as the server-sent events of a stream, for streaming clients of a
    cascade whose confident stage was asked without streaming."""
    events = []
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        text = message.get("content") if chat else choice.get("text")
        delta = text_choice(
            int(choice.get("index", 0)),
            text or "",
            choice.get("finish_reason"),
            chat,
            stream=True,
            logprobs=choice.get("logprobs"),
        )
        events.append(sse(_chunk(answer, chat, [delta])))
    if include_usage and answer.get("usage"):
        events.append(sse(_chunk(answer, chat, [], usage=answer["usage"])))
    events.append(sse("[DONE]"))
    return events


def _chunk(answer: dict[str, Any], chat: bool, choices: list[Any], **extra: Any) -> Any:
    return completion_body(
        answer.get("id", ""), answer.get("model", ""), choices, chat, stream=True, **extra
    )


def event_payload(line: str) -> dict[str, Any] | None:
    """The JSON object of one ``data:`` line of a stream; ``None`` for anything else."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
