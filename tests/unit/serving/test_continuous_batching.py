"""Continuous batching changes throughput, never tokens."""

from __future__ import annotations

import pytest

from modelfleet.serving.interface import SamplingParams

from .conftest import EngineFactory, drain, outputs, prompt, run_alone

REQUESTS = {f"r{i}": (prompt(5 + 9 * i, salt=i), 6 + 3 * i) for i in range(6)}


def alone(
    make_engine: EngineFactory, params_for: dict[str, SamplingParams]
) -> dict[str, list[int]]:
    """The reference: each request's tokens on an engine of its own."""
    return {
        rid: run_alone(make_engine(), rid, REQUESTS[rid][0], params)
        for rid, params in params_for.items()
    }


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_concurrent_requests_match_running_alone(
    make_engine: EngineFactory, temperature: float
) -> None:
    params = {
        rid: SamplingParams(max_tokens=n, temperature=temperature, top_p=0.9, seed=i)
        for i, (rid, (_, n)) in enumerate(REQUESTS.items())
    }
    engine = make_engine()
    for rid, request_params in params.items():
        engine.add_request(rid, REQUESTS[rid][0], request_params)
    assert outputs(drain(engine)) == alone(make_engine, params)


def test_requests_joining_mid_flight_match_running_alone(make_engine: EngineFactory) -> None:
    params = {rid: SamplingParams(max_tokens=n) for rid, (_, n) in REQUESTS.items()}
    engine = make_engine()
    events = []
    for rid in REQUESTS:
        engine.add_request(rid, REQUESTS[rid][0], params[rid])
        events += engine.step() + engine.step()
    events += drain(engine)
    assert outputs(events) == alone(make_engine, params)


def test_out_of_blocks_queues_and_preempts_without_changing_tokens(
    make_engine: EngineFactory,
) -> None:
    """A pool far smaller than the load delays requests but every one finishes identically."""
    params = {rid: SamplingParams(max_tokens=n + 10) for rid, (_, n) in REQUESTS.items()}
    engine = make_engine(num_blocks=32)
    for rid in REQUESTS:
        engine.add_request(rid, REQUESTS[rid][0], params[rid])
    events = []
    saw_queueing = False
    while engine.load().running or engine.load().waiting:
        events += engine.step()
        load = engine.load()
        saw_queueing |= load.waiting > 0 and load.running > 0
        assert load.blocks_used + load.blocks_free == 32
    assert saw_queueing
    assert outputs(events) == alone(make_engine, params)
    assert engine.load().blocks_used == 0


def test_max_running_limits_the_batch_and_priority_decides_admission(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine(max_running=2)
    for i, priority in enumerate([0, 5, 1, 5]):
        engine.add_request(f"p{i}", prompt(4, i), SamplingParams(max_tokens=3), priority=priority)
    first = engine.step()
    assert [event.request_id for event in first] == ["p1", "p3"]
    assert engine.load().running == 2 and engine.load().waiting == 2
    order = [event.request_id for event in drain(engine) if event.finished]
    assert order == ["p1", "p3", "p2", "p0"]


def test_stream_yields_each_event_once_and_step_returns_the_rest(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine()
    engine.add_request("a", prompt(10), SamplingParams(max_tokens=4))
    engine.add_request("b", prompt(12, 1), SamplingParams(max_tokens=8))
    streamed = list(engine.stream("a"))
    assert [event.index for event in streamed] == [0, 1, 2, 3] and streamed[-1].finished
    rest = outputs(drain(engine))
    assert list(rest) == ["b"] and len(rest["b"]) == 8


def test_stop_token_finishes_the_request(make_engine: EngineFactory) -> None:
    free_run = run_alone(make_engine(), "a", prompt(10), SamplingParams(max_tokens=12))
    stop = free_run[4]
    first = free_run.index(stop)
    engine = make_engine()
    engine.add_request("a", prompt(10), SamplingParams(max_tokens=12, stop_token_ids=(stop,)))
    events = list(engine.stream("a"))
    assert [event.token_id for event in events] == free_run[: first + 1]
    assert events[-1].finish_reason == "stop"


def test_generation_stops_at_max_positions(make_engine: EngineFactory) -> None:
    engine = make_engine()
    engine.add_request("a", prompt(250), SamplingParams(max_tokens=100))
    events = list(engine.stream("a"))
    assert len(events) == 6 and events[-1].finish_reason == "length"
