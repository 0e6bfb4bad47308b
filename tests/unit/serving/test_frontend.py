"""The endpoint logic end to end over a scripted pool: choices, stops, echo, logprobs,
adapters, errors. The pool's side (Ray, engines) is tested in tests/serving_ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.responses import Response, StreamingResponse

from modelfleet.core.openai_api import ApiError
from modelfleet.serving import frontend as frontend_module
from modelfleet.serving.frontend import PoolFrontend
from modelfleet.serving.interface import SamplingParams, TokenEvent, TokenLogprob
from modelfleet.serving.manager import OverloadedError, PoolSettings, Stream
from modelfleet.serving.tokenizer import ByteTokenizer

from .tokenizers_for_tests import byte_level_bpe, save_model_dir

MINI = {"name": "mini", "uri": "builtin://tiny-llama-mini", "maxModelLen": 64}
OPEN = {"mode": "None"}
REPLY = "Hello, wörld! END more"


class ScriptedPool:
    """A pool whose every request replies ``reply`` (token ids), seeded ones prefixed by
    their seed's digits; it records what it was asked and what it cancelled."""

    reply: Sequence[int] = tuple(REPLY.encode())
    fail_after: int | None = None
    stall_after: int | None = None
    capacity: int = 100
    eos: int = ByteTokenizer.EOS

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.submitted: list[tuple[list[int], SamplingParams]] = []
        self.cancelled: list[str] = []
        POOLS[settings.model] = self

    async def configure(self, replicas: int, migration: bool, max_concurrent: int) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    async def submit(self, prompt: list[int], params: SamplingParams, priority: int) -> Stream:
        if len(self.submitted) >= self.capacity:
            raise OverloadedError("full")
        self.submitted.append((prompt, params))
        stream = Stream(
            f"{self.settings.model}-{len(self.submitted)}", tuple(prompt), params, 0, "r"
        )
        seed = [] if params.seed is None else list(str(params.seed).encode())
        tokens = [*seed, *self.reply, self.eos][: params.max_tokens]
        for index, token in enumerate(tokens):
            if index == self.fail_after:
                stream.events.put_nowait(RuntimeError("replica lost"))
                break
            if index == self.stall_after:
                break
            stream.events.put_nowait(self._event(stream, prompt, params, index, token, tokens))
        return stream

    @staticmethod
    def _event(
        stream: Stream,
        prompt: list[int],
        params: SamplingParams,
        index: int,
        token: int,
        tokens: list[int],
    ) -> TokenEvent:
        last = index == len(tokens) - 1
        finish = ("stop" if token == ScriptedPool.eos else "length") if last else None
        scored = params.logprobs is not None
        prompt_scores = (None, *(TokenLogprob(t, -2.0) for t in prompt[1:]))
        return TokenEvent(
            stream.request_id,
            token,
            index,
            finish,
            logprob=-0.5 if scored else None,
            top_logprobs=(TokenLogprob(token, -0.5),) * (params.logprobs or 0),
            prompt_logprobs=prompt_scores if params.prompt_logprobs and index == 0 else None,
        )


POOLS: dict[str, ScriptedPool] = {}


@pytest.fixture(autouse=True)
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(frontend_module, "PoolManager", ScriptedPool)
    yield
    POOLS.clear()


def start(models: list[dict[str, Any]]) -> PoolFrontend:
    frontend = PoolFrontend(models, {}, "test", keys_dir="")
    asyncio.run(frontend.reconfigure({"models": models, "replicas": 1, "auth": OPEN}))
    return frontend


def call(frontend: PoolFrontend, chat: bool, **body: Any) -> Response:
    caller = frontend.admit(None)
    return asyncio.run(frontend.complete(json.dumps(body).encode(), chat, caller))


def complete(frontend: PoolFrontend, chat: bool = False, **body: Any) -> dict[str, Any]:
    response = call(frontend, chat, model="mini", **body)
    assert not isinstance(response, StreamingResponse)
    result: dict[str, Any] = json.loads(bytes(response.body))
    return result


def stream(frontend: PoolFrontend, chat: bool = False, **body: Any) -> list[Any]:
    """The stream's events, parsed; ``[DONE]`` stays a string."""
    response = call(frontend, chat, model="mini", stream=True, **body)
    assert isinstance(response, StreamingResponse)

    async def read() -> list[str]:
        return [str(chunk) async for chunk in response.body_iterator]

    events = asyncio.run(read())
    assert all(event.startswith("data: ") and event.endswith("\n\n") for event in events)
    data = [event.removeprefix("data: ").strip() for event in events]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


