"""A migrated request continues exactly as if it had never moved."""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import TypeVar

import pytest

from modelfleet.serving.interface import KVChunk, RequestState, SamplingParams, TokenEvent
from modelfleet.serving.torch_engine import TorchEngine

from .conftest import EngineFactory, drain, outputs, prompt, run_alone

T = TypeVar("T")
PROMPT = prompt(37, salt=4)
PARAMS = {
    "greedy": SamplingParams(max_tokens=40),
    "sampled": SamplingParams(max_tokens=40, temperature=1.0, top_p=0.95, seed=42),
}


def with_neighbours(engine: TorchEngine, name: str) -> None:
    """Other requests on the engine, so the migrated one shares batches."""
    for i in range(3):
        engine.add_request(f"{name}{i}", prompt(11 + 5 * i, salt=i), SamplingParams(max_tokens=60))


def steps(engine: TorchEngine, count: int) -> list[TokenEvent]:
    return [event for _ in range(count) for event in engine.step()]


def transfer(value: T) -> T:
    """What crosses the wire between replicas: the exported objects must pickle."""
    copied: T = pickle.loads(pickle.dumps(value))
    return copied


def migrate_staged(
    source: TorchEngine, target: TorchEngine, rounds: int, deliver_early: bool
) -> tuple[RequestState, list[TokenEvent]]:
    """Stage full blocks ``rounds`` times while decoding on, then stop-and-copy the rest.

    Staged chunks are written into the target as they arrive (``deliver_early``) or all
    handed to ``import_request`` at the end.
    """
    staged: list[KVChunk] = []
    events: list[TokenEvent] = []
    for _ in range(rounds):
        chunk = transfer(source.export_kv_blocks("m", staged[-1].end_block if staged else 0))
        staged.append(chunk)
        if deliver_early:
            target.import_kv_blocks("m", chunk)
        events += steps(source, 9)
    state = transfer(source.export_request("m", from_block=staged[-1].end_block))
    target.import_request(state, [] if deliver_early else staged)
    return state, events


@pytest.mark.parametrize("mode", sorted(PARAMS))
@pytest.mark.parametrize(("rounds", "deliver_early"), [(1, False), (3, False), (3, True)])
def test_staged_migration_continues_identically(
    make_engine: EngineFactory, mode: str, rounds: int, deliver_early: bool
) -> None:
    expected = run_alone(make_engine(), "m", PROMPT, PARAMS[mode])
    source, target = make_engine(), make_engine(num_blocks=40)
    with_neighbours(source, "s")
    with_neighbours(target, "t")
    source.add_request("m", PROMPT, PARAMS[mode])
    before = steps(source, 7)
    state, during = migrate_staged(source, target, rounds, deliver_early)
    assert state.kv is not None and state.kv.first_block > 0 and state.kv.num_blocks <= 2
    after = drain(target)
    assert list(state.output_token_ids) == outputs(before + during)["m"]
    assert outputs(before + during + after)["m"] == expected
    assert source.load().blocks_used == sum(len(source.block_table(f"s{i}")) for i in range(3))


@pytest.mark.parametrize("mode", sorted(PARAMS))
def test_recomputation_from_tokens_alone_continues_identically(
    make_engine: EngineFactory, mode: str
) -> None:
    expected = run_alone(make_engine(), "m", PROMPT, PARAMS[mode])
    source, target = make_engine(), make_engine()
    source.add_request("m", PROMPT, PARAMS[mode])
    before = steps(source, 15)
    state = source.export_request("m")
    target.import_request(state.without_kv())
    assert outputs(before + drain(target))["m"] == expected


def test_import_waits_for_a_batch_slot_holding_its_kv(make_engine: EngineFactory) -> None:
    expected = run_alone(make_engine(), "m", PROMPT, PARAMS["greedy"])
    source, target = make_engine(), make_engine(max_running=1)
    source.add_request("m", PROMPT, PARAMS["greedy"])
    target.add_request("other", prompt(20), SamplingParams(max_tokens=5))
    before = steps(source, 10) + target.step()
    target.import_request(transfer(source.export_request("m")))
    before += target.step()
    assert target.load().waiting == 1 and len(target.block_table("m")) == 6
    assert outputs(before + drain(target))["m"] == expected


