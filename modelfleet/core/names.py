"""Deterministic child names, so a reconcile repeated after a crash finds its children."""

from __future__ import annotations

import hashlib

MAX_NAME = 63


def child_name(owner: str, suffix: str) -> str:
    """``<owner>-<suffix>``, shortened with a stable hash when it exceeds 63 characters.

    KubeRay derives further names (services, pods) from the child's, so the
    child stays well inside the DNS-label limit.
    """
    name = f"{owner}-{suffix}"
    if len(name) <= MAX_NAME - 16:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 16 - 9].rstrip('-')}-{digest}"
