"""Hugging Face checkpoints in the torch engine, checked against transformers itself.

The oracle is ``transformers``: greedy output must be token-identical to ``generate``,
logprobs must equal the log-softmax of its logits, penalised greedy decoding must follow a
loop over its logits, and a LoRA adapter must decode like PEFT's own merged model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from modelfleet.serving.checkpoint import config_from_hf, load_decoder
from modelfleet.serving.interface import SamplingParams, TokenEvent
from modelfleet.serving.lora import read_adapter
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine
from tests.unit.serving.checkpoints import ARCHITECTURES, save_adapter, save_random_checkpoint

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [5, 9], [40] * 30]


def run(
    engine: TorchEngine, requests: dict[str, tuple[Sequence[int], SamplingParams]]
) -> dict[str, list[TokenEvent]]:
    """Every event of ``requests``, all submitted at once and decoded together."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    events: dict[str, list[TokenEvent]] = {request_id: [] for request_id in requests}
    while any(not e or not e[-1].finished for e in events.values()):
        for event in engine.step():
            events[event.request_id].append(event)
    return events


def tokens(events: list[TokenEvent]) -> list[int]:
    return [event.token_id for event in events]


def hf_greedy(model: Any, prompt: Sequence[int], count: int) -> list[int]:
    output = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=count,
        min_new_tokens=count,
        do_sample=False,
        eos_token_id=None,
    )
    return [int(t) for t in output[0, len(prompt) :]]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_greedy_output_is_token_identical_to_transformers_generate(
    arch: str, tmp_path: Path
) -> None:
    reference = save_random_checkpoint(arch, tmp_path)
    engine = TorchEngine(
        load_decoder(tmp_path, 256), EngineConfig(num_blocks=64, prefill_chunk_size=7)
    )
    params = SamplingParams(max_tokens=24)
    events = run(engine, {str(i): (p, params) for i, p in enumerate(PROMPTS)})
    for i, prompt in enumerate(PROMPTS):
        assert tokens(events[str(i)]) == hf_greedy(reference, prompt, 24), (arch, prompt)


def test_logprobs_are_those_of_the_models_distribution(tmp_path: Path) -> None:
    reference = save_random_checkpoint("llama-gqa", tmp_path)
    engine = TorchEngine(load_decoder(tmp_path, 256))
    prompt = PROMPTS[0]
    params = SamplingParams(max_tokens=4, logprobs=3, prompt_logprobs=True)
    events = run(engine, {"r": (prompt, params)})["r"]
    sequence = [*prompt, *tokens(events)]
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor([sequence])).logits[0].float(), -1)
    for event in events:
        position = len(prompt) + event.index - 1
        assert event.logprob == pytest.approx(float(expected[position, event.token_id]), abs=1e-4)
        best = torch.topk(expected[position], 3)
        assert [t.token_id for t in event.top_logprobs] == best.indices.tolist()
        assert [t.logprob for t in event.top_logprobs] == pytest.approx(
            best.values.tolist(), abs=1e-4
        )
    prompt_logprobs = events[0].prompt_logprobs
    assert prompt_logprobs is not None and prompt_logprobs[0] is None
    for position, entry in enumerate(prompt_logprobs[1:], start=1):
        assert entry is not None and entry.token_id == prompt[position]
        assert entry.logprob == pytest.approx(
            float(expected[position - 1, prompt[position]]), abs=1e-4
        )


def test_penalties_follow_openais_definition(tmp_path: Path) -> None:
    reference = save_random_checkpoint("qwen2-tied", tmp_path)
    engine = TorchEngine(load_decoder(tmp_path, 256))
    presence, frequency, prompt = 0.7, 1.3, PROMPTS[1]
    params = SamplingParams(max_tokens=20, presence_penalty=presence, frequency_penalty=frequency)
    got = tokens(run(engine, {"r": (prompt, params)})["r"])
    output: list[int] = []
    with torch.no_grad():
        for _ in range(20):
            logits = reference(torch.tensor([[*prompt, *output]])).logits[0, -1].double()
            for token in set(output):
                logits[token] -= presence + frequency * output.count(token)
            output.append(int(torch.argmax(logits)))
    assert got == output
    assert got != hf_greedy(reference, prompt, 20)


