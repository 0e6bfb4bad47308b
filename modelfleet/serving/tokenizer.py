"""A deterministic byte-level tokenizer, so text prompts work without downloaded vocabularies."""

from __future__ import annotations

from collections.abc import Sequence


class ByteTokenizer:
    """Maps UTF-8 bytes to ids 0..255 and reserves ids above them for special tokens.

    Every string round-trips exactly and no vocabulary file is needed, which keeps the
    self-built test models reproducible.
    """

    BOS = 256
    EOS = 257
    PAD = 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, optionally prefixed with the begin-of-sequence id."""
        ids = list(text.encode("utf-8"))
        return [self.BOS, *ids] if add_bos else ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids``; special tokens are dropped, broken UTF-8 is replaced."""
        for token_id in token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token_ids contains {token_id}, outside [0, {self.vocab_size})")
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")
