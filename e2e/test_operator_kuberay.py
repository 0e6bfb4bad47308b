"""The operator rendering KubeRay children, deriving status from them, and surviving restarts."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from e2e.conftest import ROOT, Kube, Operator, create_nodes, namespace, wait_for
from modelfleet.backends.kuberay import ClusterChange, cluster_change, render
from modelfleet.core.workload import Workload
from tests.kuberay_crds import JOB, OWNER, SERVICE, TRANSITION_TIME, deploy_failed, serving

pytestmark = pytest.mark.envtest
NS = "ray"
KUBERAY_DEFAULTS = {"backoffLimit", "submissionMode", "numOfHosts", "priority"}
"""Fields KubeRay's schemas default that the operator leaves unset: the API server adds them."""
RUNNING_JOB = {
    "jobDeploymentStatus": "Running",
    "jobStatus": "RUNNING",
    "jobId": "fuse-chat-fusion-7x2k9",
    "rayClusterName": "fuse-chat-fusion-raycluster-a",
    "dashboardURL": "fuse-chat-fusion-raycluster-a-head-svc.ray.svc.cluster.local:8265",
    "startTime": TRANSITION_TIME,
    "observedGeneration": 1,
}


@pytest.fixture(scope="module")
def start(kube: Kube, start_operator: Callable[..., Operator]) -> Callable[[], Operator]:
    namespace(kube, NS)
    create_nodes(kube)
    return lambda: start_operator(
        "--backend=kuberay", "--standalone", "--webhook=off", f"--namespace={NS}"
    )


