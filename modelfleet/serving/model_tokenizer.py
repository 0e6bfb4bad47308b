"""A served model's own tokenizer: the one its directory ships, or the byte tokenizer.

Everything comes from the directory, as the model was trained with it: the vocabulary,
whether BOS is added, the chat template, and the EOS ids of both the tokenizer and
``generation_config.json`` (chat models often end turns with a token other than the
tokenizer's EOS, which only the generation config names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modelfleet.api.modelpool import ServedModel
from modelfleet.artifacts.fetch import materialize
from modelfleet.serving.catalog import BUILTIN_SCHEME
from modelfleet.serving.checkpoint import generation_eos_ids
from modelfleet.serving.tokenizer import ByteTokenizer, ChatTemplateError, ChatTurn, TextTokenizer

WORD_START = "\u2581"
"""SentencePiece's marker for a space before a word."""
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character each byte is written as."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    shifted = [byte for byte in range(256) if byte not in printable]
    table = {chr(byte): byte for byte in printable}
    table.update({chr(256 + offset): byte for offset, byte in enumerate(shifted)})
    return table


BYTE_LEVEL = byte_level_decoder()


class HfTokenizer:
    """A ``transformers`` tokenizer with the model's EOS ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self.eos_token_ids = tuple(dict.fromkeys(eos_token_ids))
        self._special = {
            token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items()
        }
        self._byte_level = _uses_byte_level(tokenizer)

    @classmethod
    def from_dir(cls, path: Path) -> HfTokenizer:
        """The tokenizer in ``path``; EOS ids merge the tokenizer's and the generation
        config's (an int or a list there)."""
        tokenizer = AutoTokenizer.from_pretrained(path)
        eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        return cls(tokenizer, [*generation_eos_ids(path), *eos])

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of ``text`` with the special tokens the tokenizer adds (BOS, if any)."""
        return list(self._tokenizer.encode(text))

    def encode_chat(self, messages: Sequence[ChatTurn]) -> list[int]:
        """The conversation in the model's chat template with the generation prompt.

        The template writes BOS itself where the model expects it, so none is added."""
        if self._tokenizer.chat_template is None:
            raise ChatTemplateError("the model has no chat template; use /v1/completions")
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            text = self._tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as error:
            raise ChatTemplateError(f"the model's chat template refuses it: {error}") from error
        if not isinstance(text, str):
            raise TypeError(f"chat template rendered {type(text).__name__}, not text")
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` without special tokens."""
        text = self._tokenizer.decode(list(token_ids), skip_special_tokens=True)
        if not isinstance(text, str):
            raise TypeError(f"decode returned {type(text).__name__}, not text")
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token: byte-level pieces mapped back to bytes, SentencePiece
        byte fallbacks (``<0x0A>``) as their byte, word-start markers as spaces."""
        if token_id in self._special:
            return self._special[token_id].encode()
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return b""
        if self._byte_level and all(char in BYTE_LEVEL for char in piece):
            return bytes(BYTE_LEVEL[char] for char in piece)
        fallback = BYTE_FALLBACK.fullmatch(piece)
        if fallback is not None:
            return bytes([int(fallback.group(1), 16)])
        return piece.replace(WORD_START, " ").encode()


def _uses_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's decoder maps GPT-2's byte alphabet back to bytes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder")
    return any(node.get("type") == "ByteLevel" for node in _nodes(decoder))


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``tree`` (a decoder and the decoders it chains)."""
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def load_tokenizer(model: ServedModel, index: int) -> TextTokenizer:
    """The tokenizer of ``model``, ``spec.models[index]``.

    Builtin models get the byte tokenizer; any other URI is materialized locally (a
    download for s3:// and hf://) and its directory's tokenizer loaded. Raises
    ``ValueError`` for a malformed URI and
    :class:`~modelfleet.artifacts.errors.ArtifactError` for one that cannot be fetched.
    """
    if model.uri.startswith(BUILTIN_SCHEME):
        return ByteTokenizer()
    return HfTokenizer.from_dir(materialize(model.uri, f"spec.models[{index}].uri"))
