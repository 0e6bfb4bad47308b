"""API keys on the local backend, written the way a kubelet mounts a Secret.

On a cluster a pool's key Secret is a volume in its pods; here the operator writes the
same layout into a private directory on this machine: a timestamped directory with one
file per key, a ``..data`` link to it swapped atomically, and one link per key through
``..data``. A reader therefore sees the old keys or the new ones, never half, and the
serving side reads both places with the same code.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from modelfleet.access.keys import DATA_LINK

STATE_DIR_ENV = "MODELFLEET_STATE_DIR"


def default_keys_root() -> Path:
    """``$MODELFLEET_STATE_DIR/api-keys``, by default under ``~/.local/state/modelfleet``."""
    state = os.environ.get(STATE_DIR_ENV) or str(Path.home() / ".local/state/modelfleet")
    return Path(state) / "api-keys"


def keys_dir(root: Path, namespace: str, secret: str) -> Path:
    return root / namespace / secret


def read_key_files(directory: Path) -> dict[str, str]:
    """The keys a directory holds now (empty if it does not exist)."""
    if not directory.is_dir():
        return {}
    return {
        path.name: path.read_text()
        for path in directory.iterdir()
        if not path.name.startswith(".") and path.is_file()
    }


def write_key_files(directory: Path, keys: Mapping[str, str]) -> bool:
    """Make ``directory`` hold exactly ``keys``; ``False`` when it already did."""
    if read_key_files(directory) == dict(keys):
        return False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    (directory / stamp).mkdir(mode=0o700)
    for name, value in keys.items():
        path = directory / stamp / name
        path.write_text(value)
        path.chmod(0o400)
    link = directory / DATA_LINK
    old = os.readlink(link) if link.is_symlink() else None
    staged = directory / f"{DATA_LINK}_tmp"
    staged.unlink(missing_ok=True)
    staged.symlink_to(stamp)
    staged.replace(link)
    for name in keys:
        entry = directory / name
        if not entry.is_symlink():
            entry.unlink(missing_ok=True)
            entry.symlink_to(f"{DATA_LINK}/{name}")
    for entry in directory.iterdir():
        if not entry.name.startswith(".") and entry.name not in keys:
            entry.unlink()
    if old is not None:
        shutil.rmtree(directory / old, ignore_errors=True)
    return True
