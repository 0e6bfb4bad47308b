"""Streamed text is exactly the decoded text, split anywhere, never inside a character."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
from transformers import PreTrainedTokenizerFast

from modelfleet.serving.detokenize import IncrementalDetokenizer
from modelfleet.serving.tokenizer import ByteTokenizer

from .tokenizers_for_tests import MULTILINGUAL, byte_level_bpe, sentencepiece_bpe


def pieces(
    decode: Callable[[Sequence[int]], str], tokens: Sequence[int], context: Sequence[int] = ()
) -> list[str]:
    """What each token releases, the flush last."""
    detokenizer = IncrementalDetokenizer(decode, context)
    return [*(detokenizer.push(token) for token in tokens), detokenizer.flush()]


def skip_special(tokenizer: PreTrainedTokenizerFast) -> Callable[[Sequence[int]], str]:
    def decode(ids: Sequence[int]) -> str:
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
        assert isinstance(text, str)
        return text

    return decode


@pytest.mark.parametrize("build", [byte_level_bpe, sentencepiece_bpe])
def test_pieces_concatenate_to_the_decoded_text(
    build: Callable[[], PreTrainedTokenizerFast],
) -> None:
    tokenizer = build()
    decode = skip_special(tokenizer)
    tokens = tokenizer.encode(MULTILINGUAL)
    released = pieces(decode, tokens)
    assert "".join(released) == decode(tokens) == MULTILINGUAL
    assert all("\ufffd" not in piece for piece in released)


def test_a_character_split_over_tokens_comes_out_whole() -> None:
    tokenizer = byte_level_bpe()
    tokens = tokenizer.encode("日")
    assert len(tokens) == 3, "the tiny vocabulary has no merge for this character"
    assert pieces(skip_special(tokenizer), tokens) == ["", "", "日", ""]


def test_special_tokens_release_no_text() -> None:
    tokenizer = byte_level_bpe()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokens = [*tokenizer.encode("the fox"), end]
    released = pieces(skip_special(tokenizer), tokens)
    assert "".join(released) == "the fox" and released[-2:] == ["", ""]


def test_with_the_prompt_as_context_a_word_start_renders_as_a_space() -> None:
    tokenizer = sentencepiece_bpe()
    decode = skip_special(tokenizer)
    prompt = tokenizer.encode("the fleet")
    output = tokenizer.encode("the world 日本", add_special_tokens=False)
    assert "".join(pieces(decode, output, context=prompt)) == " the world 日本"
    assert "".join(pieces(decode, output)) == "the world 日本", "a sequence start has no space"


def test_random_bytes_match_decoding_with_replacement() -> None:
    tokenizer = ByteTokenizer()
    rng = random.Random(7)
    for _ in range(200):
        tokens = [rng.choice([*range(0x80, 0x100), 0x41, 0xE6, 0x97, 0xA5, 257])]
        tokens += [rng.randrange(256) for _ in range(rng.randrange(12))]
        released = pieces(tokenizer.decode, tokens)
        assert "".join(released) == tokenizer.decode(tokens)


def test_emitted_counts_the_characters_released() -> None:
    detokenizer = IncrementalDetokenizer(ByteTokenizer().decode)
    for token in "añb".encode():
        detokenizer.push(token)
    assert detokenizer.emitted == 3
