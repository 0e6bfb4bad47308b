"""Two operator replicas with peering: one works, the other stands by and takes over."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from controllers.probes import auto_priority
from e2e.conftest import ROOT, Kube, Operator, namespace, wait_for

pytestmark = [pytest.mark.envtest, pytest.mark.slow]
NS = "ha"
PEERING = "modelfleet-ha"
FEDJOB = "fedjob/clinical-notes"


def peers(kube: Kube, *peering: str) -> dict[str, int]:
    """The live peers (identity: priority) recorded in the peering object ``peering`` names."""
    out = kube("get", *peering, "-o", "json", check=False)
    status = (json.loads(out).get("status") or {}) if out.startswith("{") else {}
    return {identity: peer["priority"] for identity, peer in status.items() if peer}


def rounds_observed(kube: Kube, ns: str) -> bool:
    """Whether the operator has reconciled the FedJob after its rounds were patched to 5."""
    return bool(kube.get(FEDJOB, "-n", ns)["status"]["observedGeneration"] == 2)


def test_standby_takes_over_when_the_leader_dies(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    namespace(kube, NS)
    args = ("--backend=local", "--webhook=off", f"--peering={PEERING}", "--peering-lifetime=10")
    leader = start_operator(*args, "--priority=100")
    peering = ("clusterkopfpeering", PEERING)
    wait_for(lambda: len(peers(kube, *peering)) == 1, 60, "the leader to join the peering")
    standby = start_operator(*args, "--priority=1")
    wait_for(lambda: len(peers(kube, *peering)) == 2, 60, "the standby to join the peering")
    kube("apply", "-n", NS, "-f", str(ROOT / "examples" / "fedjob.yaml"))
    kube.wait_reason(FEDJOB, NS, "InvalidForLocalBackend")
    assert "Resuming operations" not in standby.logs(), "the standby worked beside the leader"

    leader.stop(signal.SIGKILL)
    wait_for(lambda: "Resuming operations" in standby.logs(), 90, "the standby to take over")
    kube("patch", FEDJOB, "-n", NS, "--type=merge", "-p", '{"spec":{"rounds":5}}')
    wait_for(lambda: rounds_observed(kube, NS), 60, "the standby to reconcile")
    standby.stop()


def test_replicas_watching_namespaces_share_a_peering_in_each(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    """With --namespace, kopf needs a KopfPeering in each namespace: the operator makes them.

    Both replicas take --priority=auto, as the chart runs them; POD_ID names each peer
    after its pod, so the peering objects show whose priority is whose.
    """
    watched = [namespace(kube, "ha-team-a"), namespace(kube, "ha-team-b")]
    args = [
        "--backend=local",
        "--webhook=off",
        "--peering=modelfleet-ns",
        "--peering-lifetime=10",
        "--priority=auto",
        *(f"--namespace={ns}" for ns in watched),
    ]
    pods = sorted(["modelfleet-0", "modelfleet-1"], key=auto_priority, reverse=True)
    expected = {pod: auto_priority(pod) for pod in pods}
    assert len(set(expected.values())) == 2

    def start(pod: str) -> Operator:
        return start_operator(*args, env={"POD_NAME": pod, "POD_ID": pod})

    def joined(count: int) -> bool:
        return all(
            len(peers(kube, "kopfpeering", "modelfleet-ns", "-n", ns)) == count for ns in watched
        )

    leader = start(pods[0])
    wait_for(lambda: joined(1), 60, "the leader to create and join a KopfPeering in each namespace")
    standby = start(pods[1])
    wait_for(lambda: joined(2), 60, "the standby to join them")
    for ns in watched:
        assert peers(kube, "kopfpeering", "modelfleet-ns", "-n", ns) == expected
    assert "NotFound" in kube("get", "clusterkopfpeering", "modelfleet-ns", check=False)

    kube("apply", "-n", watched[0], "-f", str(ROOT / "examples" / "fedjob.yaml"))
    kube.wait_reason(FEDJOB, watched[0], "InvalidForLocalBackend")
    assert "Resuming operations" not in standby.logs(), "the standby worked beside the leader"

    leader.stop(signal.SIGKILL)
    wait_for(lambda: "Resuming operations" in standby.logs(), 90, "the standby to take over")
    kube("patch", FEDJOB, "-n", watched[0], "--type=merge", "-p", '{"spec":{"rounds":5}}')
    wait_for(lambda: rounds_observed(kube, watched[0]), 60, "the standby to reconcile")
    standby.stop()
