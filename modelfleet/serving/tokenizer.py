"""The tokenizer interface the ingress speaks to a model with, and the byte tokenizer.

Prompts must be tokenized exactly as the model was trained (its vocabulary, its BOS, its
chat template) and generation must stop at its EOS ids; a mismatch garbles every request
silently. Builtin test models use :class:`ByteTokenizer`; every other model the
tokenizer shipped in its directory
(:func:`~modelfleet.serving.model_tokenizer.load_tokenizer` picks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypedDict


class ChatTurn(TypedDict):
    """One message of a conversation, as chat templates take it."""

    role: str
    content: str


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered: the model has no chat template, or its
    template refuses the conversation (roles out of order, say)."""


class TextTokenizer(Protocol):
    """What the OpenAI endpoint needs of a model's tokenizer."""

    eos_token_ids: tuple[int, ...]
    """Ids that end generation: the tokenizer's EOS and the model's generation config's."""

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a completion prompt, with BOS when the tokenizer adds one."""
        ...

    def encode_chat(self, messages: Sequence[ChatTurn]) -> list[int]:
        """Ids of a conversation in the model's chat template, ending where the
        assistant's reply starts; :class:`ChatTemplateError` when the model cannot take
        the conversation."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` without special tokens."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (part of a character, possibly), for logprobs."""
        ...


class ByteTokenizer:
    """Maps UTF-8 bytes to ids 0..255 and reserves ids above them for special tokens.

    Every string round-trips exactly and no vocabulary file is needed, which keeps the
    self-built test models reproducible.
    """

    BOS = 256
    EOS = 257
    PAD = 258
    vocab_size = 259
    eos_token_ids: tuple[int, ...] = (EOS,)
    SPECIAL_NAMES = {BOS: "<s>", EOS: "</s>", PAD: "<pad>"}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, optionally prefixed with the begin-of-sequence id."""
        ids = list(text.encode("utf-8"))
        return [self.BOS, *ids] if add_bos else ids

    def encode_prompt(self, text: str) -> list[int]:
        """BOS, then the bytes of ``text``."""
        return self.encode(text)

    def encode_chat(self, messages: Sequence[ChatTurn]) -> list[int]:
        """A simple template: each turn tagged with its role, then the assistant's tag."""
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return self.encode(f"{turns}<|assistant|>\n")

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids``; special tokens are dropped, broken UTF-8 is replaced."""
        for token_id in token_ids:
            self._check(token_id)
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The byte itself, or the name of a special token."""
        self._check(token_id)
        return bytes([token_id]) if token_id < 256 else self.SPECIAL_NAMES[token_id].encode()

    def _check(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token_ids contains {token_id}, outside [0, {self.vocab_size})")
