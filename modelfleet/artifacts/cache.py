"""Where fetched and locally built artifacts live on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    """``$MODELFLEET_CACHE``, else ``~/.cache/modelfleet``: one root that survives restarts.

    An empty variable counts as unset, as ``${MODELFLEET_CACHE:-...}`` would in a shell.
    """
    configured = os.environ.get("MODELFLEET_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "modelfleet"


def zoo_dir(name: str, cache_root: Path) -> Path:
    """Where ``python -m modelfleet.zoo build <name>`` leaves the zoo model ``name``."""
    return cache_root / "zoo" / name
