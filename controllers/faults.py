"""A fault-injection hook for crash-safety tests, off unless its variable is set.

Killing the operator at random rarely lands between two particular lines; the one that
matters most is right after a child was created and before the owner's status says so.
``MODELFLEET_CRASH_AT=after-apply`` makes the process exit there, so a test can show the
next instance converges without a duplicate child.
"""

from __future__ import annotations

import logging
import os

CRASH_AT_VARIABLE = "MODELFLEET_CRASH_AT"
CRASH_EXIT_CODE = 86
log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    """Exit the process at once, skipping every cleanup, if ``name`` is the armed point."""
    if os.environ.get(CRASH_AT_VARIABLE) == name:
        log.critical("fault injection: exiting at %s (%s=%s)", name, CRASH_AT_VARIABLE, name)
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)
