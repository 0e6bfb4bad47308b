"""KubeRay rendering and status mapping: pure functions, no API server."""

from __future__ import annotations

import yaml

from modelfleet.backends.base import Owner
from modelfleet.backends.kuberay import (
    HASH_ANNOTATION,
    observe_rayjob,
    observe_rayservice,
    render,
)
from modelfleet.backends.local import RUNTIME_NOT_AVAILABLE, LocalBackend, runtime_available
from modelfleet.core.workload import (
    GPU_PRODUCT_LABEL,
    WorkerGroup,
    Workload,
    WorkloadKind,
    WorkloadState,
)

OWNER = Owner("modelfleet.io/v1alpha1", "FedJob", "job", "team-a", "uid-1")
JOB = Workload(
    "job-fed",
    WorkloadKind.JOB,
    "modelfleet.federated.runtime",
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


def test_rayjob_is_owned_labelled_and_placed() -> None:
    obj = render(OWNER, JOB, "img:1")
    assert (obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]) == (
        "RayJob",
        "job-fed",
        "team-a",
    )
    assert obj["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert obj["metadata"]["ownerReferences"][0]["controller"] is True
    assert obj["spec"]["entrypoint"] == "python -m modelfleet.federated.runtime"
    workers = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers[0]["template"]["spec"]["nodeSelector"] == {
        "modelfleet.io/site": "eu",
        GPU_PRODUCT_LABEL: "L4",
    }
    assert workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": 1
    }
    assert "nodeSelector" not in workers[1]["template"]["spec"]
    assert workers[1]["replicas"] == 1


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
    seen = LocalBackend().observe(OWNER, JOB)
    assert (seen.state, seen.reason) == (WorkloadState.UNAVAILABLE, RUNTIME_NOT_AVAILABLE)
    assert "modelfleet.federated.runtime" in seen.message
    assert runtime_available("json") and not runtime_available("no.such.module")
    present = Workload("x", WorkloadKind.JOB, "json", {}, ())
    assert LocalBackend().observe(OWNER, present).reason == "LocalRunNotSupported"


def test_model_credentials_and_claims_reach_every_ray_pod() -> None:
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
            ]
        }
    )
    workload = plan_modelpool("pool", spec)
    assert isinstance(workload, Workload)
    cluster = render(OWNER, workload, "img:1")["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        container = pod["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"]}
        assert sorted(c["claimName"] for c in claims.values()) == ["adapters", "team-models"]
        assert all(c["readOnly"] for c in claims.values())
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert set(mounts) == {"/mnt/pvc/adapters", "/mnt/pvc/team-models"}
        assert all(m["readOnly"] and m["name"] in claims for m in mounts.values())