def test_n_choices_are_independent_requests_with_seeds_and_summed_usage() -> None:
    frontend = start([MINI])
    result = complete(frontend, prompt="hi", n=3, seed=5, max_tokens=4, return_token_ids=True)
    assert [c["index"] for c in result["choices"]] == [0, 1, 2]
    assert [c["text"] for c in result["choices"]] == ["5Hel", "6Hel", "7Hel"]
    assert [p.seed for _, p in POOLS["mini"].submitted] == [5, 6, 7]
    assert result["usage"] == {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15}
    assert sorted(POOLS["mini"].cancelled) == ["mini-1", "mini-2", "mini-3"]


def test_streamed_choices_carry_their_index_and_usage_sums() -> None:
    usage = {"include_usage": True}
    events = stream(start([MINI]), prompt="hi", n=2, seed=0, max_tokens=5, stream_options=usage)
    assert events[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    for chunk in events[:-2]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == {0: "0Hell", 1: "1Hell"}
    assert events[-2]["usage"]["completion_tokens"] == 10 and events[-2]["choices"] == []


def test_a_stop_string_cuts_the_text_and_cancels_the_request() -> None:
    frontend = start([MINI])
    result = complete(frontend, prompt="hi", stop=["END", "zzz"], max_tokens=40)
    (choice,) = result["choices"]
    assert choice["text"] == "Hello, wörld! " and choice["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] == len("Hello, wörld! END".encode())
    assert POOLS["mini"].cancelled == ["mini-1", "mini-1"]


def test_a_streamed_stop_string_never_shows_its_start() -> None:
    events = stream(
        start([MINI]),
        chat=True,
        messages=[{"role": "user", "content": "hi"}],
        stop="! END",
        max_tokens=30,
    )
    deltas = [c["choices"][0]["delta"] for c in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    contents = [delta["content"] for delta in deltas[1:]]
    assert "".join(contents) == "Hello, wörld"
    assert all("!" not in content for content in contents)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_the_eos_token_ends_generation_with_stop() -> None:
    result = complete(start([MINI]), prompt="hi", max_tokens=60)
    assert result["choices"][0]["text"] == REPLY and result["choices"][0]["finish_reason"] == "stop"
    assert POOLS["mini"].submitted[0][1].stop_token_ids == (ByteTokenizer.EOS,)


def test_chat_defaults_to_the_context_left() -> None:
    complete(start([MINI]), chat=True, messages=[{"role": "user", "content": "hi"}])
    prompt, params = POOLS["mini"].submitted[0]
    assert prompt == ByteTokenizer().encode_chat([{"role": "user", "content": "hi"}])
    assert params.max_tokens == 64 - len(prompt)


def test_completions_default_to_sixteen_tokens() -> None:
    complete(start([MINI]), prompt="hi")
    assert POOLS["mini"].submitted[0][1].max_tokens == 16


def test_echo_with_logprobs_scores_the_prompt_too() -> None:
    result = complete(start([MINI]), prompt="hé", echo=True, logprobs=1, max_tokens=2)
    (choice,) = result["choices"]
    assert choice["text"] == "héHe"
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["<s>", "h", "\\xc3", "\\xa9", "H", "e"]
    assert logprobs["token_logprobs"] == [None, -2.0, -2.0, -2.0, -0.5, -0.5]
    assert logprobs["top_logprobs"][0] is None and logprobs["top_logprobs"][4] == {"H": -0.5}
    assert logprobs["text_offset"] == [0, 0, 1, 1, 2, 3]
    assert POOLS["mini"].submitted[0][1].prompt_logprobs


def test_chat_logprobs_come_per_token_with_bytes() -> None:
    result = complete(
        start([MINI]),
        chat=True,
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=2,
    )
    content = result["choices"][0]["logprobs"]["content"]
    assert [entry["token"] for entry in content] == ["H", "e"]
    assert content[0]["bytes"] == [ord("H")] and len(content[0]["top_logprobs"]) == 2
    assert POOLS["mini"].submitted[0][1].logprobs == 2


def test_streamed_completion_logprobs_ride_on_each_chunk() -> None:
    events = stream(start([MINI]), prompt="hi", logprobs=0, max_tokens=2)
    logprobs = [chunk["choices"][0]["logprobs"] for chunk in events[:-1]]
    assert [lp["tokens"] for lp in logprobs] == [["H"], ["e"]]
    assert [lp["text_offset"] for lp in logprobs] == [[0], [1]]


def test_a_failure_mid_stream_ends_with_an_error_event_then_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ScriptedPool, "fail_after", 3)
    events = stream(
        start([MINI]), prompt="hi", max_tokens=10, stream_options={"include_usage": True}
    )
    assert [chunk["choices"][0]["text"] for chunk in events[:3]] == ["H", "e", "l"]
    assert (
        events[3]["error"]["type"] == "server_error"
        and "replica lost" in events[3]["error"]["message"]
    )
    assert events[4:] == ["[DONE]"]


def test_a_client_that_leaves_frees_every_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette cancels a departed client's task at every await, cleanup included."""
    monkeypatch.setattr(ScriptedPool, "stall_after", 2)
    frontend = start([MINI])

    async def leave() -> None:
        body = {"model": "mini", "prompt": "hi", "n": 2, "stream": True, "max_tokens": 9}
        response = await frontend.complete(json.dumps(body).encode(), False, frontend.admit(None))
        assert isinstance(response, StreamingResponse)

        async def read() -> None:
            async for _ in response.body_iterator:
                pass

        async with anyio.create_task_group() as group:
            group.start_soon(read)
            await anyio.sleep(0.05)
            group.cancel_scope.cancel()
        await anyio.sleep(0.05)

    asyncio.run(leave())
    assert sorted(POOLS["mini"].cancelled) == ["mini-1", "mini-2"]


def test_a_failure_without_streaming_is_a_500(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScriptedPool, "fail_after", 1)
    with pytest.raises(ApiError) as error:
        complete(start([MINI]), prompt="hi", n=2)
    assert error.value.status == 500 and "replica lost" in error.value.message
    assert sorted(POOLS["mini"].cancelled) == ["mini-1", "mini-2"]


def test_when_a_choice_cannot_be_placed_none_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScriptedPool, "capacity", 2)
    with pytest.raises(ApiError) as error:
        complete(start([MINI]), prompt="hi", n=3)
    assert error.value.status == 503 and error.value.headers == {"Retry-After": "1"}
    assert POOLS["mini"].cancelled == ["mini-1", "mini-2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with a ChatML byte-level BPE tokenizer (id 0 is also an EOS)."""
    return save_model_dir(byte_level_bpe(), tmp_path_factory.mktemp("model"), generation_eos=0)


def test_adapters_are_models_of_their_base_pool(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = byte_level_bpe()
    monkeypatch.setattr(ScriptedPool, "reply", tokenizer.encode("the fox"))
    monkeypatch.setattr(ScriptedPool, "eos", tokenizer.convert_tokens_to_ids("<|im_end|>"))
    base = {
        "name": "base",
        "uri": f"file://{checkpoint}",
        "maxModelLen": 128,
        "adapters": [{"name": "support", "uri": "file:///adapters/support"}],
    }
    frontend = start([MINI, base])
    models = {m["id"]: m["parent"] for m in frontend.list_models()["data"]}
    assert models == {"mini": None, "base": None, "support": "base"}
    response = call(frontend, True, model="support", messages=[{"role": "user", "content": "hi"}])
    result = json.loads(bytes(response.body))
    assert result["model"] == "support" and result["choices"][0]["message"]["content"] == "the fox"
    prompt, params = POOLS["base"].submitted[0]
    assert params.adapter == "support" and params.stop_token_ids == (0, tokenizer.eos_token_id)
    assert tokenizer.decode(prompt) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "mini" in POOLS and not POOLS["mini"].submitted


def test_unknown_models_are_404_listing_adapters_too(checkpoint: Path) -> None:
    base = {
        "name": "base",
        "uri": f"file://{checkpoint}",
        "adapters": [{"name": "support", "uri": "file:///adapters/support"}],
    }
    with pytest.raises(ApiError) as error:
        call(start([base]), False, model="gpt-9", prompt="x")
    assert error.value.status == 404 and "support" in error.value.message
