"""KV blocks are never leaked or owned twice, whatever happens to requests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.kvcache import BlockAllocator, OutOfBlocksError
from modelfleet.serving.model import Decoder
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine

from .conftest import SMALL, prompt

MODEL = Decoder(SMALL)
NUM_BLOCKS = 32


class EnginePair(RuleBasedStateMachine):
    """Random adds, steps, aborts and staged migrations between two small engines."""

    @initialize()
    def start(self) -> None:
        config = EngineConfig(num_blocks=NUM_BLOCKS, block_size=8, max_running=4)
        self.engines = [TorchEngine(MODEL, config), TorchEngine(MODEL, config)]
        self.live: list[set[str]] = [set(), set()]
        self.staged_until: dict[str, int] = {}
        self.counter = 0

    def side_of(self, request_id: str) -> int:
        return 0 if request_id in self.live[0] else 1

    def forget(self, request_id: str) -> None:
        """The request left its engine: call off its migration, if one was staged."""
        side = self.side_of(request_id)
        self.live[side].discard(request_id)
        if self.staged_until.pop(request_id, None) is not None:
            self.engines[1 - side].abort(request_id)

    @rule(
        side=st.integers(0, 1),
        length=st.integers(1, 160),
        max_tokens=st.integers(1, 90),
        temperature=st.sampled_from([0.0, 1.0]),
        priority=st.integers(0, 2),
    )
    def add(
        self, side: int, length: int, max_tokens: int, temperature: float, priority: int
    ) -> None:
        request_id = f"r{self.counter}"
        self.counter += 1
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=self.counter)
        self.engines[side].add_request(request_id, prompt(length, self.counter), params, priority)
        self.live[side].add(request_id)

    @rule(side=st.integers(0, 1), count=st.integers(1, 20))
    def step(self, side: int, count: int) -> None:
        for _ in range(count):
            for event in self.engines[side].step():
                assert event.request_id in self.live[side]
                if event.finished:
                    self.forget(event.request_id)
            self.blocks_are_owned_exactly_once()

    @precondition(lambda self: any(self.live))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.live[0] | self.live[1])))
        self.engines[self.side_of(request_id)].abort(request_id)
        self.forget(request_id)

    @precondition(lambda self: any(self.live))
    @rule(data=st.data())
    def stage(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.live[0] | self.live[1])))
        side = self.side_of(request_id)
        start = self.staged_until.get(request_id, 0)
        chunk = self.engines[side].export_kv_blocks(request_id, start)
        try:
            self.engines[1 - side].import_kv_blocks(request_id, chunk)
        except OutOfBlocksError:
            return
        self.staged_until[request_id] = max(start, chunk.end_block)

    @precondition(lambda self: any(self.live))
    @rule(data=st.data(), with_kv=st.booleans())
    def migrate(self, data: st.DataObject, with_kv: bool) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.live[0] | self.live[1])))
        side = self.side_of(request_id)
        start = self.staged_until.pop(request_id, 0)
        state = self.engines[side].export_request(request_id, from_block=start)
        self.engines[1 - side].import_request(state if with_kv else state.without_kv())
        self.live[side].discard(request_id)
        self.live[1 - side].add(request_id)

    @invariant()
    def blocks_are_owned_exactly_once(self) -> None:
        for side, engine in enumerate(self.engines):
            load = engine.load()
            staged_here = {rid for rid in self.staged_until if rid in self.live[1 - side]}
            owners = self.live[side] | staged_here
            owned = [block for rid in owners for block in engine.block_table(rid)]
            assert len(owned) == len(set(owned)) == load.blocks_used
            assert all(0 <= block < NUM_BLOCKS for block in owned)
            assert load.blocks_used + load.blocks_free == NUM_BLOCKS
            assert load.running + load.waiting == len(self.live[side])


TestEnginePair = EnginePair.TestCase
TestEnginePair.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 160), st.integers(1, 90), st.integers(0, 2), st.integers(0, 10)),
        min_size=1,
        max_size=8,
    )
)
def test_every_request_finishes_under_block_pressure(
    requests: list[tuple[int, int, int, int]],
) -> None:
    """However oversubscribed the pool, preemption lets every request finish in full."""
    engine = TorchEngine(MODEL, EngineConfig(num_blocks=NUM_BLOCKS, block_size=8))
    produced: dict[str, int] = {}
    for step in range(10_000):
        for i, (length, max_tokens, priority, arrival) in enumerate(requests):
            if arrival == step:
                params = SamplingParams(max_tokens=min(max_tokens, 255 - length))
                engine.add_request(f"r{i}", prompt(length, i), params, priority)
        for event in engine.step():
            produced[event.request_id] = produced.get(event.request_id, 0) + 1
        load = engine.load()
        assert load.blocks_used + load.blocks_free == NUM_BLOCKS
        if step > 10 and not load.running + load.waiting:
            break
    expected = {f"r{i}": min(n, 255 - length) for i, (length, n, _, _) in enumerate(requests)}
    assert produced == expected and engine.load().blocks_used == 0


def test_allocator_refuses_over_allocation_and_double_free() -> None:
    allocator = BlockAllocator(4)
    blocks = allocator.allocate(3)
    with pytest.raises(OutOfBlocksError):
        allocator.allocate(2)
    assert allocator.num_free == 1
    allocator.free(blocks[:1])
    with pytest.raises(ValueError, match="blocks"):
        allocator.free(blocks[:1])
    with pytest.raises(ValueError, match="blocks"):
        allocator.free([blocks[1], blocks[1]])
    assert allocator.num_used == 2 and allocator.used_blocks == frozenset(blocks[1:])
