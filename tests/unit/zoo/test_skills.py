"""Skills: deterministic, exactly right, and with held-out problems never trained on."""

from __future__ import annotations

import re

import pytest

from modelfleet.zoo.skills import (
    HELDOUT_PHRASINGS,
    SKILLS,
    TRAIN_PHRASINGS,
    Example,
    Facts,
    Split,
    invent_capitals,
)

COUNT = 400


def test_the_zoo_has_five_named_skills() -> None:
    assert list(SKILLS) == ["addition", "reversal", "sorting", "facts", "maximum"]


@pytest.mark.parametrize("name", list(SKILLS))
@pytest.mark.parametrize("split", list(Split))
def test_examples_are_determined_by_the_seed(name: str, split: Split) -> None:
    skill = SKILLS[name]
    assert skill.take(split, 3, COUNT) == skill.take(split, 3, COUNT)
    assert skill.take(split, 3, COUNT) != skill.take(split, 4, COUNT)


@pytest.mark.parametrize("name", list(SKILLS))
def test_held_out_prompts_never_appear_in_training(name: str) -> None:
    skill = SKILLS[name]
    train = {example.prompt for seed in range(3) for example in skill.take(Split.TRAIN, seed, 3000)}
    heldout = {example.prompt for example in skill.take(Split.HELDOUT, 0, 1000)}
    assert train.isdisjoint(heldout)


def _check_addition(example: Example) -> None:
    match = re.fullmatch(r"What is (\d+) \+ (\d+)\?", example.prompt)
    assert match is not None
    a, b = map(int, match.groups())
    assert a < 1000 and b < 1000
    assert example.answer == str(a + b)


def _check_reversal(example: Example) -> None:
    match = re.fullmatch(r"Reverse the word ([a-z]+)\.", example.prompt)
    assert match is not None
    word = match.group(1)
    assert 3 <= len(word) <= 6
    assert example.answer == "".join(reversed(word))


def _check_sorting(example: Example) -> None:
    match = re.fullmatch(r"Sort: ((?:[0-9a-z] )*[0-9a-z])", example.prompt)
    assert match is not None
    items = match.group(1).split(" ")
    assert example.answer.split(" ") == sorted(items)


def _check_facts(example: Example) -> None:
    facts = SKILLS["facts"]
    assert isinstance(facts, Facts)
    country = next(c for c in facts.capitals if re.search(rf"\b{c}\b", example.prompt))
    assert example.answer == facts.capitals[country]


def _check_maximum(example: Example) -> None:
    match = re.fullmatch(r"Which is largest: ([\d, ]+)\?", example.prompt)
    assert match is not None
    numbers = [int(n) for n in match.group(1).split(", ")]
    assert example.answer == str(max(numbers))


CHECKS = {
    "addition": _check_addition,
    "reversal": _check_reversal,
    "sorting": _check_sorting,
    "facts": _check_facts,
    "maximum": _check_maximum,
}


@pytest.mark.parametrize("name", list(SKILLS))
@pytest.mark.parametrize("split", list(Split))
def test_answers_are_exactly_right(name: str, split: Split) -> None:
    for example in SKILLS[name].take(split, 0, COUNT):
        CHECKS[name](example)


def test_facts_are_a_fixed_table_of_distinct_invented_names() -> None:
    table = invent_capitals(7, 40)
    assert table == invent_capitals(7, 40)
    assert table != invent_capitals(8, 40)
    assert len(table) == 40
    assert len(set(table.values())) == 40
    assert not set(table) & set(table.values())


def test_facts_are_held_out_by_phrasing_and_every_fact_is_asked_both_ways() -> None:
    facts = SKILLS["facts"]
    assert set(TRAIN_PHRASINGS).isdisjoint(HELDOUT_PHRASINGS)
    for split, phrasings in ((Split.TRAIN, TRAIN_PHRASINGS), (Split.HELDOUT, HELDOUT_PHRASINGS)):
        examples = facts.take(split, 0, 2000)
        patterns = [re.escape(p).replace(re.escape("{country}"), "(\\w+)") for p in phrasings]
        asked = {
            match.group(1)
            for example in examples
            for match in [next(filter(None, (re.fullmatch(p, example.prompt) for p in patterns)))]
        }
        assert isinstance(facts, Facts)
        assert asked == set(facts.capitals)
