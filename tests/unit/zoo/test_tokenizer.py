"""Zoo tokenizers: byte-level BPE, one token per digit, a ChatML template, two vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modelfleet.zoo.skills import SKILLS, Split
from modelfleet.zoo.tokenizer import (
    END_OF_TEXT,
    END_OF_TEXT_ID,
    IM_END,
    IM_END_ID,
    IM_START,
    TOKENIZERS,
    train_tokenizer,
)

TEXTS = [
    "What is 347 + 85?",
    "Reverse the word planet.",
    "Which city is the capital of Zaeland?",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "unicode: héllo wörld ✓ 日本",
    "1234567890 0.5 -42",
]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, PreTrainedTokenizerFast]:
    return {name: train_tokenizer(spec) for name, spec in TOKENIZERS.items()}


@pytest.fixture(scope="module")
def saved(
    tokenizers: dict[str, PreTrainedTokenizerFast], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    directories = {}
    for name, tokenizer in tokenizers.items():
        directory = tmp_path_factory.mktemp(name)
        tokenizer.save_pretrained(directory, save_jinja_files=False)
        directories[name] = directory
    return directories


def test_training_is_deterministic(tokenizers: dict[str, PreTrainedTokenizerFast]) -> None:
    for name, spec in TOKENIZERS.items():
        assert train_tokenizer(spec).get_vocab() == tokenizers[name].get_vocab()


def test_the_two_vocabularies_differ(tokenizers: dict[str, PreTrainedTokenizerFast]) -> None:
    small, large = tokenizers.values()
    assert len(small) != len(large)
    assert [len(t) for t in tokenizers.values()] == [s.vocab_size for s in TOKENIZERS.values()]
    assert small.get_vocab() != large.get_vocab()
    prompt = "What is the capital of Zaeland?"
    assert small(prompt)["input_ids"] != large(prompt)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_round_trips(tokenizers: dict[str, PreTrainedTokenizerFast], text: str) -> None:
    for tokenizer in tokenizers.values():
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_merges_compress_the_skills_text(tokenizers: dict[str, PreTrainedTokenizerFast]) -> None:
    prompt = SKILLS["facts"].take(Split.TRAIN, 0, 1)[0].prompt
    for tokenizer in tokenizers.values():
        assert len(tokenizer(prompt)["input_ids"]) < len(prompt.encode()) / 2


def test_every_digit_is_its_own_token(tokenizers: dict[str, PreTrainedTokenizerFast]) -> None:
    for tokenizer in tokenizers.values():
        for token_id in range(len(tokenizer)):
            text = tokenizer.decode([token_id])
            assert not any(c.isdigit() for c in text) or len(text) == 1, text
        tokens = tokenizer.tokenize("What is 347 + 85?")
        assert [t for t in tokens if any(c.isdigit() for c in t)] == ["3", "4", "7", "8", "5"]


def test_special_tokens_have_fixed_ids(tokenizers: dict[str, PreTrainedTokenizerFast]) -> None:
    for tokenizer in tokenizers.values():
        assert tokenizer.convert_tokens_to_ids([END_OF_TEXT, IM_START, IM_END]) == [0, 1, 2]
        assert tokenizer.eos_token_id == IM_END_ID
        assert tokenizer.pad_token_id == END_OF_TEXT_ID
        assert tokenizer(f"{IM_START}user\nhi{IM_END}")["input_ids"][0] == 1


def test_saved_tokenizer_loads_with_its_chat_template(
    tokenizers: dict[str, PreTrainedTokenizerFast], saved: dict[str, Path]
) -> None:
    messages = [{"role": "user", "content": "What is 347 + 85?"}]
    for name, directory in saved.items():
        assert "chat_template" in json.loads((directory / "tokenizer_config.json").read_text())
        loaded = AutoTokenizer.from_pretrained(directory)
        text = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == "<|im_start|>user\nWhat is 347 + 85?<|im_end|>\n<|im_start|>assistant\n"
        ids = loaded.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        assert ids == tokenizers[name](text)["input_ids"]
        for sample in TEXTS:
            assert loaded(sample)["input_ids"] == tokenizers[name](sample)["input_ids"]


def test_a_conversation_ends_each_turn_with_the_eos(saved: dict[str, Path]) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Sort: 3 1 2"},
        {"role": "assistant", "content": "1 2 3"},
    ]
    for directory in saved.values():
        text = AutoTokenizer.from_pretrained(directory).apply_chat_template(
            conversation, tokenize=False
        )
        assert text == (
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nSort: 3 1 2<|im_end|>\n"
            "<|im_start|>assistant\n1 2 3<|im_end|>\n"
        )
