"""How long each handler has been running, so /healthz can tell a wedged operator.

A handler that never returns holds one of kopf's worker threads for good; enough of them
and nothing is reconciled while the event loop (and so a plain /healthz) looks fine.
Handlers are never meant to wait on workloads, so one running for minutes is a fault the
kubelet should answer by restarting the container.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STALL_SECONDS = float(os.environ.get("MODELFLEET_STALL_SECONDS", "300"))


class HandlerClock:
    """The handlers running now and when each started."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._running: dict[int, tuple[str, float]] = {}

    @contextmanager
    def running(self, what: str) -> Iterator[None]:
        """Count ``what`` (e.g. ``ModelPool team/chat``) as running while the block runs."""
        token = next(self._tokens)
        with self._lock:
            self._running[token] = (what, self._clock())
        try:
            yield
        finally:
            with self._lock:
                del self._running[token]

    def stalled(self, limit_s: float = STALL_SECONDS) -> list[tuple[str, float]]:
        """Handlers running for longer than ``limit_s``, with how long, longest first."""
        now = self._clock()
        with self._lock:
            ages = [(what, now - started) for what, started in self._running.values()]
        return sorted((entry for entry in ages if entry[1] > limit_s), key=lambda e: -e[1])


HANDLERS = HandlerClock()


def health_report(clock: HandlerClock = HANDLERS) -> tuple[bool, str]:
    """Whether the operator is healthy, and the text /healthz answers with."""
    stalled = clock.stalled()
    if not stalled:
        return True, "ok"
    lines = [f"{what}: running for {age:.0f} s" for what, age in stalled]
    return False, f"handlers stalled past {STALL_SECONDS:.0f} s:\n" + "\n".join(lines)
