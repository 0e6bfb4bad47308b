"""Non-IID client data from the zoo's skills: each client mostly one skill.

Federated learning earns its keep when clients hold different data, so a client's
examples are drawn mostly from its own skill and a little from the others'. A client's
draw depends only on its skill, partition id and seed, so a SuperNode regenerates its own
partition without any data leaving another site.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelfleet.zoo.skills import SKILLS, Example, Split

MAIN_SHARE = 0.8
"""Share of a client's examples that come from its own skill."""


def parse_skills(text: str, field: str) -> tuple[str, ...]:
    """The comma-separated skill names in ``text``, each checked against the zoo's skills.

    ``field`` names where the text came from, so a bad name points at what to fix.
    """
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ValueError(f"{field} is empty; give skill names from {sorted(SKILLS)}")
    unknown = [name for name in names if name not in SKILLS]
    if unknown:
        raise ValueError(f"{field} names unknown skills {unknown}; known: {sorted(SKILLS)}")
    return names


def mix_skills(
    main: str, skills: Sequence[str], main_share: float = MAIN_SHARE
) -> dict[str, float]:
    """Sampling weight per skill for a client whose own skill is ``main``: ``main_share``
    for it and the rest split evenly over the other ``skills``."""
    if main not in skills:
        raise ValueError(f"skill {main!r} is not among the federation's skills {list(skills)}")
    if not 0 < main_share <= 1:
        raise ValueError(f"main_share must be in (0, 1], got {main_share}")
    others = [name for name in skills if name != main]
    if not others:
        return {main: 1.0}
    rest = (1 - main_share) / len(others)
    return {name: main_share if name == main else rest for name in skills}


def draw_examples(mix: dict[str, float], split: Split, seed: int, count: int) -> list[Example]:
    """``count`` examples of ``split``, each of a skill drawn by ``mix``'s weights.

    Streams are seeded per client, so two clients with the same skill still see
    different problems."""
    rng = random.Random(f"partition/{seed}")
    names = list(mix)
    streams = {name: SKILLS[name].stream(split, seed) for name in names}
    picks = rng.choices(names, [mix[name] for name in names], k=count)
    return [next(streams[name]) for name in picks]
