"""Process-wide operator settings the handlers read.

kopf registers handlers at import time, so the resync interval is read from
the environment then; everything else is set once at startup by
``operator/main.py`` through ``configure``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes import client

from modelfleet.backends.base import Backend

BACKEND = os.environ.get("MODELFLEET_BACKEND", "kuberay")
"""The backend chosen at startup; read at import, since handlers are registered then."""
CLEANUP_BACKENDS = frozenset({"local"})
"""Backends that hold something outside Kubernetes for a resource (the local backend's
Ray Serve applications), which only a delete handler can free. On the others every child
is owned through an ownerReference and garbage-collected, so no finalizer is needed."""
FINALIZER = "modelfleet.io/cleanup"


def needs_cleanup(backend: str = BACKEND) -> bool:
    """Whether resources carry ``FINALIZER`` on this backend (see ``CLEANUP_BACKENDS``)."""
    return backend in CLEANUP_BACKENDS


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class OperatorContext:
    backend: Backend
    api: client.ApiClient
    clock: Callable[[], datetime] = utcnow


_context: OperatorContext | None = None


def configure(context: OperatorContext) -> None:
    global _context
    _context = context


def current() -> OperatorContext:
    if _context is None:
        raise RuntimeError("the operator context is not configured; start via operator/main.py")
    return _context
