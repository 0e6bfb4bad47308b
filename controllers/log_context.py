"""Operator log lines name the object they are about.

Library code (backends, planners) logs through plain module loggers that do not know
which resource they work for; the reconcile sets the subject once, and a filter on the
log handler adds it to every record emitted while it works (``%(subject)s``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

SUBJECT: ContextVar[str] = ContextVar("modelfleet_log_subject", default="-")
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(subject)s]: %(message)s"


class SubjectFilter(logging.Filter):
    """Adds ``subject`` (e.g. ``ModelPool team/chat``) to each record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "subject"):
            record.subject = SUBJECT.get()
        return True


@contextmanager
def about(subject: str) -> Iterator[None]:
    """Attribute the log lines of the block (in this thread or task) to ``subject``."""
    token = SUBJECT.set(subject)
    try:
        yield
    finally:
        SUBJECT.reset(token)


def configure_logging(level: int) -> None:
    """Root logging with the subject in every line."""
    logging.basicConfig(level=level, format=FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(SubjectFilter())
