"""Several async streams read as one, each item as soon as it is ready.

The choices of an ``n > 1`` request decode on different replicas at different speeds; a
streamed response forwards every token as it arrives instead of choice by choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")


async def interleave(sources: Sequence[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Items of all ``sources`` in the order they become ready; an error in one ends all.

    Closing the result cancels the reads still waiting.
    """
    pending: dict[asyncio.Future[T], AsyncIterator[T]] = {
        asyncio.ensure_future(anext(source)): source for source in sources
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                source = pending.pop(future)
                try:
                    item = future.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(source))] = source
                yield item
    finally:
        for future in pending:
            future.cancel()