def test_import_without_room_for_its_kv_falls_back_to_recomputation(
    make_engine: EngineFactory,
) -> None:
    expected = run_alone(make_engine(), "m", PROMPT, PARAMS["sampled"])
    source, target = make_engine(), make_engine(num_blocks=32)
    source.add_request("m", PROMPT, PARAMS["sampled"])
    target.add_request("big", prompt(215), SamplingParams(max_tokens=20))
    before = steps(source, 10) + target.step()
    staged = transfer(source.export_kv_blocks("m"))
    target.import_kv_blocks("m", staged)
    assert target.load().blocks_free == 0
    target.import_request(transfer(source.export_request("m", from_block=staged.end_block)))
    assert target.block_table("m") == () and target.load().blocks_used == 27
    assert outputs(before + drain(target))["m"] == expected


def test_abort_releases_blocks_staged_for_an_import(make_engine: EngineFactory) -> None:
    source, target = make_engine(), make_engine()
    source.add_request("m", PROMPT, PARAMS["greedy"])
    steps(source, 20)
    target.import_kv_blocks("m", source.export_kv_blocks("m"))
    assert target.load().blocks_used == len(target.block_table("m")) == 7
    with pytest.raises(ValueError, match="request_id"):
        target.add_request("m", PROMPT, PARAMS["greedy"])
    target.abort("m")
    assert target.load().blocks_used == 0


def test_a_waiting_request_exports_without_kv(make_engine: EngineFactory) -> None:
    engine = make_engine()
    engine.add_request("m", PROMPT, PARAMS["sampled"])
    assert engine.export_kv_blocks("m").num_blocks == 0
    state = engine.export_request("m")
    assert state.kv is None and state.output_token_ids == () and engine.load().waiting == 0


def test_unseeded_sampling_fixes_a_seed_that_travels(make_engine: EngineFactory) -> None:
    source, target = make_engine(), make_engine()
    source.add_request("m", PROMPT, SamplingParams(max_tokens=30, temperature=1.0))
    before = steps(source, 12)
    state = source.export_request("m")
    assert state.params.seed is not None
    target.import_request(state)
    replay = make_engine()
    replay.add_request("m", PROMPT, state.params)
    assert outputs(before + drain(target))["m"] == outputs(drain(replay))["m"]


def test_import_rejects_chunks_with_a_gap(make_engine: EngineFactory) -> None:
    source = make_engine()
    source.add_request("m", PROMPT, PARAMS["greedy"])
    steps(source, 3)
    first = source.export_kv_blocks("m")
    steps(source, 20)
    second = source.export_kv_blocks("m", first.end_block)
    steps(source, 9)
    state = source.export_request("m", from_block=second.end_block)
    target = make_engine()
    with pytest.raises(ValueError, match="kv_chunks"):
        target.import_request(state, [second])
    with pytest.raises(ValueError, match="kv_chunks"):
        target.import_request(state, [first])
    with pytest.raises(ValueError, match="kv_chunks"):
        make_engine(block_size=16).import_request(state, [first, second])
    target.import_kv_blocks("m", first)
    with pytest.raises(ValueError, match="num_cached_tokens"):
        target.import_request(replace(state, num_cached_tokens=3), [second])
    assert target.load().blocks_used == 0


def test_a_request_exported_mid_prefill_is_prefilled_again_and_continues(
    make_engine: EngineFactory,
) -> None:
    params = SamplingParams(max_tokens=12)
    tokens = prompt(100, 3)
    expected = run_alone(make_engine(), "r", tokens, params)
    source, target = make_engine(prefill_chunk_size=16), make_engine(prefill_chunk_size=16)
    source.add_request("r", tokens, params)
    assert source.step() == [] and source.step() == []
    state = source.export_request("r")
    assert state.kv is None and state.num_cached_tokens == 0 and not state.output_token_ids
    target.import_request(state)
    assert [event.token_id for event in target.stream("r")] == expected
    assert source.load().blocks_used == 0
