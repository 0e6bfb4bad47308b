"""Shared fixtures: a small seeded model so every test runs the same weights quickly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from modelfleet.serving.interface import SamplingParams, TokenEvent
from modelfleet.serving.model import Decoder, ModelConfig
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine

torch.set_num_threads(1)

SMALL = ModelConfig(
    num_layers=2, num_heads=4, hidden_size=64, intermediate_size=176, max_positions=256
)

EngineFactory = Callable[..., TorchEngine]


@pytest.fixture(scope="session")
def model() -> Decoder:
    return Decoder(SMALL)


@pytest.fixture
def make_engine(model: Decoder) -> EngineFactory:
    def make(**overrides: int) -> TorchEngine:
        return TorchEngine(model, EngineConfig(**{"num_blocks": 64, "block_size": 8, **overrides}))

    return make


def prompt(length: int, salt: int = 0) -> list[int]:
    """A deterministic prompt of ``length`` token ids."""
    return [(7 * i + 13 * salt + 1) % 256 for i in range(length)]


def run_alone(
    engine: TorchEngine, request_id: str, tokens: list[int], params: SamplingParams
) -> list[int]:
    """The output of one request run with nothing else in the engine."""
    engine.add_request(request_id, tokens, params)
    return [event.token_id for event in engine.stream(request_id)]


def drain(engine: TorchEngine) -> list[TokenEvent]:
    """Step until the engine holds no request; all events in order."""
    events: list[TokenEvent] = []
    while engine.load().running or engine.load().waiting:
        events.extend(engine.step())
    return events


def outputs(events: list[TokenEvent]) -> dict[str, list[int]]:
    """Tokens per request, checking each arrives once and in index order."""
    result: dict[str, list[int]] = {}
    for event in events:
        tokens = result.setdefault(event.request_id, [])
        assert event.index == len(tokens)
        tokens.append(event.token_id)
    return result
