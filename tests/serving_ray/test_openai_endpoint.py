"""The pool's OpenAI-compatible endpoint, driven by the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from ray import serve

from modelfleet.serving.app import deploy
from modelfleet.serving.tokenizer import ByteTokenizer

from .conftest import MODEL, client, expected_tokens, pool_spec, status_of

pytestmark = [pytest.mark.slow, pytest.mark.ray]

PROMPT = "The quick brown fox"


def test_lists_models(pool: str) -> None:
    assert [model.id for model in client(pool).models.list()] == [MODEL]


def test_completion_matches_engine_and_counts_usage(pool: str) -> None:
    result = client(pool).completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=24,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    choice = result.choices[0]
    assert result.id.startswith(f"cmpl-{MODEL}-")
    assert choice.model_extra is not None
    assert choice.model_extra["token_ids"] == expected_tokens(PROMPT, 24)
    assert choice.finish_reason == "length"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (len(PROMPT) + 1, 24)


def test_chat_streams_deltas_and_usage(pool: str) -> None:
    chunks = list(
        client(pool).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=12,
            temperature=0.8,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    tokens = [c for c in chunks if c.choices and c.choices[0].delta.content is not None][1:]
    assert len(tokens) == 12
    assert tokens[-1].choices[0].finish_reason == "length"
    assert len({chunk.id for chunk in chunks}) == 1
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 12 and not chunks[-1].choices


def test_chat_without_streaming(pool: str) -> None:
    result = client(pool).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert result.choices[0].message.role == "assistant"
    assert result.usage is not None and result.usage.completion_tokens == 5


def test_unknown_model_is_404_naming_known_models(pool: str) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client(pool).completions.create(model="gpt-9", prompt="x")
    body = error.value.body
    assert isinstance(body, dict)
    assert body["param"] == "model" and "gpt-9" in body["message"] and MODEL in body["message"]


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"prompt": "x" * 2000}, "prompt"),
        ({"prompt": "x", "max_tokens": 1023}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
    ],
)
def test_bad_input_is_400_naming_the_parameter(
    pool: str, arguments: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client(pool).completions.create(model=MODEL, **arguments)  # type: ignore[call-overload]
    body = error.value.body
    assert isinstance(body, dict) and body["param"] == param and param in body["message"]


@pytest.fixture(scope="module")
def small_pool(serve_url: str) -> Iterator[str]:
    """One replica that takes at most two requests at a time."""
    deploy(pool_spec(1, maxRequestsPerReplica=2), name="bounded", route_prefix="/bounded")
    yield f"{serve_url}/bounded"
    serve.delete("bounded")


def test_overload_is_503_with_retry_after(small_pool: str) -> None:
    assert ByteTokenizer.EOS not in expected_tokens(PROMPT, 900), "the streams must stay busy"
    api = client(small_pool)
    streams = [
        api.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=900, temperature=0, stream=True
        )
        for _ in range(2)
    ]
    for stream in streams:
        next(iter(stream))
    with pytest.raises(openai.APIStatusError) as error:
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    assert error.value.status_code == 503
    assert error.value.response.headers["retry-after"] == "1"
    for stream in streams:
        stream.close()
    assert status_of("bounded")["readyReplicas"] == 1
    result = _retry_until_admitted(api)
    assert result.usage is not None and result.usage.completion_tokens == 4


def _retry_until_admitted(api: openai.OpenAI) -> openai.types.Completion:
    """Once the closed streams are cancelled the pool admits requests again."""
    for _ in range(50):
        try:
            return api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
        except openai.APIStatusError as error:
            assert error.status_code == 503
    raise AssertionError("the pool never admitted a request after the streams closed")
