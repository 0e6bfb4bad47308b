"""Deletes that never hang, children that are watched, and an operator that may die anywhere.

KubeRay backend: resources carry no finalizer (their children are owned and collected),
so they delete with the operator gone. Local backend: ``modelfleet.io/cleanup`` holds a
delete until the operator frees the Ray Serve application, and removing it by hand ends
the wait. A fault-injection hook kills the operator between creating a child and writing
status, and twenty random kills during creates, updates and deletes leave no duplicate
child, no stuck delete and every status at its generation.
"""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from controllers.context import FINALIZER
from controllers.faults import CRASH_AT_VARIABLE, CRASH_EXIT_CODE
from controllers.resync import LEGACY_FINALIZER
from e2e.conftest import ROOT, Kube, Operator, create_nodes, namespace, wait_for

pytestmark = pytest.mark.envtest
NS = "teardown"
LOCAL_NS = "teardown-local"
WEBHOOK = "validate.modelfleet.io"
OWNER_LABEL = "modelfleet.io/owner-name"

Start = Callable[..., Operator]


def manifest(example: str, name: str, **spec: Any) -> str:
    """An example resource under another name, with ``spec`` fields replaced."""
    body = yaml.safe_load((ROOT / "examples" / example).read_text())
    body["metadata"] = {"name": name}
    body["spec"].update(spec)
    if "auth" in body["spec"]:
        body["spec"]["auth"] = {"mode": "None"}
    return json.dumps(body)


def pool(name: str, replicas: int = 1) -> str:
    return manifest("modelpool.yaml", name, replicas=replicas)


def fedjob(name: str, rounds: int = 3) -> str:
    return manifest("fedjob.yaml", name, rounds=rounds)


def fusionjob(name: str) -> str:
    """A job whose child on the kuberay backend is a RayJob (a FedJob's are Deployments)."""
    return manifest("fusionjob.yaml", name)


@pytest.fixture(scope="module")
def start(kube: Kube, start_operator: Start, kuberay_crds: None) -> Start:
    """Start a KubeRay-backend operator for NS; extra args and env pass through."""
    namespace(kube, NS)
    create_nodes(kube)

    def run(*args: str, env: dict[str, str] | None = None) -> Operator:
        return start_operator(
            "--backend=kuberay",
            "--standalone",
            "--webhook=off",
            f"--namespace={NS}",
            *args,
            env=env,
        )

    return run


def children(kube: Kube, owner: str) -> list[dict[str, Any]]:
    """Every RayService and RayJob labelled as belonging to ``owner``."""
    found = []
    for plural in ("rayservices", "rayjobs"):
        found += kube.get(plural, "-n", NS, "-l", f"{OWNER_LABEL}={owner}")["items"]
    return found


