"""Token ids to text one token at a time, as the tokenizer itself would decode them.

Decoding each token on its own is wrong twice over: a token may hold only part of a
multi-byte UTF-8 character, and tokenizers that mark word starts (SentencePiece's ``▁``)
render a token differently depending on what precedes it. The offsets technique of vLLM
and TGI avoids both: decode a window of recent tokens with and without the new one and
emit the difference, holding text back while it ends in U+FFFD (an unfinished character).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"

CONTEXT_TOKENS = 5
"""Prompt tokens the first window starts with, so the first output token renders as it
would after the prompt (a word-start marker becomes a space)."""


class IncrementalDetokenizer:
    """Text of a growing token sequence; its pieces concatenate to the decoded whole.

    With no ``context`` the pieces of ``push`` then ``flush`` concatenate to exactly
    ``decode(tokens)``; with ``context`` (the prompt) they are the text the tokens add
    after the last few context tokens.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context: Sequence[int] = ()) -> None:
        self._decode = decode
        self._tokens = list(context[-CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)
        self._emitted = 0

    @property
    def emitted(self) -> int:
        """Characters emitted so far: where the next piece starts in the whole text."""
        return self._emitted

    def push(self, token_id: int) -> str:
        """The text ``token_id`` completes; empty while a character is unfinished (or the
        token renders as nothing, like a skipped special token)."""
        self._tokens.append(token_id)
        new_text = self._pending()
        if not new_text or new_text.endswith(REPLACEMENT):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
        return self._emit(new_text)

    def flush(self) -> str:
        """The text still held back (an unfinished character decodes as U+FFFD)."""
        new_text = self._pending()
        self._prefix_offset = self._read_offset = len(self._tokens)
        return self._emit(new_text)

    def _pending(self) -> str:
        """Text the tokens after the read offset add to the window before it."""
        window = self._tokens[self._prefix_offset :]
        prefix = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        return self._decode(window)[len(prefix) :]

    def _emit(self, text: str) -> str:
        self._emitted += len(text)
        return text
