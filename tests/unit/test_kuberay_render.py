"""KubeRay rendering and status mapping: pure functions, no API server (the backend's
apply runs against fakes of the Kubernetes API classes)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from controllers.reconcile import EventReason
from controllers.workloads import apply_events
from modelfleet.api.pods import PodOverrides
from modelfleet.backends.base import Owner
from modelfleet.backends.kuberay import (
    WORKLOAD_LABEL,
    ClusterChange,
    cluster_change,
    observe_rayjob,
    observe_rayservice,
    render,
    render_network_policy,
    rendered_part,
)
from modelfleet.backends.local import RUNTIME_NOT_AVAILABLE, LocalBackend, runtime_available
from modelfleet.backends.pod_templates import HASH_ANNOTATION, gpu_affinity
from modelfleet.core.pod_security import restricted_violations
from modelfleet.core.workload import (
    API_KEYS_ARG,
    API_KEYS_MOUNT,
    GPU_PRODUCT_LABEL,
    ApplyResult,
    WorkerGroup,
    Workload,
    WorkloadKind,
    WorkloadState,
)
from modelfleet.scheduling.inventory import describe_node, read_inventory
from tests.unit.ray_pods import (
    ANTI_AFFINITY,
    USER_NODE_EXPRESSION,
    ZONE_EXPRESSION,
    every_override,
    templates,
)

OWNER = Owner("modelfleet.io/v1alpha1", "FusionJob", "job", "team-a", "uid-1")
JOB = Workload(
    "job-fusion",
    WorkloadKind.JOB,
    "modelfleet.fusion.runtime",
    {"rounds": 3},
    (
        WorkerGroup("g0-l4", "L4", 2, 1, (("modelfleet.io/site", "eu"), (GPU_PRODUCT_LABEL, "L4"))),
        WorkerGroup("g1-cpu", "cpu", 1, 0),
    ),
)
SERVICE = Workload(
    "pool-serve",
    WorkloadKind.SERVICE,
    "modelfleet.serving.app",
    {"replicas": 3},
    (WorkerGroup("g0-l4", "L4", 2, 1), WorkerGroup("g1-h100", "H100", 1, 1)),
)
RUNTIME_DOCKERFILE = Path(__file__).resolve().parents[2] / "images" / "runtime" / "Dockerfile"
KEYED = replace(SERVICE, api_keys_secret="pool-keys", claims=("team-models",))


def test_rayjob_is_owned_labelled_and_placed() -> None:
    obj = render(OWNER, JOB, "img:1")
    assert (obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]) == (
        "RayJob",
        "job-fusion",
        "team-a",
    )
    assert obj["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert obj["metadata"]["ownerReferences"][0]["controller"] is True
    assert obj["spec"]["entrypoint"] == "python -m modelfleet.fusion.runtime"
    workers = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu_pod = workers[0]["template"]["spec"]
    assert gpu_pod["nodeSelector"] == {"modelfleet.io/site": "eu"}
    assert gpu_pod["affinity"] == gpu_affinity("L4", {})
    assert gpu_pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert gpu_pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    cpu_pod = workers[1]["template"]["spec"]
    assert not {"nodeSelector", "affinity", "tolerations"} & set(cpu_pod)
    assert workers[1]["replicas"] == 1


def test_gpu_pods_select_the_product_strings_the_nodes_carry() -> None:
    """GPU feature discovery labels nodes NVIDIA-A100-SXM4-80GB, not A100-80GB: a pool
    asking for the short name must land on every node of that type the cluster has."""
    nodes = [
        describe_node("a", "NVIDIA-A100-SXM4-80GB", 8),
        describe_node("b", "NVIDIA-A100-80GB-PCIe", 4),
        describe_node("c", "NVIDIA-H100-80GB-HBM3", 8),
    ]
    products = read_inventory(nodes).product_labels()
    assert products == {
        "A100-80GB": ("NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-SXM4-80GB"),
        "H100": ("NVIDIA-H100-80GB-HBM3",),
    }
    terms = gpu_affinity("A100-80GB", products)["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {
                    "key": GPU_PRODUCT_LABEL,
                    "operator": "In",
                    "values": ["A100-80GB", "NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-SXM4-80GB"],
                }
            ]
        }
    ]
    l4_job = replace(JOB, worker_groups=JOB.worker_groups[:1])
    rendered = render(OWNER, l4_job, "img:1", products=products)
    pod = rendered["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["affinity"] == gpu_affinity("L4", {}), "a type no node has keeps its name"


def test_spec_hash_is_stable_and_tracks_the_spec() -> None:
    first = render(OWNER, JOB, "img:1")["metadata"]["annotations"][HASH_ANNOTATION]
    assert first == render(OWNER, JOB, "img:1")["metadata"]["annotations"][HASH_ANNOTATION]
    assert first != render(OWNER, JOB, "img:2")["metadata"]["annotations"][HASH_ANNOTATION]


def test_rayservice_carries_the_serve_config() -> None:
    obj = render(OWNER, SERVICE, "img:1")
    serve = yaml.safe_load(obj["spec"]["serveConfigV2"])
    assert serve["applications"][0]["import_path"] == "modelfleet.serving.app:build"
    assert serve["applications"][0]["args"] == {"replicas": 3}
    assert len(obj["spec"]["rayClusterConfig"]["workerGroupSpecs"]) == 2


def test_rayjob_status_mapping() -> None:
    def state(deployment: str, job: str) -> WorkloadState:
        return observe_rayjob(
            {"status": {"jobDeploymentStatus": deployment, "jobStatus": job}}
        ).state

    assert state("Running", "RUNNING") is WorkloadState.RUNNING
    assert state("Complete", "SUCCEEDED") is WorkloadState.SUCCEEDED
    assert state("Failed", "") is WorkloadState.FAILED
    assert state("Complete", "FAILED") is WorkloadState.FAILED
    assert state("Initializing", "") is WorkloadState.PENDING
    assert observe_rayjob({}).reason == "RayJobStarting"


def test_rayservice_ready_replicas_by_gpu_type() -> None:
    obj = {
        "metadata": {"namespace": "team-a"},
        "status": {"serviceStatus": "Running", "numServeEndpoints": 2},
    }
    seen = observe_rayservice(obj, SERVICE)
    assert seen.state is WorkloadState.RUNNING
    assert seen.ready_replicas == {"L4": 2, "H100": 0}
    assert seen.endpoint == "http://pool-serve-serve-svc.team-a.svc:8000/v1"
    pending = observe_rayservice({"metadata": {"namespace": "x"}, "status": {}}, SERVICE)
    assert pending.state is WorkloadState.PENDING


def test_local_backend_says_which_runtime_is_missing() -> None:
    fusion = Workload("job-fusion", WorkloadKind.JOB, "modelfleet.fusion.runtime", {}, ())
    seen = LocalBackend().observe(OWNER, fusion)
    assert (seen.state, seen.reason) == (WorkloadState.UNAVAILABLE, RUNTIME_NOT_AVAILABLE)
    assert "modelfleet.fusion.runtime" in seen.message
    assert runtime_available("json") and not runtime_available("no.such.module")
    present = Workload("x", WorkloadKind.JOB, "json", {}, ())
    assert LocalBackend().observe(OWNER, present).reason == "LocalRunNotSupported"


def test_model_credentials_claims_and_api_keys_reach_every_ray_pod() -> None:
    from modelfleet.api.modelpool import ModelPoolSpec
    from modelfleet.serving.plan import plan_modelpool

    spec = ModelPoolSpec.model_validate(
        {
            "models": [
                {"name": "a", "uri": "s3://models/a", "credentialsSecret": "s3-creds"},
                {
                    "name": "b",
                    "uri": "pvc://team-models/llama",
                    "adapters": [{"name": "b-sql", "uri": "pvc://adapters/sql"}],
                },
            ],
            "auth": {"mode": "ApiKey", "secretName": "pool-keys"},
        }
    )
    workload = plan_modelpool("pool", spec)
    assert isinstance(workload, Workload)
    obj = render(OWNER, workload, "img:1")
    pods = [template["spec"] for template in templates(obj)]
    assert len(pods) == 1 + len(workload.worker_groups)
    for pod in pods:
        container = pod["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        claims = {
            v["name"]: v["persistentVolumeClaim"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert sorted(c["claimName"] for c in claims.values()) == ["adapters", "team-models"]
        assert all(c["readOnly"] for c in claims.values())
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert set(mounts) == {"/mnt/pvc/adapters", "/mnt/pvc/team-models", API_KEYS_MOUNT}
        assert all(m["readOnly"] for m in mounts.values())
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert set(volumes) == {m["name"] for m in mounts.values()}
        # Root-owned files of the fsGroup's group, mode 0440: the non-root Ray user reads them.
        keys = volumes[mounts[API_KEYS_MOUNT]["name"]]["secret"]
        assert keys == {"secretName": "pool-keys", "defaultMode": 0o440}
        group = pod["securityContext"]["fsGroup"]
        assert re.search(rf"^USER \d+:{group}$", RUNTIME_DOCKERFILE.read_text(), re.MULTILINE)
    serve = yaml.safe_load(obj["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"][API_KEYS_ARG] == API_KEYS_MOUNT


def test_api_keys_never_become_environment() -> None:
    """Environment variables leak into logs, crash dumps and `kubectl describe`; the keys
    are files the app reloads on rotation."""
    for template in templates(render(OWNER, KEYED, "img:1")):
        for container in template["spec"]["containers"]:
            refs = json.dumps([container.get("env"), container.get("envFrom")])
            assert "pool-keys" not in refs


def test_no_api_keys_mounts_nothing_and_leaves_the_args_alone() -> None:
    obj = render(OWNER, SERVICE, "img:1")
    for template in templates(obj):
        assert "volumes" not in template["spec"]
        assert "volumeMounts" not in template["spec"]["containers"][0]
    (app,) = yaml.safe_load(obj["spec"]["serveConfigV2"])["applications"]
    assert API_KEYS_ARG not in app["args"]


@pytest.mark.parametrize("workload", [JOB, SERVICE, KEYED], ids=lambda w: w.name)
def test_every_ray_pod_is_labelled_and_restricted(workload: Workload) -> None:
    """Namespaces enforcing the restricted Pod Security Standard admit the Ray pods, and
    the workload's NetworkPolicy selects every one of them by its label."""
    obj = render(OWNER, workload, "img:1")
    submitter = workload.kind is WorkloadKind.JOB
    assert len(templates(obj)) == 1 + len(workload.worker_groups) + submitter
    for template in templates(obj):
        assert template["metadata"]["labels"] == {WORKLOAD_LABEL: workload.name}
        assert restricted_violations(template["spec"]) == []


