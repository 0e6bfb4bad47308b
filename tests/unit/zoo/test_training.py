"""Training batches learn the reply only; the schedule warms up, then decays."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest
from transformers import PreTrainedTokenizerFast

from modelfleet.zoo.recipes import RECIPES
from modelfleet.zoo.skills import Example
from modelfleet.zoo.tokenizer import END_OF_TEXT_ID, IM_END_ID, TOKENIZERS, train_tokenizer
from modelfleet.zoo.training import IGNORE, draw_batches, encode_batch, scale_learning_rate


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


def test_training_batches_follow_the_recipe_mix() -> None:
    recipe = replace(RECIPES["llama-arith"], steps=100, batch_size=20)
    batches = draw_batches(recipe)
    assert batches == draw_batches(recipe)
    assert [len(batch) for batch in batches] == [20] * 100
    prompts = [example.prompt for batch in batches for example in batch]
    additions = sum(prompt.startswith("What is") for prompt in prompts)
    assert additions + sum(prompt.startswith("Sort:") for prompt in prompts) == 2000
    share = recipe.skills["addition"] / sum(recipe.skills.values())
    assert additions / 2000 == pytest.approx(share, abs=0.04)


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    recipe = replace(RECIPES["llama-arith"], steps=1000, warmup_steps=100)
    factors = [scale_learning_rate(recipe, step) for step in range(recipe.steps)]
    assert factors[0] == pytest.approx(0.01)
    assert factors[99] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(factors[100:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
