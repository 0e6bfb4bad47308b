"""hack/provision.sh run again as a newcomer would, with the binary cache on PATH.

With the cache first on PATH, looking etcd up by name finds the cache's own link; linking
that to itself broke every later run until the cache was repaired by hand. The script must
resolve the packaged binaries outside the cache and repair links that point nowhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from modelfleet.devcluster import find_binaries

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ("etcd", "promtool")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache whose built and downloaded binaries are the real ones, and whose packaged
    ones are broken: etcd links to itself, promtool to nothing."""
    if not all(shutil.which(name, path="/usr/bin:/usr/sbin:/bin") for name in PACKAGED):
        pytest.skip("etcd and promtool are installed by hack/provision.sh (make provision)")
    real = find_binaries()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kube-apiserver", "kubectl", "helm"):
        (bin_dir / name).symlink_to((real / name).resolve())
    (bin_dir / "etcd").symlink_to(bin_dir / "etcd")
    (bin_dir / "promtool").symlink_to(tmp_path / "gone" / "promtool")
    return tmp_path


def provision(cache: Path) -> str:
    path = f"{cache / 'bin'}:{os.environ['PATH']}"
    env = {**os.environ, "MODELFLEET_CACHE": str(cache), "PATH": path}
    done = subprocess.run(
        ["bash", str(ROOT / "hack" / "provision.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_provisioning_with_the_cache_on_path_repairs_it_and_is_idempotent(cache: Path) -> None:
    for _ in range(2):
        assert provision(cache) == str(cache / "bin")
        for name in PACKAGED:
            target = (cache / "bin" / name).resolve()
            assert target.is_file() and os.access(target, os.X_OK), (name, target)
            assert cache not in target.parents, f"{name} still resolves into the cache"
    version = subprocess.run(
        [str(cache / "bin" / "etcd"), "--version"], capture_output=True, text=True, check=True
    )
    assert "etcd Version" in version.stdout
