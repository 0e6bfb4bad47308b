"""Log-probabilities in the completions and the chat shape of the OpenAI API."""

from __future__ import annotations

import json
import math

from modelfleet.serving.interface import TokenLogprob
from modelfleet.serving.logprobs_format import (
    ScoredToken,
    chat_logprobs,
    completion_logprobs,
    token_text,
)
from modelfleet.serving.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()
A, B, E6 = ord("a"), ord("b"), 0xE6


def test_completion_shape_lists_alternatives_with_the_chosen_token() -> None:
    tokens = [
        ScoredToken(A, -0.1, (TokenLogprob(B, -0.05), TokenLogprob(A, -0.1))),
        ScoredToken(B, -2.0, (TokenLogprob(A, -0.5),)),
    ]
    assert completion_logprobs(BYTES, tokens, [0, 1]) == {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.1, -2.0],
        "top_logprobs": [{"b": -0.05, "a": -0.1}, {"a": -0.5, "b": -2.0}],
        "text_offset": [0, 1],
    }


def test_an_echoed_prompts_first_token_has_no_logprob() -> None:
    body = completion_logprobs(BYTES, [ScoredToken(256, None), ScoredToken(A, -1.0)], [0, 0])
    assert body["tokens"] == ["<s>", "a"]
    assert body["token_logprobs"] == [None, -1.0] and body["top_logprobs"] == [None, {"a": -1.0}]


def test_chat_shape_carries_bytes() -> None:
    tokens = [ScoredToken(E6, -0.25, (TokenLogprob(E6, -0.25), TokenLogprob(A, -3.0)))]
    assert chat_logprobs(BYTES, tokens) == {
        "content": [
            {
                "token": "\\xe6",
                "logprob": -0.25,
                "bytes": [0xE6],
                "top_logprobs": [
                    {"token": "\\xe6", "logprob": -0.25, "bytes": [0xE6]},
                    {"token": "a", "logprob": -3.0, "bytes": [A]},
                ],
            }
        ]
    }


def test_impossible_tokens_stay_valid_json() -> None:
    tokens = [ScoredToken(A, -math.inf, (TokenLogprob(B, -math.inf),))]
    text = json.dumps(chat_logprobs(BYTES, tokens), allow_nan=False)
    assert "-9999.0" in text
    json.dumps(completion_logprobs(BYTES, tokens, [0]), allow_nan=False)


def test_partial_characters_show_as_escaped_bytes() -> None:
    assert token_text(BYTES, 0xF0) == "\\xf0" and token_text(BYTES, A) == "a"
