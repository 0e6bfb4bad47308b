"""Grammar-constrained decoding (``response_format``) with xgrammar.

Each step, tokens that cannot continue a string of the grammar get ``-inf`` logits before
sampling, so the output is valid JSON (of the schema, if one is given) whatever the model
prefers. The matcher's state is a pure function of the tokens accepted so far: a migrated
or recovered request rebuilds it by replaying its output, which keeps constrained
requests movable like any other. Whitespace between JSON tokens is fixed (as OpenAI's
structured outputs produce it): free whitespace lets a model pad forever instead of
closing the object.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import xgrammar as xgr

from modelfleet.serving.interface import GrammarSpec

OBJECT_SCHEMA = '{"type": "object"}'
"""``json_object``: any JSON object."""


class GrammarVocabulary:
    """The token vocabulary grammars are compiled against; compiled grammars are cached."""

    def __init__(self, info: xgr.TokenizerInfo) -> None:
        self._info = info
        self._compiler = xgr.GrammarCompiler(info)

    @classmethod
    def from_tokenizer_dir(
        cls, directory: Path, vocab_size: int, stop_token_ids: Sequence[int]
    ) -> GrammarVocabulary:
        """The vocabulary of a Hugging Face tokenizer directory, padded to the model's."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        return cls(info)

    @classmethod
    def from_bytes(cls, vocab_size: int, stop_token_ids: Sequence[int]) -> GrammarVocabulary:
        """A byte-level vocabulary: ids 0..255 are bytes, the rest special tokens."""
        encoded: list[bytes] = [bytes([i]) for i in range(256)] + [b""] * (vocab_size - 256)
        info = xgr.TokenizerInfo(
            encoded, xgr.VocabType.RAW, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        return cls(info)

    def constrain(self, spec: GrammarSpec) -> GrammarState:
        """A fresh matcher for ``spec`` (``ValueError`` for a schema xgrammar rejects)."""
        schema = OBJECT_SCHEMA if spec.kind == "json_object" else spec.schema or "{}"
        try:
            compiled = self._compiler.compile_json_schema(schema, any_whitespace=False)
        except RuntimeError as error:
            raise ValueError(
                f"response_format: the JSON schema cannot be compiled: {error}"
            ) from error
        return GrammarState(xgr.GrammarMatcher(compiled), self._info.vocab_size)


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, matcher: xgr.GrammarMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``[vocab]`` with every token the grammar forbids now at ``-inf``."""
        masked = logits.float().clone().unsqueeze(0)
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(masked, self._bitmask)
        return masked[0]

    def accept(self, token_id: int) -> None:
        """Advance past ``token_id``; ``ValueError`` if the grammar does not allow it."""
        if not self._matcher.accept_token(token_id):
            raise ValueError(f"token {token_id} does not continue the response_format grammar")

    def replay(self, token_ids: Sequence[int]) -> None:
        """Advance past tokens generated before (a migrated or recovered request)."""
        for token_id in token_ids:
            self.accept(token_id)

    @property
    def terminated(self) -> bool:
        """Whether the grammar accepted a stop token: nothing more may follow."""
        return bool(self._matcher.is_terminated())