def test_ray_token_auth_is_on_unless_turned_off() -> None:
    for workload, cluster in ((JOB, "rayClusterSpec"), (SERVICE, "rayClusterConfig")):
        on = render(OWNER, workload, "img:1")["spec"][cluster]
        assert on["authOptions"] == {"mode": "token"}
        assert (
            "authOptions" not in render(OWNER, workload, "img:1", token_auth=False)["spec"][cluster]
        )
    # The Ray dashboard stays inside the cluster: a ClusterIP head Service, no ingress.
    head = render(OWNER, SERVICE, "img:1")["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and "enableIngress" not in head


def _namespaces(peer: dict[str, Any]) -> list[str]:
    (expression,) = peer["namespaceSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("kubernetes.io/metadata.name", "In")
    return list(expression["values"])


def test_network_policy_guards_the_serve_and_dashboard_ports() -> None:
    policy = render_network_policy(OWNER, KEYED, ["gateway", "team-a"], "ray-operators")
    assert (policy["kind"], policy["metadata"]["name"]) == ("NetworkPolicy", KEYED.name)
    assert policy["metadata"]["namespace"] == OWNER.namespace
    assert policy["metadata"]["ownerReferences"] == [OWNER.reference()]
    spec = policy["spec"]
    pods = {"matchLabels": {WORKLOAD_LABEL: KEYED.name}}
    assert spec["podSelector"] == pods and spec["policyTypes"] == ["Ingress"]
    peers, serve, dashboard = spec["ingress"]
    assert peers == {"from": [{"podSelector": pods}]}  # every port: Ray's own traffic
    assert serve["ports"] == [{"port": 8000, "protocol": "TCP"}]
    (serve_from,) = serve["from"]
    assert _namespaces(serve_from) == ["gateway", "team-a"]  # the own namespace, once
    assert {p["port"] for p in dashboard["ports"]} == {8265, 52365}
    (kuberay,) = dashboard["from"]
    assert _namespaces(kuberay) == ["ray-operators"]
    alone = render_network_policy(OWNER, KEYED, [], "kuberay-system")["spec"]["ingress"][1]
    assert _namespaces(alone["from"][0]) == [OWNER.namespace]


def _pool(replicas: int, gpu_types: list[dict[str, Any]]) -> Workload:
    from modelfleet.api.modelpool import ModelPoolSpec
    from modelfleet.serving.plan import plan_modelpool

    spec = ModelPoolSpec.model_validate(
        {
            "models": [{"name": "m", "uri": "builtin://m"}],
            "replicas": replicas,
            "gpuTypes": gpu_types,
            "auth": {"mode": "None"},
        }
    )
    workload = plan_modelpool("pool", spec)
    assert isinstance(workload, Workload)
    return workload


def test_scaling_a_pool_changes_only_replica_counts_so_kuberay_keeps_its_cluster() -> None:
    """KubeRay starts a new RayCluster for any change of a RayService's cluster spec but its
    replica counts (and appended groups); scaling across GPU types must stay within that."""
    offers = [
        {"gpuType": "cpu", "pricePerHour": "0.10", "available": 2},
        {"gpuType": "L4", "pricePerHour": "1", "available": 4},
        {"gpuType": "A100-80GB", "pricePerHour": "4", "available": 4},
    ]
    clusters = {
        replicas: render(OWNER, _pool(replicas, offers), "img:1")["spec"]["rayClusterConfig"]
        for replicas in (0, 1, 2, 5, 10)
    }
    assert [g["replicas"] for g in clusters[5]["workerGroupSpecs"]] == [2, 3, 0]
    for old in clusters.values():
        for new in clusters.values():
            assert cluster_change(old, new) is ClusterChange.NONE
    image = render(OWNER, _pool(2, offers), "img:2")["spec"]["rayClusterConfig"]
    assert cluster_change(clusters[2], image) is ClusterChange.NEW_CLUSTER
    more = _pool(2, [*offers, {"gpuType": "H100", "pricePerHour": "9", "available": 1}])
    grown = render(OWNER, more, "img:1")["spec"]["rayClusterConfig"]
    assert cluster_change(clusters[2], grown) is ClusterChange.IN_PLACE
    assert cluster_change(grown, clusters[2]) is ClusterChange.NEW_CLUSTER


def test_the_servers_defaults_in_a_stored_cluster_are_not_a_change() -> None:
    """Read back, a RayService carries what KubeRay's schema defaults add; KubeRay compares
    two stored specs, so those defaults must not predict a new cluster."""
    offers = [{"gpuType": "cpu", "pricePerHour": "0.10", "available": 4}]
    rendered = render(OWNER, _pool(2, offers), "img:1")["spec"]["rayClusterConfig"]
    stored = copy.deepcopy(rendered)
    for group in stored["workerGroupSpecs"]:
        group.update(numOfHosts=1, priority=0)
    stored["headGroupSpec"]["serviceType"] = "ClusterIP"
    scaled = render(OWNER, _pool(3, offers), "img:1")["spec"]["rayClusterConfig"]
    assert cluster_change(stored, scaled) is ClusterChange.NONE
    image = render(OWNER, _pool(2, offers), "img:2")["spec"]["rayClusterConfig"]
    assert cluster_change(stored, image) is ClusterChange.NEW_CLUSTER
    assert rendered_part(stored, rendered) == rendered


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
USER_TOLERATIONS = [
    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 120},
]


def _required_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    terms: list[dict[str, Any]] = pod["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    return terms


def test_pod_overrides_reach_every_pod_and_keep_the_gpu_placement() -> None:
    obj = render(OWNER, replace(JOB, pod=every_override()), "img:1")
    head, gpu, cpu, submitter = (template["spec"] for template in templates(obj))
    for pod in (head, gpu, cpu, submitter):
        assert pod["serviceAccountName"] == "ray-runner"
        assert pod["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
        assert pod["affinity"]["podAntiAffinity"] == ANTI_AFFINITY
        assert pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert gpu["tolerations"] == [GPU_TOLERATION, *USER_TOLERATIONS]
    for pod in (head, cpu, submitter):
        assert pod["tolerations"] == USER_TOLERATIONS
        assert _required_terms(pod) == [
            {"matchExpressions": [USER_NODE_EXPRESSION]},
            {"matchExpressions": [ZONE_EXPRESSION]},
        ]
    # Node selector terms are ORed: each of the spec's terms must still require the GPU.
    (gpu_expression,) = _required_terms({"affinity": gpu_affinity("L4", {})})[0]["matchExpressions"]
    assert _required_terms(gpu) == [
        {"matchExpressions": [USER_NODE_EXPRESSION, gpu_expression]},
        {"matchExpressions": [ZONE_EXPRESSION, gpu_expression]},
    ]
    assert gpu["nodeSelector"] == {"modelfleet.io/site": "eu"}


def test_pod_resources_override_only_cpu_and_memory_of_the_ray_containers() -> None:
    obj = render(OWNER, replace(JOB, pod=every_override()), "img:1")
    head, gpu, cpu, submitter = (template["spec"]["containers"][0] for template in templates(obj))
    own = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}}
    assert head["resources"] == own == cpu["resources"]
    assert gpu["resources"] == {
        "requests": own["requests"],
        "limits": {**own["limits"], "nvidia.com/gpu": 1},
    }
    assert submitter["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"}}


