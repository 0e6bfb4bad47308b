"""The choices of one request, running in a pool, as a JSON body or an SSE stream.

Each choice is a pool request whose token events become deltas (see
:mod:`~modelfleet.serving.choices`). Whatever ends a response (its last token, a stop
string, an error, a client that left), every request it still runs is cancelled, so its
KV blocks are freed at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet.core.openai_api import (
    completion_body,
    generation_failed,
    role_choice,
    sse,
    text_choice,
    usage,
)
from modelfleet.serving.choices import ChoiceDecoder, Delta
from modelfleet.serving.interface import TokenEvent
from modelfleet.serving.interleave import interleave
from modelfleet.serving.logprobs_format import chat_logprobs, completion_logprobs
from modelfleet.serving.manager import PoolManager, Stream
from modelfleet.serving.slo import RequestTiming, SloWindow, time_per_output_token
from modelfleet.serving.tokenizer import TextTokenizer


@dataclass(frozen=True)
class ChoiceFormat:
    """How a request's choices are written: chat or completion, with log-probabilities
    and token ids when asked for."""

    tokenizer: TextTokenizer
    chat: bool
    logprobs: bool
    token_ids: bool

    def choice(self, index: int, deltas: Sequence[Delta], stream: bool) -> dict[str, Any]:
        """Choice ``index`` made of ``deltas``: all of them, or one streamed chunk's."""
        return text_choice(
            index,
            "".join(delta.text for delta in deltas),
            deltas[-1].finish_reason,
            self.chat,
            stream,
            self._logprobs(deltas),
            [delta.token_id for delta in deltas] if self.token_ids else None,
        )

    def _logprobs(self, deltas: Sequence[Delta]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        scored = [token for delta in deltas for token in delta.scored]
        if self.chat:
            return chat_logprobs(self.tokenizer, scored)
        offsets = [offset for delta in deltas for offset in delta.offsets]
        return completion_logprobs(self.tokenizer, scored, offsets)


async def stream_sse(
    response_id: str,
    model: str,
    choices: Sequence[AsyncIterator[Delta]],
    form: ChoiceFormat,
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE chunks: (chat: a role chunk per choice,) one chunk per token of any choice as
    it comes, then usage if asked and ``[DONE]``. A failure ends the stream with an
    error event, then ``[DONE]``, so the client learns the output is incomplete."""

    def chunk(chunk_choices: list[dict[str, Any]], **extra: Any) -> str:
        body = completion_body(response_id, model, chunk_choices, form.chat, stream=True, **extra)
        return sse(body)

    if form.chat:
        for index in range(len(choices)):
            yield chunk([role_choice(index)])
    tokens = 0
    try:
        async for index, delta in interleave([_indexed(i, c) for i, c in enumerate(choices)]):
            tokens += 1
            yield chunk([form.choice(index, [delta], stream=True)])
    except Exception as error:
        yield sse(generation_failed(error).body())
    else:
        if include_usage:
            yield chunk([], usage=usage(prompt_tokens, tokens))
    yield sse("[DONE]")


async def _indexed(index: int, deltas: AsyncIterator[Delta]) -> AsyncIterator[tuple[int, Delta]]:
    async for delta in deltas:
        yield index, delta


async def collect_all(
    choices: Sequence[AsyncIterator[Delta]], pool: PoolManager, request_ids: list[str]
) -> list[list[Delta]]:
    """Every choice's deltas; a failure is a 500. The pool requests end either way."""
    tasks = [asyncio.ensure_future(_collect(choice)) for choice in choices]
    try:
        return list(await asyncio.gather(*tasks))
    except Exception as error:
        raise generation_failed(error) from error
    finally:
        for task in tasks:
            task.cancel()
        await cancel_all(pool, request_ids)


async def _collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in deltas]


async def choice_deltas(
    pool: PoolManager, stream: Stream, decoder: ChoiceDecoder
) -> AsyncIterator[Delta]:
    """One choice's deltas until it finishes; a stop string ends it early, and then its
    request is cancelled in the pool so it stops decoding."""
    async for event in _events(stream.events):
        delta = decoder.feed(event)
        if delta.finish_reason is not None and not event.finished:
            await pool.cancel(stream.request_id)
        yield delta
        if delta.finish_reason is not None:
            return


async def timed(
    deltas: AsyncIterator[Delta], arrived: float, timings: SloWindow
) -> AsyncIterator[Delta]:
    """Pass deltas on, recording the choice's latencies as its client sees them once it
    finishes; a choice cut short (client gone, error) is not a sample."""
    first: float | None = None
    count = 0
    async for delta in deltas:
        elapsed = time.monotonic() - arrived
        first = elapsed if first is None else first
        count += 1
        if delta.finish_reason is not None:
            timings.record(RequestTiming(first, time_per_output_token(first, elapsed, count)))
        yield delta


async def _events(queue: asyncio.Queue[TokenEvent | Exception]) -> AsyncIterator[TokenEvent]:
    """A stream's events until its last token; a failure the manager reported is raised."""
    while True:
        item = await queue.get()
        if isinstance(item, Exception):
            raise item
        yield item
        if item.finished:
            return


async def cancel_all(pool: PoolManager, request_ids: list[str]) -> None:
    """Stop the requests still running and free their KV.

    Shielded: this runs while the task of a client that left is being cancelled, and
    Starlette cancels every await of that task again, which would drop the cancels."""
    await asyncio.shield(asyncio.gather(*(pool.cancel(request_id) for request_id in request_ids)))


async def cancel_on_exit(
    body: AsyncIterator[str], pool: PoolManager, request_ids: list[str]
) -> AsyncIterator[str]:
    """Pass the body through; whatever ends it (a client that left included) frees the KV."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        await cancel_all(pool, request_ids)
