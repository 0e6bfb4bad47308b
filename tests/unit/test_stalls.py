"""/healthz fails once a handler has run for longer than a handler ever should."""

from __future__ import annotations

import pytest

from controllers.stalls import STALL_SECONDS, HandlerClock, health_report


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_handler_running_past_the_limit_fails_the_probe_and_names_its_object() -> None:
    clock = Clock()
    handlers = HandlerClock(clock)
    with handlers.running("ModelPool team/fast"):
        clock.now += 1
    assert health_report(handlers) == (True, "ok")
    with handlers.running("ModelPool team/stuck"):
        clock.now += STALL_SECONDS - 1
        assert health_report(handlers)[0] is True
        clock.now += 2
        healthy, text = health_report(handlers)
        assert not healthy and "ModelPool team/stuck: running for" in text
    assert health_report(handlers) == (True, "ok"), "a handler that returns is forgotten"


def test_a_handler_that_raises_is_forgotten_too() -> None:
    clock = Clock()
    handlers = HandlerClock(clock)
    with pytest.raises(RuntimeError), handlers.running("FedJob a/b"):
        raise RuntimeError("boom")
    clock.now += 2 * STALL_SECONDS
    assert handlers.stalled() == []
