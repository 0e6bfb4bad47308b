"""Per-key token buckets for requests and tokens per minute. Pure: time is an argument.

A bucket holds up to a minute's allowance and refills continuously, so a key may burst
to its limit and then proceeds at the limit's rate. Token use is known only once a
completion ends, so tokens are charged then and may take the bucket below zero: the
key's next requests wait until the debt is refilled, which keeps the long-run rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Limit(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"


@dataclass
class TokenBucket:
    capacity: float
    per_second: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, limit: int, now: float) -> TokenBucket:
        return cls(float(limit), limit / 60.0, float(limit), now)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.per_second)
        self.updated = max(self.updated, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most the capacity) is available; 0 if it is now."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.level
        return max(0.0, missing / self.per_second)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount


class RateLimiter:
    """The buckets of every key and limit; a changed limit starts a fresh bucket."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, Limit], tuple[int, TokenBucket]] = {}

    def _bucket(self, key_id: str, kind: Limit, limit: int, now: float) -> TokenBucket:
        held = self._buckets.get((key_id, kind))
        if held is None or held[0] != limit:
            held = (limit, TokenBucket.per_minute(limit, now))
            self._buckets[(key_id, kind)] = held
        return held[1]

    def admit(self, key_id: str, kind: Limit, amount: int, limit: int | None, now: float) -> float:
        """Take ``amount`` when the bucket has it (returns 0), else the seconds to wait.
        At least one unit must be there, so a key in debt waits even with ``amount`` 0."""
        if limit is None:
            return 0.0
        bucket = self._bucket(key_id, kind, limit, now)
        wait = bucket.wait_for(max(amount, 1), now)
        if wait == 0.0:
            bucket.take(amount, now)
        return wait

    def charge(self, key_id: str, kind: Limit, amount: int, limit: int | None, now: float) -> None:
        """Take ``amount`` whether or not the bucket has it (use reported after the fact)."""
        if limit is not None:
            self._bucket(key_id, kind, limit, now).take(amount, now)
