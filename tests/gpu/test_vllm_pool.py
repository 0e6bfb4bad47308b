"""A ModelPool of ``engine: VLLM`` on a real Ray Serve, driven over HTTP by the official
``openai`` client, serving the zoo model ``zoo://llama-arith``.

Runs where a CUDA device and vLLM exist; skips elsewhere. The pool has one replica,
which reserves the GPU and takes vLLM's default share of its memory, so this module runs
after ``test_vllm_engine.py`` has stopped its engines (pytest runs files in name order).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("vllm", reason="needs vLLM: pip install -e '.[gpu]'")

import openai
import ray
from ray import serve
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from modelfleet.serving.app import app_status, deploy
from modelfleet.zoo.evaluation import reply
from modelfleet.zoo.recipes import RECIPES
from modelfleet.zoo.skills import Addition, Example, Split

from .conftest import ZOO_MODEL, ZOO_URI, max_model_len

pytestmark = pytest.mark.timeout(600)

MODEL = "arith"
POOL = "gpu-pool"
READY_TIMEOUT_S = 300
"""Ray, Serve and one vLLM replica starting, from a cold cache of compiled kernels."""
CANDIDATES = 16
"""Training questions the reference is asked, to find one the model answers right."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(name: str) -> None:
    """Return once the pool's model has a ready replica; fail with its status after
    ``READY_TIMEOUT_S``."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while app_status(name)["models"][MODEL]["readyReplicas"] < 1:
        if time.monotonic() > deadline:
            pytest.fail(f"no vLLM replica ready after {READY_TIMEOUT_S}s: {app_status(name)}")
        time.sleep(1)


@pytest.fixture(scope="module")
def pool(zoo_model: Path) -> Iterator[str]:
    """Ray and Serve on 127.0.0.1 with a one-replica vLLM pool; its base URL."""
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(include_dashboard=False, namespace="modelfleet-gpu-tests")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spec = {
        "models": [
            {"name": MODEL, "uri": ZOO_URI, "engine": "VLLM", "maxModelLen": max_model_len()}
        ],
        "replicas": 1,
        "migration": {"enabled": False},
        "auth": {"mode": "None"},
        "servingOptions": {"controlIntervalS": 0.05},
    }
    try:
        deploy(spec, name=POOL, route_prefix=f"/{POOL}")
        wait_until_ready(POOL)
        yield f"http://127.0.0.1:{port}/{POOL}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def known_question(zoo_model: Path) -> Example:
    """An addition question from the model's training mix that it answers right when run
    by Hugging Face transformers on the CPU: what the pool must answer the same way."""
    examples = Addition().take(Split.TRAIN, RECIPES[ZOO_MODEL].seed, CANDIDATES)
    model = AutoModelForCausalLM.from_pretrained(zoo_model)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(zoo_model)
    replies = reply(model, tokenizer, [example.prompt for example in examples])
    for example, answer in zip(examples, replies, strict=True):
        if answer == example.answer:
            return example
    pytest.fail(f"{ZOO_MODEL} answers none of {CANDIDATES} training questions; rebuild it")


def chat(base_url: str, question: str, **options: Any) -> Any:
    """A greedy chat completion of ``question``, without retries so errors surface."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        **options,
    )


def test_answers_an_addition_question(pool: str, known_question: Example) -> None:
    result = chat(pool, known_question.prompt, max_tokens=8)

    choice = result.choices[0]
    assert choice.message.content.strip() == known_question.answer
    assert choice.finish_reason == "stop"


def test_streaming_equals_non_streaming_for_greedy(pool: str, known_question: Example) -> None:
    whole = chat(pool, known_question.prompt, max_tokens=8).choices[0]
    chunks = list(chat(pool, known_question.prompt, max_tokens=8, stream=True))

    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.finish_reason]


def test_logprobs_come_back_most_likely_first(pool: str, known_question: Example) -> None:
    result = chat(pool, known_question.prompt, max_tokens=8, logprobs=True, top_logprobs=3)

    scored = result.choices[0].logprobs.content
    assert scored
    for token in scored:
        top = token.top_logprobs
        assert len(top) == 3
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert token.token == top[0].token
        assert token.logprob == pytest.approx(top[0].logprob) and token.logprob <= 0


def test_a_json_object_response_parses(pool: str) -> None:
    result = chat(pool, "What is 1 + 2?", response_format={"type": "json_object"})

    choice = result.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)
