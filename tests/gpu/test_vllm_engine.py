"""The vLLM engine on a real GPU, against plain vLLM.

Runs only where a CUDA device, vLLM (``pip install -e '.[gpu]'``) and a model exist:
``MODELFLEET_VLLM_MODEL`` names a model vLLM can load without a download (a local
directory, or a Hub id already in the HF cache), e.g.
``MODELFLEET_VLLM_MODEL=/models/Qwen2.5-0.5B-Instruct pytest tests/gpu``.
Three engines share the GPU, each with ``MODELFLEET_VLLM_GPU_MEMORY`` of its memory
(default 0.25).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

MODEL = os.environ.get("MODELFLEET_VLLM_MODEL", "")
if not MODEL:
    pytest.skip("set MODELFLEET_VLLM_MODEL to a local model to run", allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
vllm = pytest.importorskip("vllm", reason="needs vLLM: pip install -e '.[gpu]'")

from modelfleet.serving.interface import SamplingParams, TokenEvent  # noqa: E402
from modelfleet.serving.torch_engine import EngineConfig  # noqa: E402
from modelfleet.serving.vllm_engine import VllmEngine, VllmModel  # noqa: E402

pytestmark = pytest.mark.timeout(900)

MAX_MODEL_LEN = 512
BLOCK_SIZE = 16
ENGINE_ARGS: dict[str, Any] = {
    "gpu_memory_utilization": float(os.environ.get("MODELFLEET_VLLM_GPU_MEMORY", "0.25")),
    "enforce_eager": True,
}
"""The same for every engine here, so that all run the same kernels."""


def prompt(length: int, salt: int = 0) -> list[int]:
    """A deterministic prompt of ordinary token ids (below 1000, in any real vocabulary)."""
    return [(37 * i + 11 * salt) % 900 + 100 for i in range(length)]


def make_engine() -> VllmEngine:
    model = VllmModel(MODEL, "spec.models[0]", MAX_MODEL_LEN)
    return VllmEngine(model, EngineConfig(block_size=BLOCK_SIZE), ENGINE_ARGS)


@pytest.fixture(scope="module")
def source() -> Iterator[VllmEngine]:
    yield make_engine()


@pytest.fixture(scope="module")
def target() -> Iterator[VllmEngine]:
    yield make_engine()


@pytest.fixture(scope="module")
def plain() -> Any:
    """Plain ``vllm.LLM`` with the same model and settings: the reference outputs."""
    return vllm.LLM(model=MODEL, max_model_len=MAX_MODEL_LEN, block_size=BLOCK_SIZE, **ENGINE_ARGS)


def plain_generate(plain: Any, tokens: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens of plain vLLM; EOS ignored, as the engine stops on stop ids only."""
    params = vllm.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    [output] = plain.generate({"prompt_token_ids": tokens}, params, use_tqdm=False)
    return [int(token) for token in output.outputs[0].token_ids]


def step_until(engine: VllmEngine, request_id: str, count: int) -> list[TokenEvent]:
    """Step until ``request_id`` has produced ``count`` tokens; all its events."""
    events: list[TokenEvent] = []
    while len(events) < count:
        events.extend(event for event in engine.step() if event.request_id == request_id)
    return events


def check_indices(events: list[TokenEvent], first: int, finish: str) -> None:
    assert [event.index for event in events] == list(range(first, first + len(events)))
    assert [event.finish_reason for event in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == finish


def test_greedy_equals_plain_vllm_generate(source: VllmEngine, plain: Any) -> None:
    tokens = prompt(40)
    source.add_request("greedy", tokens, SamplingParams(max_tokens=32, temperature=0.0))
    events = list(source.stream("greedy"))

    check_indices(events, 0, "length")
    assert [event.token_id for event in events] == plain_generate(plain, tokens, 32)


def test_stop_token_ends_with_stop(source: VllmEngine, plain: Any) -> None:
    tokens = prompt(30, salt=1)
    reference = plain_generate(plain, tokens, 16)
    stop = reference[5]
    params = SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=(stop,))
    source.add_request("stop", tokens, params)
    events = list(source.stream("stop"))

    check_indices(events, 0, "stop")
    assert [event.token_id for event in events] == reference[: reference.index(stop) + 1]


def test_migration_by_recomputation_continues_greedily(
    source: VllmEngine, target: VllmEngine, plain: Any
) -> None:
    tokens = prompt(100, salt=2)
    source.add_request("move", tokens, SamplingParams(max_tokens=40, temperature=0.0), 3)
    before = step_until(source, "move", 12)

    staged = source.export_kv_blocks("move")
    assert staged.num_blocks == 0
    target.import_kv_blocks("move", staged)
    state = source.export_request("move", from_block=staged.end_block)
    assert state.kv is None and state.num_cached_tokens == 0 and state.priority == 3
    assert list(state.output_token_ids) == [event.token_id for event in before]
    assert source.load().running == 0

    target.import_request(state)
    after = list(target.stream("move"))

    check_indices(after, len(state.output_token_ids), "length")
    produced = [*state.output_token_ids, *(event.token_id for event in after)]
    assert produced == plain_generate(plain, tokens, 40)


def test_seeded_migration_continues_identically_on_model_runner_v2(
    source: VllmEngine, target: VllmEngine
) -> None:
    if not getattr(source.llm_engine.vllm_config, "use_v2_model_runner", False):
        pytest.skip("the V1 model runner restarts a seeded request's generator on import")
    tokens = prompt(60, salt=3)
    params = SamplingParams(max_tokens=30, temperature=0.8, top_p=0.95, seed=7)
    source.add_request("home", tokens, params)
    home = [event.token_id for event in source.stream("home")]

    source.add_request("away", tokens, params)
    step_until(source, "away", 10)
    state = source.export_request("away")
    target.import_request(state)
    away = [*state.output_token_ids, *(event.token_id for event in target.stream("away"))]

    assert away == home


def test_load_tracks_requests_and_blocks(source: VllmEngine) -> None:
    idle = source.load()
    total = idle.blocks_used + idle.blocks_free
    assert (idle.running, idle.waiting, idle.blocks_used) == (0, 0, 0)
    assert total == source.llm_engine.vllm_config.cache_config.num_gpu_blocks > 0
    assert idle.block_size == BLOCK_SIZE

    params = SamplingParams(max_tokens=8, temperature=0.0)
    source.add_request("a", prompt(50, salt=4), params)
    source.add_request("b", prompt(20, salt=5), params)
    queued = source.load()
    assert (queued.running, queued.waiting, queued.blocks_used) == (0, 2, 0)

    step_until(source, "a", 2)
    busy = source.load()
    assert busy.running == 2 and busy.waiting == 0
    assert busy.blocks_used >= -(-52 // BLOCK_SIZE) + -(-22 // BLOCK_SIZE)
    assert busy.blocks_used + busy.blocks_free == total

    source.abort("b")
    while source.load().running or source.load().waiting:
        source.step()
    assert source.load() == idle
