"""Two operator replicas with peering: one works, the other stands by and takes over."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from e2e.conftest import ROOT, Kube, Operator, namespace, wait_for

pytestmark = [pytest.mark.envtest, pytest.mark.slow]
NS = "ha"
PEERING = "modelfleet-ha"


def test_standby_takes_over_when_the_leader_dies(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    namespace(kube, NS)
    args = ("--backend=local", "--webhook=off", f"--peering={PEERING}", "--peering-lifetime=10")
    leader = start_operator(*args, "--priority=100")

    def peers() -> int:
        out = kube("get", "clusterkopfpeering", PEERING, "-o", "json", check=False)
        status = json.loads(out).get("status") or {} if out.startswith("{") else {}
        return len([p for p in status.values() if p])

    wait_for(lambda: peers() == 1, 60, "the leader to join the peering")
    standby = start_operator(*args, "--priority=1")
    wait_for(lambda: peers() == 2, 60, "the standby to join the peering")
    kube("apply", "-n", NS, "-f", str(ROOT / "examples" / "fedjob.yaml"))
    kube.wait_reason("fedjob/clinical-notes", NS, "RuntimeNotAvailable")
    assert "Resuming operations" not in standby.logs(), "the standby worked beside the leader"

    leader.stop(signal.SIGKILL)
    wait_for(lambda: "Resuming operations" in standby.logs(), 90, "the standby to take over")
    kube("patch", "fedjob/clinical-notes", "-n", NS, "--type=merge", "-p", '{"spec":{"rounds":3}}')
    wait_for(
        lambda: kube.get("fedjob/clinical-notes", "-n", NS)["status"]["observedGeneration"] == 2,
        60,
        "the standby to reconcile",
    )
    standby.stop()