def test_a_limit_without_its_request_drops_the_default_request() -> None:
    """The default request (1 cpu) may exceed the limit set (500m), which Kubernetes
    refuses; without a request of its own the container requests its limit."""
    pod = PodOverrides.model_validate({"resources": {"limits": {"cpu": "500m"}}})
    obj = render(OWNER, replace(JOB, pod=pod), "img:1")
    head, gpu = (template["spec"]["containers"][0] for template in templates(obj)[:2])
    assert head["resources"] == {"requests": {"memory": "2Gi"}, "limits": {"cpu": "500m"}}
    assert gpu["resources"]["limits"] == {"cpu": "500m", "nvidia.com/gpu": 1}


def test_credentials_secret_joins_the_ray_containers_environment() -> None:
    pod = PodOverrides.model_validate({"credentialsSecret": "hub-creds"})
    workload = replace(JOB, credential_secrets=("s3-creds",), pod=pod)
    *ray, submitter = templates(render(OWNER, workload, "img:1"))
    for template in ray:
        assert template["spec"]["containers"][0]["envFrom"] == [
            {"secretRef": {"name": "s3-creds"}},
            {"secretRef": {"name": "hub-creds"}},
        ]
    assert "envFrom" not in submitter["spec"]["containers"][0]
    same = replace(workload, pod=PodOverrides.model_validate({"credentialsSecret": "s3-creds"}))
    for template in templates(render(OWNER, same, "img:1"))[:-1]:
        assert template["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_empty_pod_overrides_change_nothing_so_running_clusters_are_kept() -> None:
    """An upgrade that adds ``pod: {}`` must not roll the Ray pods."""
    for workload in (JOB, SERVICE):
        assert render(OWNER, replace(workload, pod=PodOverrides()), "img:1") == render(
            OWNER, workload, "img:1"
        )


def test_the_local_backend_warns_that_it_ignores_pod_overrides() -> None:
    overridden = replace(JOB, pod=every_override())
    events = apply_events(ApplyResult.CREATED, overridden, "local")
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "WorkloadCreated"),
        ("Warning", EventReason.POD_OVERRIDES_IGNORED),
    ]
    assert "kuberay backend only" in events[1].message
    assert len(apply_events(ApplyResult.CREATED, overridden, "kuberay")) == 1
    assert len(apply_events(ApplyResult.CREATED, JOB, "local")) == 1
    assert apply_events(ApplyResult.UNCHANGED, overridden, "local") == []
