"""The vLLM engine on a real GPU, against plain vLLM, on the zoo model.

Runs where a CUDA device and vLLM (``pip install -e '.[gpu]'``) exist; skips elsewhere.
Three engines share the GPU, each with ``MODELFLEET_VLLM_GPU_MEMORY`` of its memory
(default 0.2), all with the same LoRA adapter loaded, so that every comparison runs the
same kernels. The adapter is made here with random weights: what is tested is that a
request decodes with it, before and after migration, exactly as plain vLLM does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
vllm = pytest.importorskip("vllm", reason="needs vLLM: pip install -e '.[gpu]'")

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402

from modelfleet.serving.interface import (  # noqa: E402
    GrammarSpec,
    SamplingParams,
    TokenEvent,
)
from modelfleet.serving.torch_engine import EngineConfig  # noqa: E402
from modelfleet.serving.vllm_engine import VllmEngine, VllmModel  # noqa: E402
from modelfleet.zoo.tokenizer import IM_END, SPECIAL_TOKENS  # noqa: E402

from .conftest import max_model_len, shut_down  # noqa: E402

pytestmark = pytest.mark.timeout(600)

BLOCK_SIZE = 16
ADAPTER = "tuned"
EOS = SPECIAL_TOKENS.index(IM_END)
ENGINE_ARGS: dict[str, Any] = {
    "gpu_memory_utilization": float(os.environ.get("MODELFLEET_VLLM_GPU_MEMORY", "0.2")),
    "enforce_eager": True,
}
"""The same for every engine here, so that all run the same kernels."""


def prompt(length: int, salt: int = 0) -> list[int]:
    """A deterministic prompt of byte tokens, which every zoo vocabulary has after its
    special tokens."""
    return [(37 * i + 11 * salt) % 250 + len(SPECIAL_TOKENS) for i in range(length)]


@pytest.fixture(scope="module")
def adapter(zoo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A rank-8 LoRA adapter of the zoo model with random weights, as PEFT saves one."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(zoo_model)
    config = LoraConfig(
        r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    directory = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(str(directory))
    return str(directory)


def make_engine(zoo_model: Path, adapter: str) -> VllmEngine:
    model = VllmModel(
        str(zoo_model), "spec.models[0]", max_model_len(), adapters=((ADAPTER, adapter),)
    )
    return VllmEngine(model, EngineConfig(block_size=BLOCK_SIZE), ENGINE_ARGS)


@pytest.fixture(scope="module")
def source(zoo_model: Path, adapter: str) -> Iterator[VllmEngine]:
    engine = make_engine(zoo_model, adapter)
    yield engine
    shut_down(engine.llm_engine)


@pytest.fixture(scope="module")
def target(zoo_model: Path, adapter: str) -> Iterator[VllmEngine]:
    engine = make_engine(zoo_model, adapter)
    yield engine
    shut_down(engine.llm_engine)


@pytest.fixture(scope="module")
def plain(zoo_model: Path, adapter: str) -> Iterator[Any]:
    """Plain ``vllm.LLM`` with the same model and settings: the reference outputs."""
    llm = vllm.LLM(
        model=str(zoo_model),
        max_model_len=max_model_len(),
        block_size=BLOCK_SIZE,
        enable_lora=True,
        max_loras=1,
        max_lora_rank=8,
        **ENGINE_ARGS,
    )
    yield llm
    shut_down(llm.llm_engine)


def plain_output(plain: Any, tokens: list[int], adapter: str | None = None, **params: Any) -> Any:
    """Plain vLLM's completion of ``tokens``: greedy, EOS ignored (the engine stops on stop
    ids only), with ``params`` added to its ``SamplingParams``."""
    sampling = vllm.SamplingParams(temperature=0.0, ignore_eos=True, **params)
    lora = None if adapter is None else LoRARequest(ADAPTER, 1, adapter)
    [output] = plain.generate(
        {"prompt_token_ids": tokens}, sampling, use_tqdm=False, lora_request=lora
    )
    return output


def plain_tokens(plain: Any, tokens: list[int], max_tokens: int, **params: Any) -> list[int]:
    output = plain_output(plain, tokens, max_tokens=max_tokens, **params)
    return [int(token) for token in output.outputs[0].token_ids]


def step_until(engine: VllmEngine, request_id: str, count: int) -> list[TokenEvent]:
    """Step until ``request_id`` has produced ``count`` tokens; all its events."""
    events: list[TokenEvent] = []
    while len(events) < count:
        events.extend(event for event in engine.step() if event.request_id == request_id)
    return events


def migrate(source: VllmEngine, target: VllmEngine, request_id: str) -> list[int]:
    """Move ``request_id`` to ``target`` and run it there; its whole output."""
    staged = source.export_kv_blocks(request_id)
    assert staged.num_blocks == 0
    target.import_kv_blocks(request_id, staged)
    state = source.export_request(request_id, from_block=staged.end_block)
    assert state.kv is None and state.num_cached_tokens == 0
    target.import_request(state)
    after = list(target.stream(request_id))
    check_indices(after, len(state.output_token_ids), "length")
    return [*state.output_token_ids, *(event.token_id for event in after)]


def check_indices(events: list[TokenEvent], first: int, finish: str) -> None:
    assert [event.index for event in events] == list(range(first, first + len(events)))
    assert [event.finish_reason for event in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == finish


def test_greedy_equals_plain_vllm_generate(source: VllmEngine, plain: Any) -> None:
    tokens = prompt(30)
    source.add_request("greedy", tokens, SamplingParams(max_tokens=24, temperature=0.0))
    events = list(source.stream("greedy"))

    check_indices(events, 0, "length")
    assert [event.token_id for event in events] == plain_tokens(plain, tokens, 24)


def test_stop_token_ends_with_stop(source: VllmEngine, plain: Any) -> None:
    tokens = prompt(20, salt=1)
    reference = plain_tokens(plain, tokens, 16)
    stop = reference[5]
    params = SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=(stop,))
    source.add_request("stop", tokens, params)
    events = list(source.stream("stop"))

    check_indices(events, 0, "stop")
    assert [event.token_id for event in events] == reference[: reference.index(stop) + 1]


def test_logprobs_are_plain_vllms_most_likely_first(source: VllmEngine, plain: Any) -> None:
    tokens = prompt(20, salt=2)
    params = SamplingParams(max_tokens=8, logprobs=3, prompt_logprobs=True)
    source.add_request("scored", tokens, params)
    events = list(source.stream("scored"))
    reference = plain_output(plain, tokens, max_tokens=8, logprobs=3, prompt_logprobs=0)

    completion = reference.outputs[0]
    for event, token, scores in zip(events, completion.token_ids, completion.logprobs, strict=True):
        assert event.token_id == token
        assert event.logprob == pytest.approx(scores[token].logprob)
        top = sorted((lp.rank, t, lp.logprob) for t, lp in scores.items() if lp.rank <= 3)
        assert [item.token_id for item in event.top_logprobs] == [t for _, t, _ in top]
        assert [item.logprob for item in event.top_logprobs] == pytest.approx(
            [lp for *_, lp in top]
        )
        assert event.top_logprobs[0].token_id == event.token_id
        values = [item.logprob for item in event.top_logprobs]
        assert values == sorted(values, reverse=True)
    first = events[0].prompt_logprobs
    assert first is not None and first[0] is None and reference.prompt_logprobs[0] is None
    scored = [item for item in first[1:] if item is not None]
    expected = [
        scores[token]
        for token, scores in zip(tokens[1:], reference.prompt_logprobs[1:], strict=True)
    ]
    assert [item.token_id for item in scored] == tokens[1:]
    assert [item.logprob for item in scored] == pytest.approx([e.logprob for e in expected])
    assert all(event.prompt_logprobs is None for event in events[1:])


def test_migration_by_recomputation_continues_greedily(
    source: VllmEngine, target: VllmEngine, plain: Any
) -> None:
    tokens = prompt(30, salt=3)
    source.add_request("move", tokens, SamplingParams(max_tokens=24, temperature=0.0), 3)
    before = step_until(source, "move", 8)

    produced = migrate(source, target, "move")

    assert produced[:8] == [event.token_id for event in before]
    assert source.load().running == 0
    assert produced == plain_tokens(plain, tokens, 24)


def test_frequency_penalty_continues_across_migration(
    source: VllmEngine, target: VllmEngine, plain: Any
) -> None:
    tokens = prompt(20, salt=4)
    params = SamplingParams(max_tokens=30, frequency_penalty=1.0)
    source.add_request("penalised", tokens, params)
    step_until(source, "penalised", 10)

    produced = migrate(source, target, "penalised")

    assert produced == plain_tokens(plain, tokens, 30, frequency_penalty=1.0)


def test_an_adapter_request_decodes_with_it_across_migration(
    source: VllmEngine, target: VllmEngine, plain: Any, adapter: str
) -> None:
    tokens = prompt(20, salt=5)
    source.add_request("tuned", tokens, SamplingParams(max_tokens=24, adapter=ADAPTER))
    step_until(source, "tuned", 8)

    produced = migrate(source, target, "tuned")

    reference = plain_output(plain, tokens, adapter, max_tokens=24)
    assert produced == [int(token) for token in reference.outputs[0].token_ids]
    assert produced != plain_tokens(plain, tokens, 24)


def test_a_grammar_constrained_request_finishes_where_it_runs(source: VllmEngine) -> None:
    params = SamplingParams(
        max_tokens=12, stop_token_ids=(EOS,), grammar=GrammarSpec("json_object")
    )
    source.add_request("json", prompt(10, salt=6), params)
    step_until(source, "json", 1)

    for export in (source.export_kv_blocks, source.export_request):
        with pytest.raises(ValueError, match="grammar-constrained request cannot move"):
            export("json", 0)
    rest = list(source.stream("json"))
    assert rest[0].index == 1 and rest[-1].finished


def test_seeded_migration_continues_identically_on_model_runner_v2(
    source: VllmEngine, target: VllmEngine
) -> None:
    if not getattr(source.llm_engine.vllm_config, "use_v2_model_runner", False):
        pytest.skip("the V1 model runner restarts a seeded request's generator on import")
    tokens = prompt(20, salt=7)
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
    source.add_request("a", prompt(30, salt=8), params)
    source.add_request("b", prompt(12, salt=9), params)
    queued = source.load()
    assert (queued.running, queued.waiting, queued.blocks_used) == (0, 2, 0)

    step_until(source, "a", 2)
    busy = source.load()
    assert busy.running == 2 and busy.waiting == 0
    assert busy.blocks_used >= -(-32 // BLOCK_SIZE) + -(-14 // BLOCK_SIZE)
    assert busy.blocks_used + busy.blocks_free == total

    source.abort("b")
    while source.load().running or source.load().waiting:
        source.step()
    assert source.load() == idle
