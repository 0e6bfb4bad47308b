"""Workload states read from RayJob and RayService status shaped as KubeRay v1.7 writes it.

Every status here is valid against the status schema of KubeRay's real CRDs (checked below,
closed as in test_kuberay_crds), so a field KubeRay does not write cannot slip in.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from modelfleet.backends.kuberay import observe_rayjob, observe_rayservice
from modelfleet.core.workload import Observation, WorkloadState
from tests.kuberay_crds import (
    ENDPOINTS_UP,
    KUBERAY_CRDS,
    NOT_FOUND,
    RUNNING_APP,
    SERVICE,
    closed,
    crd_schema,
    deploy_failed,
    failed_app,
    rayservice_status,
    serving,
)
from tests.kuberay_crds import kuberay_condition as condition

pytestmark = pytest.mark.skipif(not KUBERAY_CRDS.is_dir(), reason=NOT_FOUND)
APP = SERVICE.name
CLUSTER_PODS_FAIL = {
    "conditions": [
        condition(
            "ReplicaFailure",
            "True",
            "FailedCreateWorkerPod",
            'pods "pool-serve-raycluster-a-g0-l4" is forbidden: exceeded quota',
        ),
        condition("HeadPodReady", "False", "HeadPodNotFound", "Head Pod not found"),
    ],
}
INITIALIZING = "RayService is initializing"
UPGRADING = "Both active and pending Ray clusters exist"
DEPLOY_ERROR = "Deploying app 'pool-serve' failed with exception: ModuleNotFoundError: vllm"
JOBS: dict[str, tuple[dict[str, Any], WorkloadState, str, str]] = {
    "new": ({}, WorkloadState.PENDING, "RayJobStarting", "jobDeploymentStatus=unset"),
    "initializing": (
        {"jobDeploymentStatus": "Initializing", "rayClusterName": "job-fed-x"},
        WorkloadState.PENDING,
        "RayJobStarting",
        "jobDeploymentStatus=Initializing, jobStatus=unset",
    ),
    "pods cannot be created": (
        {"jobDeploymentStatus": "Initializing", "rayClusterStatus": CLUSTER_PODS_FAIL},
        WorkloadState.PENDING,
        "RayJobStarting",
        "its RayCluster cannot create pods (FailedCreateWorkerPod): pods ",
    ),
    "submitted, pending": (
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING", "jobId": "job-fed-abc"},
        WorkloadState.PENDING,
        "RayJobStarting",
        "jobStatus=PENDING",
    ),
    "running": (
        {
            "jobDeploymentStatus": "Running",
            "jobStatus": "RUNNING",
            "jobId": "job-fed-abc",
            "dashboardURL": "job-fed-x-head-svc.team-a.svc.cluster.local:8265",
            "startTime": "2025-06-01T10:00:00Z",
            "rayClusterStatus": {"state": "ready", "readyWorkerReplicas": 3},
        },
        WorkloadState.RUNNING,
        "Running",
        "running",
    ),
    "succeeded": (
        {
            "jobDeploymentStatus": "Complete",
            "jobStatus": "SUCCEEDED",
            "message": "Job finished successfully.",
            "succeeded": 1,
            "failed": 0,
            "endTime": "2025-06-01T11:00:00Z",
        },
        WorkloadState.SUCCEEDED,
        "Succeeded",
        "Job finished successfully.",
    ),
    "application failed": (
        {
            "jobDeploymentStatus": "Failed",
            "jobStatus": "FAILED",
            "reason": "AppFailed",
            "message": "Job entrypoint command failed with exit code 1",
            "succeeded": 0,
            "failed": 1,
        },
        WorkloadState.FAILED,
        "RayJobFailed",
        "the RayJob failed (AppFailed): Job entrypoint command failed with exit code 1",
    ),
    "failed, KubeRay retries": (
        {
            "jobDeploymentStatus": "Retrying",
            "jobStatus": "FAILED",
            "message": "Job entrypoint command failed with exit code 1",
            "failed": 1,
        },
        WorkloadState.PENDING,
        "RayJobStarting",
        "jobDeploymentStatus=Retrying, jobStatus=FAILED: Job entrypoint",
    ),
    "deadline exceeded": (
        {
            "jobDeploymentStatus": "Failed",
            "jobStatus": "RUNNING",
            "reason": "DeadlineExceeded",
            "message": "The RayJob has passed the activeDeadlineSeconds.",
        },
        WorkloadState.FAILED,
        "RayJobFailed",
        "(DeadlineExceeded): The RayJob has passed",
    ),
    "invalid spec": (
        {
            "jobDeploymentStatus": "ValidationFailed",
            "reason": "ValidationFailed",
            "message": "The RayJob spec is invalid: entrypoint is required",
        },
        WorkloadState.FAILED,
        "RayJobFailed",
        "(ValidationFailed): The RayJob spec is invalid",
    ),
    "stopped": (
        {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"},
        WorkloadState.FAILED,
        "RayJobFailed",
        "(jobStatus=STOPPED): the Ray job was stopped",
    ),
}
SERVICES: dict[str, tuple[dict[str, Any], WorkloadState, str, str]] = {
    "initializing": (
        rayservice_status([condition("Ready", "False", "Initializing", INITIALIZING)]),
        WorkloadState.PENDING,
        "RayServiceStarting",
        f"Ready=False (Initializing: {INITIALIZING})",
    ),
    "deploying": (
        rayservice_status(
            [condition("Ready", "False", "ZeroServeEndpoints", "no Serve endpoints")],
            active_app={"status": "DEPLOYING", "serveDeploymentStatuses": {}},
        ),
        WorkloadState.PENDING,
        "RayServiceStarting",
        "application pool-serve is DEPLOYING",
    ),
    "pods cannot be created": (
        rayservice_status(
            [condition("Ready", "False", "Initializing", INITIALIZING)],
            active_cluster=CLUSTER_PODS_FAIL,
        ),
        WorkloadState.PENDING,
        "RayServiceStarting",
        "cannot create pods (FailedCreateWorkerPod)",
    ),
    "deploy failed": (
        deploy_failed(APP, DEPLOY_ERROR),
        WorkloadState.FAILED,
        "ServeDeployFailed",
        "Ray Serve could not deploy application pool-serve: Deploying app 'pool-serve' failed",
    ),
    "serving": (
        serving(APP, 2),
        WorkloadState.RUNNING,
        "Serving",
        "2 replica(s) serving",
    ),
    "serving, an upgrade failing": (
        rayservice_status(
            [
                condition("Ready", "True", "NonZeroServeEndpoints", ENDPOINTS_UP),
                condition("UpgradeInProgress", "True", "BothActivePendingClustersExist", UPGRADING),
            ],
            endpoints=1,
            active_app=RUNNING_APP,
            pending_app=failed_app(DEPLOY_ERROR),
        ),
        WorkloadState.RUNNING,
        "Serving",
        "moving to a new RayCluster; application pool-serve is DEPLOY_FAILED: Deploying",
    ),
    "serving, unhealthy": (
        rayservice_status(
            [condition("Ready", "True", "NonZeroServeEndpoints", ENDPOINTS_UP)],
            endpoints=1,
            active_app={"status": "UNHEALTHY", "message": "replica died"},
        ),
        WorkloadState.RUNNING,
        "Serving",
        "1 replica(s) serving; application pool-serve is UNHEALTHY: replica died",
    ),
}


def assert_observed(seen: Observation, state: WorkloadState, reason: str, message: str) -> None:
    assert (seen.state, seen.reason) == (state, reason), seen.message
    assert message in seen.message


def status_errors(plural: str, status: dict[str, Any]) -> list[str]:
    """Where ``status`` has a field KubeRay's status schema does not declare."""
    schema = closed(crd_schema(plural)["properties"]["status"])
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(status)]


