"""One choice of a completion as its client sees it, built token event by token event.

Each event becomes a :class:`Delta`: the text it releases (detokenized without splitting
characters, with stop strings cut and their possible starts held back), its token and
log-probabilities, and the finish reason once the choice ends. The echoed prompt and the
prompt's log-probabilities ride on the first delta. A choice ends early, with
``finish_reason="stop"``, when a stop string completes; its caller then cancels the
request in the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.serving.detokenize import IncrementalDetokenizer
from modelfleet.serving.interface import TokenEvent, TokenLogprob
from modelfleet.serving.logprobs_format import ScoredToken
from modelfleet.serving.stop import StopMatcher
from modelfleet.serving.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Delta:
    """What one token event adds to a choice.

    ``scored`` and ``offsets`` run in parallel: the echoed prompt's tokens (first delta
    only, when echoing) and then the event's token, each with where its text starts in
    the choice's text.
    """

    text: str
    token_id: int
    scored: tuple[ScoredToken, ...]
    offsets: tuple[int, ...]
    finish_reason: str | None


class ChoiceDecoder:
    """Turns one request's token events into the deltas of its choice.

    ``echo`` is the prompt text a completion repeats before its output (``None``: no
    echo); ``prompt`` the prompt's token ids, which give the first output token its
    context and, when echoing, the tokens the prompt's log-probabilities belong to.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        prompt: Sequence[int],
        stops: Sequence[str] = (),
        echo: str | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._prompt = tuple(prompt)
        self._detokenizer = IncrementalDetokenizer(tokenizer.decode, context=prompt)
        self._stops = StopMatcher(stops)
        self._echo = echo
        self._base = len(echo or "")

    def feed(self, event: TokenEvent) -> Delta:
        """The delta of ``event``, the choice's next token."""
        offset = self._base + self._detokenizer.emitted
        piece = self._detokenizer.push(event.token_id)
        if event.finished:
            piece += self._detokenizer.flush()
        release = self._stops.feed(piece)
        text = release.text
        if event.finished and not release.stopped:
            text += self._stops.flush()
        scored = ScoredToken(event.token_id, event.logprob, event.top_logprobs)
        prefix, prompt_scored, prompt_offsets = self._echoed(event)
        return Delta(
            text=prefix + text,
            token_id=event.token_id,
            scored=(*prompt_scored, scored),
            offsets=(*prompt_offsets, offset),
            finish_reason="stop" if release.stopped else event.finish_reason,
        )

    def _echoed(self, event: TokenEvent) -> tuple[str, tuple[ScoredToken, ...], tuple[int, ...]]:
        """The echoed prompt, with its tokens' scores and offsets: once, on the first event."""
        if self._echo is None:
            return "", (), ()
        echo, self._echo = self._echo, None
        if event.prompt_logprobs is None:
            return echo, (), ()
        return echo, _prompt_scores(self._prompt, event.prompt_logprobs), self._prompt_offsets()

    def _prompt_offsets(self) -> tuple[int, ...]:
        """Where each prompt token starts in the prompt's decoded text."""
        detokenizer = IncrementalDetokenizer(self._tokenizer.decode)
        offsets = []
        for token_id in self._prompt:
            offsets.append(detokenizer.emitted)
            detokenizer.push(token_id)
        return tuple(offsets)


def _prompt_scores(
    prompt: Sequence[int], scores: Sequence[TokenLogprob | None]
) -> tuple[ScoredToken, ...]:
    """The prompt's tokens with their log-probabilities, when the engine reported them."""
    return tuple(
        ScoredToken(token_id, None if score is None else score.logprob)
        for token_id, score in zip(prompt, scores, strict=True)
    )
