"""The time-to-live cache recomputes only after it expires."""

from __future__ import annotations

import time

from modelfleet.core.ttl import Ttl


def test_value_is_reused_until_it_expires() -> None:
    calls: list[float] = []

    def compute() -> int:
        calls.append(time.monotonic())
        return len(calls)

    cache = Ttl(compute, seconds=0.2)
    assert [cache.get(), cache.get()] == [1, 1]
    time.sleep(0.25)
    assert cache.get() == 2 and len(calls) == 2
