"""``zoo.json``: what a built model is, how it was made and how good it is.

The file sits beside the Hugging Face files so that a router or a demo can pick a model
by its measured per-skill accuracy without loading it, and so that the cache can tell a
model built from an older recipe by its recipe hash.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST_FILE = "zoo.json"


@dataclass(frozen=True)
class Manifest:
    """The record of one built zoo model."""

    name: str
    recipe_hash: str
    architecture: str
    tokenizer: str
    vocab_size: int
    skills: tuple[str, ...]
    seed: int
    parameters: int
    train_seconds: float
    accuracy: dict[str, float]
    """Held-out exact match per skill, for every skill including those not trained."""
    eval_examples: int
    """Held-out questions per skill behind each accuracy."""

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps({**asdict(self), "skills": list(self.skills)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse what ``to_json`` wrote."""
        fields = json.loads(text)
        return cls(**{**fields, "skills": tuple(fields["skills"])})


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest`` into the model directory ``directory``."""
    (directory / MANIFEST_FILE).write_text(manifest.to_json())


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of the model in ``directory``; None when there is none or it is unreadable,
    which the cache treats as a model to rebuild."""
    try:
        return Manifest.from_json((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None
