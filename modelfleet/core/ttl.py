"""A value recomputed at most once per time-to-live.

Cluster-wide facts every reconcile consults (the GPU nodes, whether KubeRay is
installed) change rarely; re-reading them for each of hundreds of resources on
every resync would load the API server for nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Ttl(Generic[T]):
    def __init__(self, compute: Callable[[], T], seconds: float) -> None:
        self._compute = compute
        self._seconds = seconds
        self._lock = threading.Lock()
        self._value: T | None = None
        self._expires = 0.0

    def get(self) -> T:
        """The cached value, recomputed when older than the time-to-live."""
        with self._lock:
            now = time.monotonic()
            if self._value is None or now >= self._expires:
                self._value = self._compute()
                self._expires = now + self._seconds
            return self._value
