"""The vLLM engine's seams, checked where vLLM and GPUs are absent.

Which URIs a vLLM model accepts, that the torch path is unchanged, that a replica asked
for vLLM where it cannot run fails naming the spec field and the fix, and, against a
fake ``vllm`` module that records what the engine hands it, how requests, sampling
parameters, LoRA adapters and migration map onto vLLM and how its outputs become
events. The engine on real vLLM is tested in ``tests/gpu``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from ray.serve import Application

from modelfleet.api.auth import Auth, AuthMode
from modelfleet.api.modelpool import ModelPoolSpec, ServedModel
from modelfleet.serving.app import build
from modelfleet.serving.catalog import CheckpointModel, resolve_model, resolve_served_model
from modelfleet.serving.frontend import ServingOptions, pool_settings
from modelfleet.serving.interface import (
    GrammarSpec,
    RequestState,
    SamplingParams,
    TokenLogprob,
)
from modelfleet.serving.model import ModelConfig
from modelfleet.serving.replica import EngineSpec, build_engine
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine
from modelfleet.serving.vllm_engine import VllmEngine, VllmModel, VllmUnavailableError

MINI_URI = "builtin://tiny-llama-mini"


def vllm_model(uri: str, **fields: object) -> ServedModel:
    return ServedModel.model_validate({"name": "m", "uri": uri, "engine": "VLLM", **fields})


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("hf://gpt2", "gpt2"),
        ("file:///models/llama-3-8b", "/models/llama-3-8b"),
        ("zoo://llama-arith", "zoo://llama-arith"),
    ],
)
def test_vllm_uri_resolves_to_what_engine_args_loads(uri: str, expected: str) -> None:
    served = vllm_model(uri, maxModelLen=4096, tensorParallel=2)
    assert resolve_served_model(served, 3) == VllmModel(
        model=expected, source="spec.models[3]", max_model_len=4096, tensor_parallel=2
    )


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("hf://org/name/extra", "hf://<org>/<name>"),
        ("hf://org/", "hf://<org>/<name>"),
        ("file://models/llama", "absolute directory"),
        ("ftp://host/llama", "unknown scheme 'ftp'"),
        (MINI_URI, "set spec.models[1].engine: Torch"),
    ],
)
def test_vllm_uri_errors_name_the_field(uri: str, hint: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.models\[1\]\.uri") as error:
        resolve_served_model(vllm_model(uri), 1)
    assert hint in str(error.value)


def test_torch_models_resolve_as_before() -> None:
    torch_model = ServedModel(name="m", uri=MINI_URI, max_model_len=512)
    assert resolve_served_model(torch_model, 0) == resolve_model(MINI_URI, 512)
    checkpoint = resolve_served_model(ServedModel(name="m", uri="hf://org/name"), 0)
    assert isinstance(checkpoint, CheckpointModel)


def test_pool_settings_thread_the_engine_and_the_model_position() -> None:
    spec = ModelPoolSpec(
        models=[
            ServedModel(name="tiny", uri=MINI_URI, max_model_len=512),
            vllm_model("hf://org/name", name="big", maxModelLen=8192, tensorParallel=4),
        ],
        auth=Auth(mode=AuthMode.NONE),
    )
    options = ServingOptions()
    tiny, big = (pool_settings(model, spec, options, "app") for model in spec.models)
    assert isinstance(tiny.engine.model, ModelConfig)
    assert big.engine.model == VllmModel("org/name", "spec.models[1]", 8192, 4)
    assert big.engine.engine.block_size == options.block_size


def vllm_spec() -> EngineSpec:
    return EngineSpec(VllmModel("org/name", "spec.models[2]", 2048), EngineConfig())


def test_missing_vllm_fails_naming_the_field_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(VllmUnavailableError) as error:
        build_engine(vllm_spec())
    message = str(error.value)
    assert "spec.models[2].engine is VLLM, but vLLM cannot be imported" in message
    assert "set spec.models[2].engine: Torch" in message
    assert "modelfleet[gpu]" in message


def test_missing_cuda_fails_naming_the_field_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VllmUnavailableError) as error:
        build_engine(vllm_spec())
    message = str(error.value)
    assert "spec.models[2].engine is VLLM, but no CUDA device is visible" in message
    assert "set spec.models[2].engine: Torch" in message
    assert "GPU nodes" in message


def test_torch_spec_still_builds_the_torch_engine() -> None:
    config = ModelConfig(num_layers=1, hidden_size=32, intermediate_size=64, max_positions=64)
    assert isinstance(build_engine(EngineSpec(config, EngineConfig())), TorchEngine)


def test_replicas_of_vllm_models_reserve_their_tensor_parallel_gpus() -> None:
    assert EngineSpec(VllmModel("org/name", "spec.models[0]", 2048, 4), EngineConfig()).gpus() == 4
    assert EngineSpec(ModelConfig(), EngineConfig()).gpus() == 0


def test_the_http_application_serves_vllm_models() -> None:
    wire = {
        "models": [{"name": "big", "uri": "hf://org/name", "engine": "VLLM"}],
        "replicas": 1,
        "auth": {"mode": "None"},
    }
    assert isinstance(build(wire), Application)


# A fake ``vllm``: the engine's requests and sampling parameters are recorded, and each
# step produces one token per running request from a fixed ranking of the vocabulary.

VOCAB = 50
BLOCKS = 64
PROMPT = (3, 4, 5, 6, 7)


@dataclass(frozen=True)
class FakeLogprob:
    logprob: float
    rank: int


def ranking(position: int) -> list[int]:
    """The fake model's tokens at ``position``, most likely first; pairs of positions
    share one, so a greedy request repeats tokens (for the penalties)."""
    start = 7 * (position // 2)
    return [(start + rank) % VOCAB for rank in range(VOCAB)]


def logprob_of_rank(rank: int) -> float:
    return -0.5 * rank


@dataclass(frozen=True)
class FakeStructuredOutputsParams:
    json: str | None = None
    json_object: bool | None = None


@dataclass(frozen=True)
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeEngineArgs:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@dataclass
class FakeRequest:
    tokens: list[int]
    params: dict[str, Any]
    lora_request: FakeLoRARequest | None
    priority: int
    generated: list[int] = field(default_factory=list)


class FakeLLMEngine:
    """Records what it is given; ``sampled_rank`` chooses which token each step samples."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.model_config = SimpleNamespace(
            get_vocab_size=lambda: VOCAB, max_model_len=args["max_model_len"]
        )
        cache = SimpleNamespace(num_gpu_blocks=BLOCKS, block_size=args["block_size"])
        self.vllm_config = SimpleNamespace(cache_config=cache)
        self.added: dict[str, FakeRequest] = {}
        self.running: dict[str, FakeRequest] = {}
        self.sampled_rank = 1

    @classmethod
    def from_engine_args(cls, engine_args: FakeEngineArgs) -> FakeLLMEngine:
        return cls(engine_args.kwargs)

    def add_request(
        self,
        request_id: str,
        prompt: dict[str, list[int]],
        params: FakeSamplingParams,
        lora_request: FakeLoRARequest | None = None,
        priority: int = 0,
    ) -> None:
        request = FakeRequest(
            list(prompt["prompt_token_ids"]), params.kwargs, lora_request, priority
        )
        self.added[request_id] = self.running[request_id] = request

    def abort_request(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            del self.running[request_id]

    def step(self) -> list[SimpleNamespace]:
        outputs = [self._output(rid, request) for rid, request in self.running.items()]
        self.running = {o.request_id: self.running[o.request_id] for o in outputs if not o.finished}
        return outputs

    def _output(self, request_id: str, request: FakeRequest) -> SimpleNamespace:
        params = request.params
        first = not request.generated
        ranked = ranking(len(request.tokens) + len(request.generated))
        token = ranked[self.sampled_rank - 1]
        request.generated.append(token)
        scores = None
        if params["logprobs"] is not None:
            scores = {token: FakeLogprob(logprob_of_rank(self.sampled_rank), self.sampled_rank)}
            for rank, top in enumerate(ranked[: params["logprobs"]], start=1):
                scores[top] = FakeLogprob(logprob_of_rank(rank), rank)
        finished = (
            token in params["stop_token_ids"] or len(request.generated) == params["max_tokens"]
        )
        reason = ("stop" if token in params["stop_token_ids"] else "length") if finished else None
        prompt_logprobs = None
        if first and params["prompt_logprobs"] is not None:
            prompt_logprobs = [None] + [
                {t: FakeLogprob(-0.25 * i, 1)} for i, t in enumerate(request.tokens[1:], 1)
            ]
        completion = SimpleNamespace(
            token_ids=[token], logprobs=None if scores is None else [scores], finish_reason=reason
        )
        return SimpleNamespace(
            request_id=request_id,
            outputs=[completion],
            finished=finished,
            prompt_logprobs=prompt_logprobs,
        )


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fake ``vllm`` in ``sys.modules`` and a CUDA device that seems to be there."""
    vllm = ModuleType("vllm")
    sampling = ModuleType("vllm.sampling_params")
    lora = ModuleType("vllm.lora")
    lora_request = ModuleType("vllm.lora.request")
    sampling.RequestOutputKind = SimpleNamespace(DELTA="delta")  # type: ignore[attr-defined]
    sampling.StructuredOutputsParams = FakeStructuredOutputsParams  # type: ignore[attr-defined]
    lora_request.LoRARequest = FakeLoRARequest  # type: ignore[attr-defined]
    lora.request = lora_request  # type: ignore[attr-defined]
    vllm.sampling_params = sampling  # type: ignore[attr-defined]
    vllm.lora = lora  # type: ignore[attr-defined]
    vllm.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    vllm.EngineArgs = FakeEngineArgs  # type: ignore[attr-defined]
    vllm.LLMEngine = FakeLLMEngine  # type: ignore[attr-defined]
    for module in (vllm, sampling, lora, lora_request):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return vllm


def write_adapter(directory: Path, rank: object) -> str:
    """A PEFT adapter directory whose config has rank ``rank``; its path."""
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16}))
    return str(directory)


def make_engine(*adapters: tuple[str, str]) -> VllmEngine:
    model = VllmModel("org/name", "spec.models[0]", 256, adapters=adapters)
    return VllmEngine(model, EngineConfig(block_size=16))


def fake(engine: VllmEngine) -> FakeLLMEngine:
    llm_engine = engine.llm_engine
    assert isinstance(llm_engine, FakeLLMEngine)
    return llm_engine


def added_params(engine: VllmEngine, request_id: str) -> dict[str, Any]:
    return fake(engine).added[request_id].params


def test_sampling_params_map_one_to_one(fake_vllm: ModuleType) -> None:
    engine = make_engine()
    params = SamplingParams(
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        seed=11,
        stop_token_ids=(2,),
        logprobs=3,
        prompt_logprobs=True,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
    )
    engine.add_request("r", PROMPT, params, priority=2)

    request = fake(engine).added["r"]
    assert request.tokens == list(PROMPT)
    assert request.priority == -2 and request.lora_request is None
    assert request.params == {
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 11,
        "stop_token_ids": [2],
        "logprobs": 3,
        "prompt_logprobs": 0,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "ignore_eos": True,
        "detokenize": False,
        "output_kind": "delta",
    }


def test_unrequested_logprobs_stay_off(fake_vllm: ModuleType) -> None:
    engine = make_engine()
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=2))

    params = added_params(engine, "r")
    assert params["logprobs"] is None and params["prompt_logprobs"] is None
    for event in engine.stream("r"):
        assert (event.logprob, event.top_logprobs, event.prompt_logprobs) == (None, (), None)


@pytest.mark.parametrize(
    ("grammar", "constraint"),
    [
        (GrammarSpec("json_object"), FakeStructuredOutputsParams(json_object=True)),
        (
            GrammarSpec("json_schema", '{"type": "object"}'),
            FakeStructuredOutputsParams(json='{"type": "object"}'),
        ),
    ],
)
def test_grammar_becomes_structured_outputs(
    fake_vllm: ModuleType, grammar: GrammarSpec, constraint: FakeStructuredOutputsParams
) -> None:
    engine = make_engine()
    engine.add_request("r", PROMPT, SamplingParams(grammar=grammar))
    assert added_params(engine, "r")["structured_outputs"] == constraint


def test_grammar_becomes_guided_decoding_where_vllm_predates_structured_outputs(
    fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampling = fake_vllm.sampling_params
    monkeypatch.delattr(sampling, "StructuredOutputsParams")
    monkeypatch.setattr(
        sampling, "GuidedDecodingParams", FakeStructuredOutputsParams, raising=False
    )
    engine = make_engine()
    engine.add_request("r", PROMPT, SamplingParams(grammar=GrammarSpec("json_object")))

    params = added_params(engine, "r")
    assert params["guided_decoding"] == FakeStructuredOutputsParams(json_object=True)
    assert "structured_outputs" not in params


def expected_top(position: int, count: int) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(token, logprob_of_rank(rank))
        for rank, token in enumerate(ranking(position)[:count], start=1)
    )


@pytest.mark.parametrize("sampled_rank", [1, 2, 4])
def test_logprob_events_carry_the_chosen_token_and_the_top_tokens_most_likely_first(
    fake_vllm: ModuleType, sampled_rank: int
) -> None:
    engine = make_engine()
    fake(engine).sampled_rank = sampled_rank
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=3, logprobs=2))
    events = list(engine.stream("r"))

    assert [event.index for event in events] == [0, 1, 2]
    for event in events:
        position = len(PROMPT) + event.index
        assert event.token_id == ranking(position)[sampled_rank - 1]
        assert event.logprob == logprob_of_rank(sampled_rank)
        assert event.top_logprobs == expected_top(position, 2)
        assert event.prompt_logprobs is None


def test_logprobs_zero_gives_the_chosen_token_only(fake_vllm: ModuleType) -> None:
    engine = make_engine()
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=1, logprobs=0))
    [event] = engine.stream("r")
    assert (event.logprob, event.top_logprobs) == (logprob_of_rank(1), ())


def test_prompt_logprobs_come_with_the_first_event_only(fake_vllm: ModuleType) -> None:
    engine = make_engine()
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=3, prompt_logprobs=True))
    first, *rest = engine.stream("r")

    assert first.prompt_logprobs == (
        None,
        *(TokenLogprob(token, -0.25 * i) for i, token in enumerate(PROMPT[1:], start=1)),
    )
    assert [event.prompt_logprobs for event in rest] == [None, None]
    assert (first.logprob, first.top_logprobs) == (None, ())


def test_adapters_turn_on_lora_with_their_largest_rank_rounded_up(
    fake_vllm: ModuleType, tmp_path: Path
) -> None:
    small = write_adapter(tmp_path / "small", 4)
    large = write_adapter(tmp_path / "large", 24)
    engine = make_engine(("small", small), ("large", large))

    args = fake(engine).args
    assert (args["enable_lora"], args["max_loras"], args["max_lora_rank"]) == (True, 2, 32)
    assert not {"enable_lora", "max_loras", "max_lora_rank"} & set(fake(make_engine()).args)


@pytest.mark.parametrize(
    ("rank", "error"),
    [
        (1024, r"spec\.models\[0\]\.adapters\[1\]: rank r=1024 exceeds 512"),
        (0, r"spec\.models\[0\]\.adapters\[1\] \(b\): .* needs a positive integer 'r', got 0"),
        ("8", r"spec\.models\[0\]\.adapters\[1\] \(b\): .* needs a positive integer 'r'"),
    ],
)
def test_adapter_ranks_vllm_cannot_serve_fail_naming_the_adapter(
    fake_vllm: ModuleType, tmp_path: Path, rank: object, error: str
) -> None:
    adapters = (("a", write_adapter(tmp_path / "a", 8)), ("b", write_adapter(tmp_path / "b", rank)))
    with pytest.raises(ValueError, match=error):
        make_engine(*adapters)


def test_an_adapter_without_a_peft_config_fails_naming_it(
    fake_vllm: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"spec\.models\[0\]\.adapters\[0\] \(a\): cannot read"):
        make_engine(("a", str(tmp_path)))


def test_requests_name_their_adapter_and_unknown_ones_fail_naming_model(
    fake_vllm: ModuleType, tmp_path: Path
) -> None:
    first = write_adapter(tmp_path / "first", 8)
    second = write_adapter(tmp_path / "second", 8)
    engine = make_engine(("first", first), ("second", second))
    engine.add_request("r", PROMPT, SamplingParams(adapter="second"))
    engine.add_request("base", PROMPT, SamplingParams())

    assert fake(engine).added["r"].lora_request == FakeLoRARequest("second", 2, second)
    assert fake(engine).added["base"].lora_request is None
    with pytest.raises(ValueError, match=r"^model: 'third' is not an adapter of spec\.models\[0\]"):
        engine.add_request("bad", PROMPT, SamplingParams(adapter="third"))
    assert "bad" not in fake(engine).added


def test_a_migrated_request_keeps_its_adapter_logprobs_and_penalties(
    fake_vllm: ModuleType, tmp_path: Path
) -> None:
    adapter = ("tuned", write_adapter(tmp_path / "tuned", 16))
    source, target = make_engine(adapter), make_engine(adapter)
    params = SamplingParams(
        max_tokens=10,
        seed=3,
        logprobs=1,
        prompt_logprobs=True,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        adapter="tuned",
    )
    source.add_request("r", PROMPT, params, priority=1)
    before = [source.step()[0] for _ in range(4)]

    state = source.export_request("r", from_block=source.export_kv_blocks("r").end_block)
    target.import_request(state)
    after = list(target.stream("r"))

    output = [event.token_id for event in before]
    assert state.output_token_ids == tuple(output) and len(set(output)) < len(output)
    resumed = fake(target).added["r"]
    assert resumed.tokens == [*PROMPT, *output]
    assert resumed.lora_request == fake(source).added["r"].lora_request
    assert resumed.priority == -1
    counts = Counter(output)
    assert resumed.params["logit_bias"] == {
        token: -(0.25 * count + 0.5) for token, count in counts.items()
    }
    expected = {"max_tokens": 6, "seed": 3, "logprobs": 1, "prompt_logprobs": None}
    assert {key: resumed.params[key] for key in expected} == expected
    assert (resumed.params["presence_penalty"], resumed.params["frequency_penalty"]) == (0.5, 0.25)
    assert [event.index for event in after] == [4, 5, 6, 7, 8, 9]
    assert all(event.prompt_logprobs is None for event in after)
    assert all(event.logprob is not None and len(event.top_logprobs) == 1 for event in after)
    assert before[0].prompt_logprobs is not None


def test_a_request_exported_before_its_first_token_still_gets_its_prompt_logprobs(
    fake_vllm: ModuleType,
) -> None:
    source, target = make_engine(), make_engine()
    source.add_request("r", PROMPT, SamplingParams(max_tokens=2, prompt_logprobs=True))
    target.import_request(source.export_request("r"))

    assert added_params(target, "r")["prompt_logprobs"] == 0
    assert "logit_bias" not in added_params(target, "r")
    first, _ = target.stream("r")
    assert first.index == 0 and first.prompt_logprobs is not None


def test_a_grammar_constrained_request_stays_put_once_it_has_output(
    fake_vllm: ModuleType,
) -> None:
    engine = make_engine()
    params = SamplingParams(max_tokens=4, grammar=GrammarSpec("json_object"))
    engine.add_request("r", PROMPT, params)
    assert engine.export_kv_blocks("r").num_blocks == 0
    [first] = engine.step()

    for export in (engine.export_kv_blocks, engine.export_request):
        with pytest.raises(ValueError, match="grammar-constrained request cannot move"):
            export("r", 0)
    assert engine.load().running == 1 and "r" in fake(engine).running
    assert [event.index for event in engine.stream("r")] == [1, 2, 3]

    recovered = RequestState("moved", PROMPT, (first.token_id,), params, 0, 0, None)
    with pytest.raises(ValueError, match="grammar-constrained request cannot move"):
        make_engine().import_request(recovered)
