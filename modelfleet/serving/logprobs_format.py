"""Token log-probabilities in the two shapes the OpenAI API returns them.

Completions use the legacy shape (parallel lists, alternatives as ``{token: logprob}``
including the chosen token, character offsets into the text); chat completions a list
of per-token objects carrying the token's UTF-8 bytes, since a token may hold part of a
character that no string can show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet.serving.interface import TokenLogprob
from modelfleet.serving.tokenizer import TextTokenizer

LOWEST_LOGPROB = -9999.0
"""Stands for impossible tokens (``-inf``), which JSON cannot carry; OpenAI uses it too."""


@dataclass(frozen=True)
class ScoredToken:
    """A token, its log-probability (``None`` for a prompt's first token) and the most
    likely alternatives at its position, most likely first."""

    token_id: int
    logprob: float | None
    top: tuple[TokenLogprob, ...] = ()


def token_text(tokenizer: TextTokenizer, token_id: int) -> str:
    """The token as text; bytes that are not whole characters appear as ``\\xNN``."""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")


def completion_logprobs(
    tokenizer: TextTokenizer, tokens: Sequence[ScoredToken], offsets: Sequence[int]
) -> dict[str, Any]:
    """``choices[].logprobs`` of a completion: ``offsets`` are where each token starts in
    the choice's text."""
    return {
        "tokens": [token_text(tokenizer, token.token_id) for token in tokens],
        "token_logprobs": [_optional_finite(token.logprob) for token in tokens],
        "top_logprobs": [_alternatives(tokenizer, token) for token in tokens],
        "text_offset": list(offsets),
    }


def chat_logprobs(tokenizer: TextTokenizer, tokens: Sequence[ScoredToken]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion."""
    content = [
        {
            **_token_object(tokenizer, token.token_id, token.logprob),
            "top_logprobs": [
                _token_object(tokenizer, top.token_id, top.logprob) for top in token.top
            ],
        }
        for token in tokens
    ]
    return {"content": content}


def _alternatives(tokenizer: TextTokenizer, token: ScoredToken) -> dict[str, float] | None:
    """The alternatives and the chosen token, as the legacy API lists them."""
    if token.logprob is None:
        return None
    chosen = TokenLogprob(token.token_id, token.logprob)
    return {
        token_text(tokenizer, top.token_id): _finite(top.logprob) for top in (*token.top, chosen)
    }


def _token_object(tokenizer: TextTokenizer, token_id: int, logprob: float | None) -> dict[str, Any]:
    return {
        "token": token_text(tokenizer, token_id),
        "logprob": _optional_finite(logprob),
        "bytes": list(tokenizer.token_bytes(token_id)),
    }


def _finite(logprob: float) -> float:
    return max(logprob, LOWEST_LOGPROB)


def _optional_finite(logprob: float | None) -> float | None:
    return None if logprob is None else _finite(logprob)
