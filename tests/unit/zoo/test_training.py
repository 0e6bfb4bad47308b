"""Training batches learn the reply only; the schedule warms up, then decays."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest
from transformers import PreTrainedTokenizerFast

from modelfleet.zoo.recipes import RECIPES
from modelfleet.zoo.skills import Example
from modelfleet.zoo.tokenizer import END_OF_TEXT_ID, IM_END_ID, TOKENIZERS, train_tokenizer
from modelfleet.zoo.training import IGNORE, encode_batch, learning_rate_factor, training_examples


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(TOKENIZERS["zoo-bpe-384"])


def test_only_the_reply_and_its_eos_are_labelled(tokenizer: PreTrainedTokenizerFast) -> None:
    examples = [Example("What is 347 + 85?", "432"), Example("Sort: 3 1 2 9 0", "0 1 2 3 9")]
    batch = encode_batch(tokenizer, examples)
    for row, example in enumerate(examples):
        ids = batch.input_ids[row].tolist()
        labels = batch.labels[row].tolist()
        labelled = [label for label in labels if label != IGNORE]
        assert labelled == [*tokenizer(example.answer)["input_ids"], IM_END_ID]
        start = labels.index(labelled[0])
        prompt = tokenizer.decode(ids[:start])
        assert prompt == f"<|im_start|>user\n{example.prompt}<|im_end|>\n<|im_start|>assistant\n"
        assert ids[start : start + len(labelled)] == labelled
        assert all(i == END_OF_TEXT_ID for i in ids[start + len(labelled) :])


def test_training_examples_follow_the_recipe_mix() -> None:
    recipe = replace(RECIPES["llama-arith"], steps=20, batch_size=50)
    examples = training_examples(recipe)
    assert examples == training_examples(recipe)
    assert len(examples) == 1000
    additions = sum(example.prompt.startswith("What is") for example in examples)
    sorts = sum(example.prompt.startswith("Sort:") for example in examples)
    assert additions + sorts == 1000
    weights = recipe.skills
    assert additions / 1000 == pytest.approx(weights["addition"] / sum(weights.values()), abs=0.05)


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    recipe = replace(RECIPES["llama-arith"], steps=1000, warmup_steps=100)
    factors = [learning_rate_factor(recipe, step) for step in range(recipe.steps)]
    assert factors[0] == pytest.approx(0.01)
    assert factors[99] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(factors[100:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