def gpu_products(pod: dict[str, Any]) -> list[str] | None:
    """The ``nvidia.com/gpu.product`` values a pod's node affinity requires, if any."""
    if "affinity" not in pod:
        return None
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expression = required["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expression["key"] == "nvidia.com/gpu.product"
    return list(expression["values"])


def _children(kube: Kube, plural: str) -> list[dict[str, object]]:
    return list(kube.get(plural, "-n", NS)["items"])


def _set_status(kube: Kube, resource: str, status: dict[str, Any]) -> None:
    """Write ``status`` as KubeRay would, through the status subresource, replacing what
    was there; KubeRay's schema would prune a field it lacks, so the write is read back."""
    patch = json.dumps([{"op": "add", "path": "/status", "value": status}])
    kube("patch", resource, "-n", NS, "--subresource=status", "--type=json", "-p", patch)
    assert differences(status, kube.get(resource, "-n", NS)["status"]) == []


def differences(rendered: Any, stored: Any, path: str = "") -> list[str]:
    """Where ``stored`` lacks or changed something ``rendered`` holds (what pruning does);
    what the server added is left out."""
    if isinstance(rendered, dict) and isinstance(stored, dict):
        return [
            found
            for key, value in rendered.items()
            for found in (
                differences(value, stored[key], f"{path}.{key}")
                if key in stored
                else [f"{path}.{key}: pruned"]
            )
        ]
    if isinstance(rendered, list) and isinstance(stored, list) and len(rendered) == len(stored):
        return [
            found
            for index, (item, kept) in enumerate(zip(rendered, stored, strict=True))
            for found in differences(item, kept, f"{path}[{index}]")
        ]
    return [] if rendered == stored else [f"{path}: {rendered!r} became {stored!r}"]


def additions(rendered: Any, stored: Any) -> set[str]:
    """The names of the fields ``stored`` has that ``rendered`` lacks, at any depth."""
    if isinstance(rendered, dict) and isinstance(stored, dict):
        added = set(stored) - set(rendered)
        return added.union(*(additions(rendered[k], stored[k]) for k in rendered if k in stored))
    if isinstance(rendered, list) and isinstance(stored, list):
        return set().union(*(additions(r, s) for r, s in zip(rendered, stored, strict=False)))
    return set()


def test_missing_kuberay_is_reported(kube: Kube, start: Callable[[], Operator]) -> None:
    operator = start()
    kube("apply", "-n", NS, "-f", str(ROOT / "examples"))
    ready = kube.wait_reason("fusionjob/fuse-chat", NS, "KubeRayNotInstalled")
    assert "install the KubeRay operator" in ready["message"]
    local = kube.wait_reason("fedjob/clinical-notes", NS, "InvalidForCluster")
    assert "pvc://<claim>/<path>" in local["message"], "FedJobs run on Flower, not KubeRay"
    operator.stop()


@pytest.mark.usefixtures("kuberay_crds")
def test_children_status_and_restart(kube: Kube, start: Callable[[], Operator]) -> None:
    operator = start()
    kube.wait_reason("fusionjob/fuse-chat", NS, "RayJobStarting")
    owner = kube.get("fusionjob/fuse-chat", "-n", NS)
    job = kube.get("rayjob/fuse-chat-fusion", "-n", NS)
    reference = job["metadata"]["ownerReferences"][0]
    assert (reference["kind"], reference["uid"], reference["controller"]) == (
        "FusionJob",
        owner["metadata"]["uid"],
        True,
    )
    assert kube.condition("fusionjob/fuse-chat", NS, "Progressing")["status"] == "True"

    _set_status(kube, "rayjob/fuse-chat-fusion", RUNNING_JOB)
    assert kube.wait_reason("fusionjob/fuse-chat", NS, "Running")["status"] == "True"

    kube.wait_reason("modelpool/chat", NS, "RayServiceStarting")
    _set_status(kube, "rayservice/chat-serve", serving("chat-serve", 2))
    kube.wait_reason("modelpool/chat", NS, "Serving")
    pool = kube.get("modelpool/chat", "-n", NS)["status"]
    assert pool["replicas"] == 2 and pool["endpoint"].startswith(
        "http://chat-serve-serve-svc.ray.svc"
    )
    assert pool["replicasByGpuType"] == [{"gpuType": "cpu", "model": "arith", "replicas": 2}]
    router = kube.wait_reason("routingpolicy/chat-router", NS, "RayServiceStarting")
    assert router["status"] == "False"

    def router_app() -> dict[str, Any]:
        rendered = kube.get("rayservice/chat-router-router", "-n", NS)
        app: dict[str, Any] = yaml.safe_load(rendered["spec"]["serveConfigV2"])["applications"][0]
        return app if app["args"]["endpoints"] else {}

    app = wait_for(router_app, 30, "the router to learn its target's endpoint")
    assert app["import_path"] == "modelfleet.routing.app:build"
    assert app["args"]["endpoints"] == {"small": pool["endpoint"]}
    rendered = kube.get("rayservice/chat-router-router", "-n", NS)
    assert app["args"]["learned"] == []
    assert rendered["spec"]["rayClusterConfig"]["workerGroupSpecs"] == []
    error = "Deploying app 'chat-router-router' failed: ImportError: no module named 'httpx'"
    _set_status(kube, "rayservice/chat-router-router", deploy_failed("chat-router-router", error))
    failed = kube.wait_reason("routingpolicy/chat-router", NS, "ServeDeployFailed")
    assert failed["status"] == "False" and error in failed["message"]
    _set_status(kube, "rayservice/chat-router-router", serving("chat-router-router", 1))
    assert kube.wait_reason("routingpolicy/chat-router", NS, "TargetsReady")["status"] == "True"
    endpoint = kube.get("routingpolicy/chat-router", "-n", NS)["status"]["endpoint"]
    assert endpoint == "http://chat-router-router-serve-svc.ray.svc:8000/v1"

    unscaled = kube.get("rayservice/chat-serve", "-n", NS)
    before = unscaled["metadata"]["annotations"]["modelfleet.io/spec-hash"]
    kube("scale", "modelpool/chat", "-n", NS, "--replicas=5")
    wait_for(
        lambda: (
            kube.get("rayservice/chat-serve", "-n", NS)["metadata"]["annotations"][
                "modelfleet.io/spec-hash"
            ]
            != before
        ),
        30,
        "the RayService to follow the scale",
    )
    scaled = kube.get("rayservice/chat-serve", "-n", NS)["spec"]["rayClusterConfig"]
    groups = [(g["groupName"], g["replicas"]) for g in scaled["workerGroupSpecs"]]
    assert groups == [("g0-cpu", 4), ("g1-l4", 1), ("g2-a100-80gb", 0)]
    old_cluster = unscaled["spec"]["rayClusterConfig"]
    assert cluster_change(old_cluster, scaled) is ClusterChange.NONE, "KubeRay keeps its cluster"

    operator.stop(signal.SIGKILL)
    restarted = start()
    kube("annotate", "fusionjob/fuse-chat", "-n", NS, "touched=after-restart")
    wait_for(
        lambda: (
            restarted.process.poll() is None and "Handler 'reconcile' succeeded" in restarted.logs()
        ),
        60,
        "the restarted operator to reconcile",
    )
    names = sorted(o["metadata"]["name"] for o in _children(kube, "rayjobs"))  # type: ignore[index]
    assert names == ["fuse-chat-fusion"]
    services = sorted(o["metadata"]["name"] for o in _children(kube, "rayservices"))  # type: ignore[index]
    assert services == ["chat-router-router", "chat-serve"]
    assert kube.condition("fusionjob/fuse-chat", NS)["reason"] == "Running"


def test_a_service_keeps_its_network_policy_and_lands_on_real_gpu_products(kube: Kube) -> None:
    """Runs with the restarted operator of the test above."""
    policy = kube.get("networkpolicy/chat-serve", "-n", NS)
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "ModelPool"
    pods = {"matchLabels": {"modelfleet.io/workload": "chat-serve"}}
    assert policy["spec"]["podSelector"] == pods
    serve_ports = [rule.get("ports") for rule in policy["spec"]["ingress"]]
    assert [{"port": 8000, "protocol": "TCP"}] in serve_ports

    stale = ("modelfleet.io/spec-hash=stale", "team/reviewed=yes", "--overwrite")
    kube("annotate", "networkpolicy/chat-serve", "-n", NS, *stale)

    def restored() -> bool:
        annotations = kube.get("networkpolicy/chat-serve", "-n", NS)["metadata"]["annotations"]
        return annotations["modelfleet.io/spec-hash"] != "stale"

    wait_for(restored, 30, "the NetworkPolicy to be replaced when its hash is stale")
    annotations = kube.get("networkpolicy/chat-serve", "-n", NS)["metadata"]["annotations"]
    assert annotations["team/reviewed"] == "yes", "annotations of others are kept"
    kube("delete", "networkpolicy/chat-serve", "-n", NS)
    wait_for(
        lambda: "chat-serve" in kube("get", "networkpolicies", "-n", NS, "-o", "name"),
        30,
        "the NetworkPolicy to be created again",
    )
    policies = kube("get", "networkpolicies", "-n", NS, "-o", "name").split()
    assert sorted(policies) == [
        "networkpolicy.networking.k8s.io/chat-router-router",
        "networkpolicy.networking.k8s.io/chat-serve",
    ], "services get one each, jobs none"

    cluster = kube.get("rayservice/chat-serve", "-n", NS)["spec"]["rayClusterConfig"]
    pods_by_group = {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    for group, product in (("g1-l4", "NVIDIA-L4"), ("g2-a100-80gb", "NVIDIA-A100-SXM4-80GB")):
        assert product in (gpu_products(pods_by_group[group]) or [])
        assert pods_by_group[group]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_products(pods_by_group["g0-cpu"]) is None


def test_jobs_keep_their_spec_stay_finished_and_leave_strangers_alone(kube: Kube) -> None:
    """Runs with the restarted operator of the test above."""
    example = (ROOT / "examples" / "fusionjob.yaml").read_text()
    kube("apply", "-n", NS, "-f", "-", stdin=example.replace("name: fuse-chat", "name: steady"))
    kube.wait_reason("fusionjob/steady", NS, "RayJobStarting")
    _set_status(kube, "rayjob/steady-fusion", {**RUNNING_JOB, "jobId": "steady-fusion-1"})
    kube.wait_reason("fusionjob/steady", NS, "Running")
    started = kube.get("rayjob/steady-fusion", "-n", NS)["spec"]
    patch = '{"spec":{"training":{"epochs":3}}}'
    kube("patch", "fusionjob/steady", "-n", NS, "--type=merge", "-p", patch)
    wait_for(
        lambda: (
            "keeps the spec it started with" in kube.condition("fusionjob/steady", NS)["message"]
        ),
        30,
        "the FusionJob to say its running job keeps its spec",
    )
    assert kube.get("rayjob/steady-fusion", "-n", NS)["spec"] == started

    done = {
        **RUNNING_JOB,
        "jobId": "steady-fusion-1",
        "jobDeploymentStatus": "Complete",
        "jobStatus": "SUCCEEDED",
        "message": "Job finished successfully.",
        "succeeded": 1,
        "failed": 0,
        "endTime": TRANSITION_TIME,
    }
    _set_status(kube, "rayjob/steady-fusion", done)
    assert kube.wait_reason("fusionjob/steady", NS, "Succeeded")["status"] == "True"
    kube("delete", "rayjob/steady-fusion", "-n", NS)
    time.sleep(6)  # three resyncs
    assert "steady-fusion" not in kube("get", "rayjobs", "-n", NS, "-o", "name")
    assert kube.condition("fusionjob/steady", NS)["reason"] == "Succeeded"

    stranger = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "stranger-fusion"},
        "spec": {"entrypoint": "echo someone else's job"},
    }
    kube("apply", "-n", NS, "-f", "-", stdin=json.dumps(stranger))
    kube("apply", "-n", NS, "-f", "-", stdin=example.replace("name: fuse-chat", "name: stranger"))
    conflict = kube.wait_reason("fusionjob/stranger", NS, "NameConflict")
    assert "a RayJob named stranger-fusion exists" in conflict["message"]
    kept = kube.get("rayjob/stranger-fusion", "-n", NS)
    assert differences(stranger["spec"], kept["spec"]) == []
    assert not kept["metadata"].get("ownerReferences")


