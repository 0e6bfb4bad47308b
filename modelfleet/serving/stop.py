"""Stop strings, matched on the text as the client sees it.

A stop string may span tokens and even characters of one token, so matching runs on the
detokenized text. A stream must not show the start of a stop string it later removes:
text that could still begin one is held back until the next piece settles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Release(NamedTuple):
    """Text that is safe to show, and whether a stop string ended the output there."""

    text: str
    stopped: bool


class StopMatcher:
    """Finds the first stop string in a stream of text pieces and cuts the text before it."""

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        self._stops = tuple(stops)
        self._held = ""

    def feed(self, piece: str) -> Release:
        """The text ``piece`` releases: up to the first stop string if one is now complete,
        else all but a tail that could still be the start of one."""
        buffer = self._held + piece
        found = [index for index in (buffer.find(stop) for stop in self._stops) if index >= 0]
        if found:
            self._held = ""
            return Release(buffer[: min(found)], stopped=True)
        keep = max((self._partial(buffer, stop) for stop in self._stops), default=0)
        self._held = buffer[len(buffer) - keep :]
        return Release(buffer[: len(buffer) - keep], stopped=False)

    def flush(self) -> str:
        """The held-back tail, once the output ended without completing a stop string."""
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        """Length of the longest proper prefix of ``stop`` that ``text`` ends with."""
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                return length
        return 0
