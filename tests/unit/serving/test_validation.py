"""Bad input fails fast with a ValueError that names the offending parameter."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from modelfleet.serving.interface import SamplingParams, ServingEngine
from modelfleet.serving.model import Decoder, ModelConfig
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine

from .conftest import EngineFactory, prompt


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("temperature", -0.5),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("seed", -1),
    ],
)
def test_sampling_params_name_the_bad_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([], "prompt_token_ids"),
        (prompt(256), "prompt_token_ids"),
        ([1, 2, 999], "prompt_token_ids"),
    ],
)
def test_bad_prompts_are_rejected(
    make_engine: EngineFactory, tokens: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_engine().add_request("a", tokens, SamplingParams())


def test_unknown_and_duplicate_request_ids_are_rejected(make_engine: EngineFactory) -> None:
    engine = make_engine()
    for call in (
        engine.abort,
        engine.stream,
        engine.export_kv_blocks,
        engine.export_request,
        engine.block_table,
    ):
        with pytest.raises(ValueError, match="request_id"):
            call("missing")
    engine.add_request("a", prompt(3), SamplingParams())
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("a", prompt(3), SamplingParams())
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("", prompt(3), SamplingParams())


def test_bad_migration_arguments_are_rejected(make_engine: EngineFactory) -> None:
    engine = make_engine()
    engine.add_request("a", prompt(20), SamplingParams(max_tokens=5))
    engine.step()
    with pytest.raises(ValueError, match="from_block"):
        engine.export_kv_blocks("a", from_block=-1)
    with pytest.raises(ValueError, match="from_block"):
        engine.export_request("a", from_block=9)
    state = engine.export_request("a")
    with pytest.raises(ValueError, match="num_cached_tokens"):
        make_engine().import_request(replace(state, num_cached_tokens=3))
    with pytest.raises(ValueError, match="output_token_ids"):
        make_engine().import_request(replace(state.without_kv(), output_token_ids=(1,) * 5))


def test_engine_and_model_configs_are_checked(model: Decoder) -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        TorchEngine(model, EngineConfig(num_blocks=2, block_size=8))
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(block_size=0)
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(hidden_size=100, num_heads=3)


def test_torch_engine_implements_the_engine_protocol(make_engine: EngineFactory) -> None:
    assert isinstance(make_engine(), ServingEngine)
