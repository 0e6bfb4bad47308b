"""Command-line tools the tests call besides the control plane (helm, promtool)."""

from __future__ import annotations

import shutil

from modelfleet.devcluster.cluster import DEFAULT_CACHE


def find_tool(name: str) -> str:
    """The provisioned copy of ``name`` (hack/provision.sh fills the cache), else PATH's."""
    cached = DEFAULT_CACHE / "bin" / name
    found = str(cached) if cached.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"{name} not found in {cached.parent} or on PATH; run `make provision`"
        )
    return found