def test_unsatisfiable_pool_is_unschedulable(kube: Kube) -> None:
    pool = (ROOT / "examples" / "modelpool.yaml").read_text()
    pool = pool.replace("name: chat\n", "name: huge\n").replace("replicas: 2", "replicas: 40")
    kube("apply", "-n", NS, "-f", "-", stdin=pool)
    ready = kube.wait_reason("modelpool/huge", NS, "Unschedulable")
    assert "spec.replicas=40" in ready["message"] and "room for 16 replica(s)" in ready["message"]
    assert "huge-serve" not in kube("get", "rayservices", "-n", NS, "-o", "name")


def test_fusion_training_is_placed_on_labelled_nodes(kube: Kube) -> None:
    job = (
        (ROOT / "examples" / "fusionjob.yaml")
        .read_text()
        .replace("name: fuse-chat", "name: placed")
    )
    architecture = "    architecture: {layers: 40, hiddenSize: 5120, parametersBillions: 13}\n"
    job = job.replace("    family: Tiny\n", "    family: Tiny\n" + architecture)
    kube("apply", "-n", NS, "-f", "-", stdin=job)
    kube.wait_reason("fusionjob/placed", NS, "RayJobStarting")
    placement = kube.get("fusionjob/placed", "-n", NS)["status"]["placement"]
    assert placement["strategy"] == "nic-aware" and placement["expectedStepSeconds"] > 0
    workers = kube.get("rayjob/placed-fusion", "-n", NS)["spec"]["rayClusterSpec"][
        "workerGroupSpecs"
    ]
    pinned = sorted(
        w["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] for w in workers
    )
    assert pinned == sorted(g["node"] for g in placement["groups"])
    assert set(pinned) <= {"h100-a0", "h100-a1", "h100-b0", "h100-b1", "a100-0", "a100-1"}

    huge = job.replace("name: placed", "name: too-big").replace(
        "parametersBillions: 13", "parametersBillions: 900"
    )
    kube("apply", "-n", NS, "-f", "-", stdin=huge)
    assert "GiB per GPU" in kube.wait_reason("fusionjob/too-big", NS, "Unschedulable")["message"]


def test_a_failed_job_stays_failed(kube: Kube) -> None:
    """KubeRay gave up on the FusionJob's RayJob (the Ray job failed, no retries left): the
    FusionJob reports why, Degraded, and stays failed once KubeRay's TTL deletes the RayJob."""
    failed = {
        "jobDeploymentStatus": "Failed",
        "jobStatus": "FAILED",
        "reason": "AppFailed",
        "message": "Job entrypoint command failed with exit code 1",
        "jobId": "fuse-chat-fusion-q8v4m",
        "rayClusterName": "fuse-chat-fusion-raycluster-a",
        "startTime": TRANSITION_TIME,
        "endTime": TRANSITION_TIME,
        "succeeded": 0,
        "failed": 1,
    }
    _set_status(kube, "rayjob/fuse-chat-fusion", failed)
    ready = kube.wait_reason("fusionjob/fuse-chat", NS, "RayJobFailed")
    assert ready["status"] == "False" and "(AppFailed): Job entrypoint command" in ready["message"]
    assert kube.condition("fusionjob/fuse-chat", NS, "Degraded")["status"] == "True"
    kube("delete", "rayjob/fuse-chat-fusion", "-n", NS)
    time.sleep(6)  # three resyncs
    assert "fuse-chat-fusion" not in kube("get", "rayjobs", "-n", NS, "-o", "name")
    assert kube.condition("fusionjob/fuse-chat", NS)["reason"] == "RayJobFailed"


@pytest.mark.parametrize("workload", [SERVICE, JOB], ids=lambda w: w.kind.value)
@pytest.mark.usefixtures("kuberay_crds")
def test_children_are_stored_as_rendered(kube: Kube, workload: Workload) -> None:
    """KubeRay's structural schemas prune silently what they do not declare: a child read
    back from the API server holds everything rendered, plus only KubeRay's defaults."""
    if OWNER.namespace not in kube("get", "namespaces", "-o", "name"):
        namespace(kube, OWNER.namespace)
    rendered = render(OWNER, workload, "img:1", products={"L4": ("NVIDIA-L4",)})
    stored = json.loads(kube("create", "-f", "-", "-o", "json", stdin=json.dumps(rendered)))
    assert differences(rendered, stored) == []
    assert additions(rendered["spec"], stored["spec"]) <= KUBERAY_DEFAULTS