def test_chunked_prefill_keeps_decoding_while_a_long_prompt_arrives(tmp_path: Path) -> None:
    save_random_checkpoint("llama-gqa", tmp_path)
    decoder = load_decoder(tmp_path, 512)
    engine = TorchEngine(decoder, EngineConfig(num_blocks=64, prefill_chunk_size=32))
    engine.add_request("short", [1, 2, 3], SamplingParams(max_tokens=40))
    engine.step()
    engine.add_request("long", list(range(1, 95)) * 3, SamplingParams(max_tokens=2))
    steps_until_long = 0
    short_tokens = 0
    while True:
        events = engine.step()
        steps_until_long += 1
        short_tokens += sum(e.request_id == "short" for e in events)
        if any(e.request_id == "long" for e in events):
            break
    assert steps_until_long == -(-282 // 32)
    assert short_tokens == steps_until_long
    whole = TorchEngine(decoder, EngineConfig(num_blocks=64, prefill_chunk_size=4096))
    params = SamplingParams(max_tokens=8)
    prompt = list(range(1, 95)) * 3
    chunked = TorchEngine(decoder, EngineConfig(num_blocks=64, prefill_chunk_size=32))
    assert tokens(run(whole, {"r": (prompt, params)})["r"]) == tokens(
        run(chunked, {"r": (prompt, params)})["r"]
    )


def test_adapters_decode_like_their_merged_models_batched_together(tmp_path: Path) -> None:
    save_random_checkpoint("llama-gqa", tmp_path / "base")
    merged = {}
    for name, seed, targets in (
        ("a", 1, ["q_proj", "v_proj"]),
        ("b", 2, ["k_proj", "o_proj", "gate_proj", "down_proj"]),
    ):
        fresh_base = save_random_checkpoint("llama-gqa", tmp_path / "scratch")
        merged[name] = save_adapter(fresh_base, tmp_path / name, seed, targets).merge_and_unload()
    decoder = load_decoder(tmp_path / "base", 256)
    decoder.load_adapters([read_adapter(tmp_path / n, n) for n in ("a", "b")])
    engine = TorchEngine(decoder, EngineConfig(num_blocks=64))
    prompt = PROMPTS[0]
    requests = {
        name or "base": (prompt, SamplingParams(max_tokens=16, adapter=name))
        for name in ("a", "b", None)
    }
    events = run(engine, requests)
    base_model = save_random_checkpoint("llama-gqa", tmp_path / "scratch")
    assert tokens(events["base"]) == hf_greedy(base_model, prompt, 16)
    for name in ("a", "b"):
        assert tokens(events[name]) == hf_greedy(merged[name], prompt, 16), name
    assert tokens(events["a"]) != tokens(events["base"]) != tokens(events["b"])


def test_unknown_adapter_is_refused_naming_the_model(tmp_path: Path) -> None:
    save_random_checkpoint("llama-gqa", tmp_path)
    engine = TorchEngine(load_decoder(tmp_path, 256))
    with pytest.raises(ValueError, match="model: adapter 'nope' is not served here"):
        engine.add_request("r", [1, 2], SamplingParams(adapter="nope"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
        ({"max_position_embeddings": 128}, "exceeds the model's max_position_embeddings 128"),
        ({"model_type": "mistral", "sliding_window": 64}, "sliding_window 64"),
    ],
)
def test_unsupported_configs_are_refused_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    config = ARCHITECTURES["llama-gqa"]().to_dict()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config_from_hf({**config, **change}, 256)


def test_a_checkpoint_with_missing_tensors_is_refused(tmp_path: Path) -> None:
    save_random_checkpoint("llama-gqa", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="missing"):
        load_decoder(tmp_path, 256)
