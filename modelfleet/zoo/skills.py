"""Skills with exact answers, so a zoo model's quality is a number, not an impression.

Every skill draws (prompt, answer) examples from a seeded ``random.Random``. A problem
belongs to the training or the held-out split by a stable hash of what it asks, so the two
splits are disjoint whatever the seed and a held-out score measures generalisation rather
than recall. Facts cannot be generalised, only memorised, so their held-out split asks the
same facts in phrasings never used for training.
"""

from __future__ import annotations

import random
import string
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice


class Split(StrEnum):
    """Which side of the train/held-out line an example comes from."""

    TRAIN = "train"
    HELDOUT = "heldout"


@dataclass(frozen=True)
class Example:
    """One question and its only correct reply."""

    prompt: str
    answer: str


HELDOUT_ONE_IN = 8
"""One problem in this many is held out from training."""


def assign_split(key: str) -> Split:
    """The split that the problem ``key`` belongs to, the same in every process.

    ``zlib.crc32`` rather than ``hash`` because string hashing is salted per process.
    """
    return Split.HELDOUT if zlib.crc32(key.encode()) % HELDOUT_ONE_IN == 0 else Split.TRAIN


class Skill(ABC):
    """A family of problems with exact answers."""

    name: str

    def stream(self, split: Split, seed: int) -> Iterator[Example]:
        """An endless, seed-determined stream of ``split`` examples."""
        rng = random.Random(f"{self.name}/{split.value}/{seed}")
        while True:
            example = self.draw(rng, split)
            if example is not None:
                yield example

    def take(self, split: Split, seed: int, count: int) -> list[Example]:
        """The first ``count`` examples of ``stream(split, seed)``."""
        return list(islice(self.stream(split, seed), count))

    @abstractmethod
    def draw(self, rng: random.Random, split: Split) -> Example | None:
        """One random problem of ``split``, or None when the draw fell in the other split."""


@dataclass(frozen=True)
class Addition(Skill):
    """Sum of two integers of up to ``max_digits`` digits each.

    Each operand's digit count is drawn first, so "347 + 85" and "2 + 2" are as common as
    "347 + 851": a model trained here must line digits up by place value, not by position.
    """

    max_digits: int = 3
    name: str = "addition"

    def draw(self, rng: random.Random, split: Split) -> Example | None:
        a, b = self._operand(rng), self._operand(rng)
        if assign_split(f"{a}+{b}") is not split:
            return None
        return Example(f"What is {a} + {b}?", str(a + b))

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(1, self.max_digits)
        return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)


@dataclass(frozen=True)
class Reversal(Skill):
    """A short random lowercase word spelled backwards."""

    min_length: int = 3
    max_length: int = 6
    name: str = "reversal"

    def draw(self, rng: random.Random, split: Split) -> Example | None:
        length = rng.randint(self.min_length, self.max_length)
        word = "".join(rng.choices(string.ascii_lowercase, k=length))
        if assign_split(word) is not split:
            return None
        return Example(f"Reverse the word {word}.", word[::-1])


@dataclass(frozen=True)
class Sorting(Skill):
    """A short list of letters, put in alphabetical order.

    Letters rather than digits because each spaced letter is one token while a spaced
    digit is two, so a sorting question costs no more to train on than an addition one.
    """

    min_length: int = 3
    max_length: int = 6
    name: str = "sorting"

    def draw(self, rng: random.Random, split: Split) -> Example | None:
        items = rng.choices(string.ascii_lowercase, k=rng.randint(self.min_length, self.max_length))
        if assign_split("".join(items)) is not split:
            return None
        return Example(f"Sort: {' '.join(items)}", " ".join(sorted(items)))


@dataclass(frozen=True)
class Maximum(Skill):
    """The largest of a few numbers below one hundred."""

    min_length: int = 3
    max_length: int = 5
    name: str = "maximum"

    def draw(self, rng: random.Random, split: Split) -> Example | None:
        numbers = [rng.randrange(100) for _ in range(rng.randint(self.min_length, self.max_length))]
        listed = ", ".join(map(str, numbers))
        if assign_split(listed) is not split:
            return None
        return Example(f"Which is largest: {listed}?", str(max(numbers)))


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "kr", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia")
_COUNTRY_ENDINGS = ("ria", "land", "stan", "via", "mark")

TRAIN_PHRASINGS = (
    "What is the capital of {country}?",
    "Name the capital of {country}.",
    "Tell me the capital city of {country}.",
    "The capital of {country} is which city?",
    "What is {country}'s capital?",
    "Capital of {country}?",
    "Which city is {country}'s capital?",
    "In {country}, what is the capital?",
)
HELDOUT_PHRASINGS = (
    "Which city is the capital of {country}?",
    "What is the capital city of {country}?",
    "Tell me {country}'s capital.",
)
"""New arrangements of words the training phrasings use, so a model that knows a fact
can be asked it in words it has seen but never in that order."""


def _invent_name(rng: random.Random, syllables: int, ending: str = "") -> str:
    """A pronounceable made-up proper noun."""
    body = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return (body + ending).capitalize()


def invent_capitals(seed: int, count: int) -> dict[str, str]:
    """``count`` invented countries, each with its invented capital, all names distinct."""
    rng = random.Random(f"facts/{seed}")
    table: dict[str, str] = {}
    capitals: set[str] = set()
    while len(table) < count:
        country = _invent_name(rng, rng.randint(1, 2), rng.choice(_COUNTRY_ENDINGS))
        capital = _invent_name(rng, rng.randint(2, 3))
        if country not in table and capital not in capitals and capital not in table:
            table[country] = capital
            capitals.add(capital)
    return table


@dataclass(frozen=True)
class Facts(Skill):
    """The capital of an invented country: knowable only by memorising a fixed table."""

    table_seed: int = 7
    countries: int = 40
    capitals: dict[str, str] = field(init=False, repr=False, compare=False)
    name: str = "facts"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capitals", invent_capitals(self.table_seed, self.countries))

    def draw(self, rng: random.Random, split: Split) -> Example | None:
        country = rng.choice(list(self.capitals))
        phrasings = TRAIN_PHRASINGS if split is Split.TRAIN else HELDOUT_PHRASINGS
        return Example(rng.choice(phrasings).format(country=country), self.capitals[country])


SKILLS: dict[str, Skill] = {
    skill.name: skill for skill in (Addition(), Reversal(), Sorting(), Facts(), Maximum())
}
"""Every skill by name; a zoo model is scored on all of them, trained on some."""
