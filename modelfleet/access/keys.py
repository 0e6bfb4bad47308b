"""API keys as a Secret volume holds them, matched in constant time, reloaded on rotation.

A Secret mounted into a pod is a directory with one file per data entry, swapped
atomically by the kubelet (through a ``..data`` link) when the Secret changes; the local
backend writes the same layout. Only SHA-256 digests of the keys are kept in memory, and
a presented key is compared with every digest without stopping early, so neither the
answer's timing nor a memory dump gives a key away.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
RECHECK_SECONDS = 1.0
DATA_LINK = "..data"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """Digests of the valid keys by their id (the Secret's data entry names)."""

    digests: tuple[tuple[str, bytes], ...] = ()

    def match(self, presented: str) -> str | None:
        """The id of the key ``presented`` is, or ``None``; every digest is compared."""
        wanted = digest(presented)
        found: str | None = None
        for key_id, known in self.digests:
            if hmac.compare_digest(wanted, known) and found is None:
                found = key_id
        return found

    def __len__(self) -> int:
        return len(self.digests)


def read_key_ring(directory: Path) -> KeyRing:
    """One key per file; names starting with '.' are the kubelet's bookkeeping, and
    surrounding whitespace (a trailing newline from ``echo``) is not part of a key."""
    entries = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        key = path.read_text().strip()
        if key:
            entries.append((path.name, digest(key)))
    return KeyRing(tuple(entries))


def directory_version(directory: Path) -> tuple[object, ...]:
    """What changes when the keys do: the directory's own stat (files renamed in or out)
    and the target of the kubelet's ``..data`` link."""
    stat = directory.stat()
    link = directory / DATA_LINK
    target = os.readlink(link) if link.is_symlink() else ""
    return (stat.st_ino, stat.st_mtime_ns, target)


class KeyFiles:
    """The current key ring of a directory, re-read when it changes (checked at most every
    ``recheck_s``, so a request costs no file system call most of the time)."""

    def __init__(
        self,
        directory: str,
        recheck_s: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = Path(directory)
        self._recheck_s = recheck_s
        self._clock = clock
        self._checked = -float("inf")
        self._version: tuple[object, ...] | None = None
        self._ring = KeyRing()

    def ring(self) -> KeyRing:
        now = self._clock()
        if now - self._checked < self._recheck_s:
            return self._ring
        self._checked = now
        try:
            version = directory_version(self._directory)
            if version != self._version:
                self._ring = read_key_ring(self._directory)
                self._version = version
        except OSError as error:
            if self._version is not None or self._ring:
                log.warning(
                    "API keys at %s cannot be read (%s); refusing every key",
                    self._directory,
                    type(error).__name__,
                )
            self._ring, self._version = KeyRing(), None
        return self._ring