@pytest.mark.parametrize(("status", "state", "reason", "message"), JOBS.values(), ids=JOBS)
def test_rayjob_status(
    status: dict[str, Any], state: WorkloadState, reason: str, message: str
) -> None:
    assert status_errors("rayjobs", status) == []
    assert_observed(observe_rayjob({"status": status}), state, reason, message)


@pytest.mark.parametrize(("status", "state", "reason", "message"), SERVICES.values(), ids=SERVICES)
def test_rayservice_status(
    status: dict[str, Any], state: WorkloadState, reason: str, message: str
) -> None:
    assert status_errors("rayservices", status) == []
    obj = {"metadata": {"namespace": "team-a"}, "status": status}
    assert_observed(observe_rayservice(obj, SERVICE), state, reason, message)


def test_a_serving_rayservice_reports_replicas_by_gpu_type_and_its_endpoint() -> None:
    obj = {"metadata": {"namespace": "team-a"}, "status": SERVICES["serving"][0]}
    seen = observe_rayservice(obj, SERVICE)
    assert seen.ready_replicas == {"L4": 2, "cpu": 0}
    assert seen.endpoint == "http://pool-serve-serve-svc.team-a.svc:8000/v1"


def test_the_ready_condition_outranks_a_stale_service_status() -> None:
    """KubeRay keeps serviceStatus in step with Ready; where they differ, Ready decides."""
    status = {**SERVICES["initializing"][0], "serviceStatus": "Running"}
    seen = observe_rayservice({"metadata": {"namespace": "team-a"}, "status": status}, SERVICE)
    assert seen.state is WorkloadState.PENDING


def test_the_status_schema_catches_a_field_kuberay_does_not_write() -> None:
    status = rayservice_status([], active_app={"status": "RUNNING", "deployments": {}})
    assert status_errors("rayservices", status) != []