def answers(operator: Operator) -> bool:
    """Whether the operator is up: its /healthz answers (it runs handlers from then on)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/healthz", timeout=2):
            return True
    except OSError:
        return False


def reconciled(kube: Kube, resource: str) -> dict[str, Any] | None:
    """The resource, once its status was computed for its current generation."""
    body = kube.get(resource, "-n", NS)
    status = body.get("status") or {}
    return body if status.get("observedGeneration") == body["metadata"]["generation"] else None


def test_resources_carry_no_finalizer_and_delete_with_the_operator_stopped(
    kube: Kube, start: Start
) -> None:
    operator = start()
    kube("apply", "-n", NS, "-f", "-", stdin=pool("gone"))
    wait_for(lambda: children(kube, "gone"), 60, "the pool's RayService")
    body = wait_for(lambda: reconciled(kube, "modelpool/gone"), 60, "the pool's status")
    assert not body["metadata"].get("finalizers")
    operator.stop()
    kube("delete", "modelpool/gone", "-n", NS, "--timeout=20s")
    assert "gone" not in kube("get", "modelpools", "-n", NS, "-o", "name")


def test_a_child_change_reaches_its_owner_without_a_resync(kube: Kube, start: Start) -> None:
    """With the resync loop an hour away, only the watch of children can bring back a
    deleted RayService within seconds."""
    operator = start("--resync-seconds=3600")
    kube("apply", "-n", NS, "-f", "-", stdin=pool("watched"))
    [first] = wait_for(lambda: children(kube, "watched"), 60, "the pool's RayService")
    kube("delete", f"rayservice/{first['metadata']['name']}", "-n", NS)
    started = time.monotonic()
    [second] = wait_for(
        lambda: [
            c for c in children(kube, "watched") if c["metadata"]["uid"] != first["metadata"]["uid"]
        ],
        30,
        "the RayService to be created again",
    )
    assert time.monotonic() - started < 30
    assert second["metadata"]["name"] == first["metadata"]["name"]
    operator.stop()
    kube("delete", "modelpool/watched", "-n", NS)


def test_a_crash_between_creating_a_child_and_writing_status_converges_without_a_duplicate(
    kube: Kube, start: Start
) -> None:
    doomed = start(env={CRASH_AT_VARIABLE: "after-apply"})
    kube("apply", "-n", NS, "-f", "-", stdin=fusionjob("crashy"))
    assert doomed.process.wait(timeout=60) == CRASH_EXIT_CODE
    [child] = children(kube, "crashy")
    assert not (kube.get("fusionjob/crashy", "-n", NS).get("status") or {}).get("workload")
    operator = start()
    body = wait_for(lambda: reconciled(kube, "fusionjob/crashy"), 60, "the FusionJob's status")
    assert body["status"]["workload"] == child["metadata"]["name"]
    [after] = children(kube, "crashy")
    assert after["metadata"]["uid"] == child["metadata"]["uid"]
    assert "fault injection: exiting at after-apply" in doomed.logs()
    assert "FusionJob teardown/crashy" in doomed.logs()
    operator.stop()


def test_a_delete_held_by_an_older_operators_finalizer_completes(kube: Kube, start: Start) -> None:
    kube("apply", "-n", NS, "-f", "-", stdin=fedjob("legacy"))
    marker = json.dumps({"metadata": {"finalizers": [LEGACY_FINALIZER]}})
    kube("patch", "fedjob/legacy", "-n", NS, "--type=merge", "-p", marker)
    kube("delete", "fedjob/legacy", "-n", NS, "--wait=false")
    assert kube.get("fedjob/legacy", "-n", NS)["metadata"]["deletionTimestamp"]
    operator = start()
    wait_for(
        lambda: "legacy" not in kube("get", "fedjobs", "-n", NS, "-o", "name"),
        30,
        "the held delete to complete",
    )
    operator.stop()


@pytest.mark.slow
def test_twenty_random_kills_leave_no_duplicate_no_stuck_delete_and_current_status(
    kube: Kube, start: Start
) -> None:
    """Each round starts the operator, creates, updates and deletes resources at random
    and kills the operator with SIGKILL at a random moment. Names are never reused: the
    test API server runs no garbage collector, so a deleted owner's child stays."""
    rng = random.Random(20)
    live: dict[str, int] = {}
    deleted: set[str] = set()
    serial = 0
    for _ in range(20):
        operator = start()
        wait_for(lambda op=operator: answers(op), 30, "the operator's probes")
        deadline = time.monotonic() + rng.uniform(0.5, 3.0)
        while time.monotonic() < deadline:
            action = rng.choice(["create", "create", "update", "delete"])
            if action == "create" or not live:
                serial += 1
                name = f"r{serial}"
                make = pool if serial % 2 else fusionjob
                kube("apply", "-n", NS, "-f", "-", stdin=make(name))
                live[name] = 1
            elif action == "update":
                name = rng.choice(sorted(live))
                live[name] += 1
                kind = "modelpool" if int(name[1:]) % 2 else "fusionjob"
                spec = (
                    {"replicas": live[name]}
                    if kind == "modelpool"
                    else {"training": {"epochs": live[name]}}
                )
                change = json.dumps({"spec": spec})
                kube("patch", f"{kind}/{name}", "-n", NS, "--type=merge", "-p", change)
            else:
                name = rng.choice(sorted(live))
                kind = "modelpool" if int(name[1:]) % 2 else "fusionjob"
                kube("delete", f"{kind}/{name}", "-n", NS, "--wait=false")
                del live[name]
                deleted.add(name)
            time.sleep(rng.uniform(0.05, 0.4))
        operator.stop(signal.SIGKILL)
    operator = start()
    for name in sorted(live):
        resource = f"{'modelpool' if int(name[1:]) % 2 else 'fusionjob'}/{name}"
        body = wait_for(lambda r=resource: reconciled(kube, r), 60, f"{resource} settled")
        owned = children(kube, name)
        assert len(owned) == 1, (name, [c["metadata"]["name"] for c in owned])
        assert owned[0]["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    present = set(kube("get", "modelpools,fusionjobs", "-n", NS, "-o", "name").split())
    assert not {p for p in present if p.split("/")[1] in deleted}
    operator.stop()


@pytest.fixture(scope="module")
def start_local(kube: Kube, start_operator: Start) -> Start:
    """Start a local-backend operator for LOCAL_NS, with its webhook off unless args say."""
    namespace(kube, LOCAL_NS)
    kube("delete", "validatingwebhookconfiguration", WEBHOOK, "--ignore-not-found")

    def run(*args: str) -> Operator:
        fixed = ("--backend=local", "--standalone", f"--namespace={LOCAL_NS}")
        return start_operator(*fixed, *(args or ("--webhook=off",)))

    return run


def finalizers(kube: Kube, resource: str) -> list[str]:
    return list(kube.get(resource, "-n", LOCAL_NS)["metadata"].get("finalizers") or [])


def test_a_local_resource_waits_for_its_cleanup_and_a_hand_removed_finalizer_ends_it(
    kube: Kube, start_local: Start
) -> None:
    operator = start_local()
    kube("apply", "-n", LOCAL_NS, "-f", "-", stdin=fedjob("held"))
    wait_for(
        lambda: (
            FINALIZER
            in (kube.get("fedjob/held", "-n", LOCAL_NS)["metadata"].get("finalizers") or [])
        ),
        30,
        f"the {FINALIZER} finalizer",
    )
    operator.stop()
    kube("delete", "fedjob/held", "-n", LOCAL_NS, "--wait=false")
    time.sleep(2)
    assert kube.get("fedjob/held", "-n", LOCAL_NS)["metadata"]["deletionTimestamp"]
    removal = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
    kube("patch", "fedjob/held", "-n", LOCAL_NS, "--type=json", "-p", removal)
    wait_for(
        lambda: "held" not in kube("get", "fedjobs", "-n", LOCAL_NS, "-o", "name"),
        20,
        "the delete to complete once the finalizer is gone",
    )


def test_a_resource_that_a_newer_operator_rejects_still_deletes(
    kube: Kube, start_local: Start
) -> None:
    """An object stored before its spec became invalid: the newer operator's webhook must
    let the finalizer go, or the delete would hang."""
    lenient = start_local()
    bad = (ROOT / "examples" / "invalid" / "fedjob-fedavg-mixed-ranks.yaml").read_text()
    kube("apply", "-n", LOCAL_NS, "-f", "-", stdin=bad)
    wait_for(lambda: FINALIZER in finalizers(kube, "fedjob/mixed-ranks"), 30, f"the {FINALIZER}")
    lenient.stop()
    strict = start_local("--webhook=managed")
    wait_for(
        lambda: WEBHOOK in kube("get", "validatingwebhookconfigurations", "-o", "name"),
        60,
        "the webhook",
    )
    rejected = kube(
        "apply", "-n", LOCAL_NS, "-f", "-", stdin=bad.replace("mixed-ranks", "again"), check=False
    )
    assert "again" not in kube("get", "fedjobs", "-n", LOCAL_NS, "-o", "name"), rejected
    kube("delete", "fedjob/mixed-ranks", "-n", LOCAL_NS, "--timeout=30s")
    strict.stop()
    kube("delete", "validatingwebhookconfiguration", WEBHOOK, "--ignore-not-found")
