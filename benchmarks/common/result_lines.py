"""The machine-readable tail every benchmark ends with: one ``RESULT <name> <value>`` line
per headline figure, so `make bench` output can be collected without parsing tables."""

from __future__ import annotations

import re


def slug(text: str) -> str:
    """A RESULT name part: lower case, runs of anything but letters and digits as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def print_result(name: str, value: float) -> None:
    print(f"RESULT {name} {value:.3f}")
