"""A client site's data on disk: ``train.jsonl`` and ``heldout.jsonl`` of prompt/answer pairs.

A FedJob client's ``datasetUri`` names such a directory and only that client's SuperNode
reads it. ``python -m modelfleet.federated.datasets DIR --skill S --skills A,B,C`` writes
one from the zoo's skills, mostly skill ``S`` (non-IID), for demos, tests and benchmarks.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from modelfleet.federated.partition import draw_examples, mix_skills, parse_skills
from modelfleet.zoo.skills import Example, Split

SPLIT_FILES = {Split.TRAIN: "train.jsonl", Split.HELDOUT: "heldout.jsonl"}
DEFAULT_TRAIN = 2000
DEFAULT_HELDOUT = 40


def write_site_dataset(
    directory: Path,
    skill: str,
    skills: Sequence[str],
    seed: int,
    train: int = DEFAULT_TRAIN,
    heldout: int = DEFAULT_HELDOUT,
) -> Path:
    """Write a site's data, mostly ``skill``, a little of the other ``skills``."""
    mix = mix_skills(skill, skills)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in ((Split.TRAIN, train), (Split.HELDOUT, heldout)):
        examples = draw_examples(mix, split, seed, count)
        lines = "".join(
            json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in examples
        )
        (directory / SPLIT_FILES[split]).write_text(lines)
    return directory


def read_split(directory: Path, split: Split) -> list[Example]:
    """One split of a site's data; a missing file or a bad line says which and where."""
    path = directory / SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: a client dataset directory needs "
            f"{' and '.join(SPLIT_FILES.values())}"
        )
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append(Example(prompt=str(row["prompt"]), answer=str(row["answer"])))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} line {number}: not a prompt/answer object ({error})"
            ) from None
    if not examples:
        raise ValueError(f"{path} has no examples")
    return examples


def main(argv: Sequence[str] | None = None) -> int:
    """Write one site's dataset directory from the command line."""
    parser = argparse.ArgumentParser(prog="python -m modelfleet.federated.datasets")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--skill", required=True, help="the skill this site mostly holds")
    parser.add_argument("--skills", required=True, help="every skill of the federation, a,b,c")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN)
    parser.add_argument("--heldout", type=int, default=DEFAULT_HELDOUT)
    args = parser.parse_args(argv)
    skills = parse_skills(args.skills, "--skills")
    write_site_dataset(args.directory, args.skill, skills, args.seed, args.train, args.heldout)
    print(args.directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
