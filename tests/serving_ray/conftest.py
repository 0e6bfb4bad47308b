"""A real local Ray with Serve on loopback, shared by every test in this directory.

Each test module deploys its own small pool: of the zoo's ``llama-arith`` (a trained
Llama with its own BPE tokenizer), or of the builtin mini model (byte tokenizer) where a
test checks the protocol byte by byte. The cluster is started once for this directory
and shut down after it, whatever ``RAY_ADDRESS`` says, so other test directories never
see it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import ray
import torch
from ray import serve

from modelfleet.serving.app import app_status, deploy
from modelfleet.serving.catalog import resolve_model
from modelfleet.serving.checkpoint import load_decoder
from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.model import Decoder
from modelfleet.serving.model_tokenizer import HfTokenizer
from modelfleet.serving.replica_names import kill_pool_replicas
from modelfleet.serving.tokenizer import ByteTokenizer
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine
from modelfleet.zoo.cache import ensure_model

MODEL = "mini"
MINI_URI = "builtin://tiny-llama-mini"
ZOO = "arith"
ZOO_MODEL = "llama-arith"
URIS = {MODEL: MINI_URI, ZOO: f"zoo://{ZOO_MODEL}"}
MAX_MODEL_LEN = 1024


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pool_spec(replicas: int, model: str = MODEL, **options: object) -> dict[str, object]:
    """A ModelPool spec in wire form for ``model`` (MODEL or ZOO), with fast test options."""
    return {
        "models": [{"name": model, "uri": URIS[model], "maxModelLen": MAX_MODEL_LEN}],
        "replicas": replicas,
        "migration": {"enabled": False, "maxConcurrent": 2},
        "auth": {"mode": "None"},
        "servingOptions": {"replicaNumCpus": 0.5, "controlIntervalS": 0.05, **options},
    }


@pytest.fixture(scope="package")
def zoo_model() -> Path:
    """The zoo checkpoint the ZOO pools serve, trained once and cached."""
    return ensure_model(ZOO_MODEL)


@pytest.fixture(scope="package")
def serve_url(zoo_model: Path) -> Iterator[str]:
    """Start Ray and Serve on 127.0.0.1; the base URL of Serve's HTTP proxy."""
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=4, include_dashboard=False, namespace="modelfleet-tests")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(serve_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A pool named after the test module, at ``/<name>``; its base URL for clients. Its
    engine replicas are detached actors, so they are killed with it."""
    name = request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")
    spec = getattr(request.module, "SPEC", pool_spec(2))
    deploy(spec, name=name, route_prefix=f"/{name}")
    yield f"{serve_url}/{name}"
    serve.delete(name)
    kill_pool_replicas(name)


def client(base_url: str) -> openai.OpenAI:
    """The official client, without retries so 4xx/5xx surface as they are."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def expected_tokens(
    text: str,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    model: str = MODEL,
    **sampling: Any,
) -> list[int]:
    """What ``model`` generates for the completion prompt ``text`` alone in one
    in-process engine; ``sampling`` holds further :class:`SamplingParams` fields.

    The zoo model runs past its EOS (as streams opened with ``ignore_eos`` do), so long
    streams stay busy; the mini model stops at its EOS.
    """
    torch.set_num_threads(1)
    if model == ZOO:
        directory = ensure_model(ZOO_MODEL)
        engine = TorchEngine(load_decoder(directory, MAX_MODEL_LEN))
        prompt, stops = HfTokenizer.from_dir(directory).encode_prompt(text), ()
    else:
        engine = TorchEngine(Decoder(resolve_model(MINI_URI, MAX_MODEL_LEN)), EngineConfig())
        prompt, stops = ByteTokenizer().encode(text), (ByteTokenizer.EOS,)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        stop_token_ids=stops,
        **sampling,
    )
    engine.add_request("r", prompt, params)
    return [event.token_id for event in engine.stream("r")]


def status_of(name: str, model: str = MODEL) -> dict[str, Any]:
    """The pool's status for its only model."""
    models: dict[str, Any] = app_status(name)["models"]
    return dict(models[model])


def open_stream(
    base_url: str, prompt: str, max_tokens: int, temperature: float = 0.0, model: str = MODEL
) -> Any:
    """A streamed completion that reports each chunk's token ids, seeded with 0; the zoo
    model ignores its EOS so the stream runs ``max_tokens`` long."""
    return client(base_url).completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=0,
        stream=True,
        extra_body={"return_token_ids": True, "ignore_eos": model == ZOO},
    )


def read_tokens(chunks: Iterator[Any], count: int | None = None) -> list[int]:
    """Token ids of the next ``count`` chunks, or of all that remain."""
    tokens: list[int] = []
    for chunk in chunks:
        tokens.extend(chunk.choices[0].model_extra["token_ids"])
        if count is not None and len(tokens) >= count:
            break
    return tokens
