"""Run workloads as KubeRay objects: a RayJob for jobs, a RayService for services.

Rendering is pure (``render_*``); ``KubeRayBackend`` applies the rendering with
deterministic names, owner references and a spec hash, so repeating it after a
crash at any point converges to one child with the current spec.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, cast

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelfleet.artifacts.uri import PVC_MOUNT_ROOT
from modelfleet.backends.base import Owner, spec_hash
from modelfleet.core.ttl import Ttl
from modelfleet.core.workload import (
    ApplyResult,
    Observation,
    WorkerGroup,
    Workload,
    WorkloadKind,
    WorkloadState,
    distribute_ready,
)
from modelfleet.scheduling.inventory import Inventory, read_inventory

GROUP, VERSION = "ray.io", "v1"
PLURALS = {WorkloadKind.JOB: "rayjobs", WorkloadKind.SERVICE: "rayservices"}
KINDS = {WorkloadKind.JOB: "RayJob", WorkloadKind.SERVICE: "RayService"}
HASH_ANNOTATION = "modelfleet.io/spec-hash"
SERVE_PORT = 8000
KUBERAY_NOT_INSTALLED = "KubeRayNotInstalled"


def _container(name: str, image: str, gpus: int, workload: Workload) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": gpus}
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": resources,
        "env": [
            {
                "name": "MODELFLEET_WORKLOAD_CONFIG",
                "value": json.dumps(workload.config, sort_keys=True),
            }
        ],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    if workload.credential_secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in workload.credential_secrets]
    if workload.claims:
        container["volumeMounts"] = [
            {
                "name": _volume_name(claim),
                "mountPath": f"{PVC_MOUNT_ROOT}/{claim}",
                "readOnly": True,
            }
            for claim in workload.claims
        ]
    return container


def _volume_name(claim: str) -> str:
    """A pod volume name for a claim; claim names are DNS subdomains, volumes labels."""
    return f"pvc-{spec_hash({'claim': claim})[:12]}"


def _pod(container: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """A pod spec around ``container`` with the workload's claims as read-only volumes."""
    pod: dict[str, Any] = {"containers": [container]}
    if workload.claims:
        pod["volumes"] = [
            {
                "name": _volume_name(claim),
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
            for claim in workload.claims
        ]
    return pod


def _worker_group(group: WorkerGroup, image: str, workload: Workload) -> dict[str, Any]:
    selector = dict(group.node_selector)
    pod = _pod(_container("ray-worker", image, group.gpus_per_worker, workload), workload)
    if selector:
        pod["nodeSelector"] = selector
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        "rayStartParams": {},
        "template": {"spec": pod},
    }


def render_cluster_spec(workload: Workload, image: str) -> dict[str, Any]:
    """The RayCluster spec both RayJob and RayService embed."""
    return {
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {"spec": _pod(_container("ray-head", image, 0, workload), workload)},
        },
        "workerGroupSpecs": [_worker_group(g, image, workload) for g in workload.worker_groups],
    }


def render_spec(workload: Workload, image: str) -> dict[str, Any]:
    """The child's spec: what the spec hash covers."""
    cluster = render_cluster_spec(workload, image)
    if workload.kind is WorkloadKind.JOB:
        return {
            "entrypoint": f"python -m {workload.entrypoint}",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": cluster,
        }
    serve = {
        "applications": [
            {
                "name": workload.name,
                "import_path": f"{workload.entrypoint}:build",
                "route_prefix": "/",
                "args": {**workload.config, **workload.restore},
            }
        ]
    }
    return {"serveConfigV2": yaml.safe_dump(serve, sort_keys=True), "rayClusterConfig": cluster}


def render(owner: Owner, workload: Workload, image: str) -> dict[str, Any]:
    """The whole child object, labelled and owned by the custom resource. The spec hash
    leaves out the workload's ``restore`` state, so state changes alone update nothing."""
    spec = render_spec(workload, image)
    unrestored = render_spec(replace(workload, restore={}), image)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KINDS[workload.kind],
        "metadata": {
            "name": workload.name,
            "namespace": owner.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "modelfleet",
                "modelfleet.io/owner-kind": owner.kind.lower(),
                "modelfleet.io/owner-name": owner.name,
            },
            "annotations": {HASH_ANNOTATION: spec_hash(unrestored)},
            "ownerReferences": [owner.reference()],
        },
        "spec": spec,
    }


def observe_rayjob(obj: dict[str, Any]) -> Observation:
    """Map a RayJob's status (jobDeploymentStatus, jobStatus) onto a workload state."""
    status = obj.get("status") or {}
    deployment = status.get("jobDeploymentStatus", "")
    job = status.get("jobStatus", "")
    message = status.get("message", "")
    if job == "SUCCEEDED" or (deployment == "Complete" and job not in ("FAILED", "STOPPED")):
        return Observation(WorkloadState.SUCCEEDED, "Succeeded", message or "the job finished")
    if deployment == "Failed" or job in ("FAILED", "STOPPED"):
        return Observation(WorkloadState.FAILED, "RayJobFailed", message or f"jobStatus={job}")
    if deployment == "Running" and job == "RUNNING":
        return Observation(WorkloadState.RUNNING, "Running", "the Ray job is running")
    return Observation(
        WorkloadState.PENDING,
        "RayJobStarting",
        f"waiting for the RayJob: jobDeploymentStatus={deployment or 'unset'}, "
        f"jobStatus={job or 'unset'}",
    )


def observe_rayservice(obj: dict[str, Any], workload: Workload) -> Observation:
    """Map a RayService's status onto a workload state with ready replicas by GPU type."""
    status = obj.get("status") or {}
    ready_condition = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    if not (ready_condition or status.get("serviceStatus") == "Running"):
        return Observation(
            WorkloadState.PENDING,
            "RayServiceStarting",
            f"waiting for the RayService: serviceStatus={status.get('serviceStatus') or 'unset'}",
        )
    ready = distribute_ready(workload.worker_groups, int(status.get("numServeEndpoints", 0)))
    namespace = obj["metadata"]["namespace"]
    return Observation(
        WorkloadState.RUNNING,
        "Serving",
        f"{sum(ready.values())} replica(s) serving",
        ready_replicas=ready,
        endpoint=f"http://{workload.name}-serve-svc.{namespace}.svc:{SERVE_PORT}/v1",
    )


class KubeRayBackend:
    """Applies rendered KubeRay objects through the Kubernetes API."""

    name = "kuberay"

    def __init__(self, api: client.ApiClient, image: str, cache_seconds: float = 5.0) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._apis = client.ApisApi(api)
        self._image = image
        self._inventory = Ttl(self._read_inventory, cache_seconds)
        self._installed = Ttl(self._read_installed, cache_seconds)

    def inventory(self) -> Inventory:
        """The cluster's GPU nodes, read from their labels (see modelfleet.scheduling.inventory)."""
        return self._inventory.get()

    def release(self, owner: Owner, workload_name: str) -> None:
        """Children carry owner references, so Kubernetes' garbage collector deletes them."""

    def installed(self) -> bool:
        """Whether the API server serves ray.io/v1 (the KubeRay CRDs)."""
        return self._installed.get()

    def _read_inventory(self) -> Inventory:
        response: Any = self._core.list_node(_preload_content=False)
        return read_inventory(json.loads(response.data)["items"])

    def _read_installed(self) -> bool:
        groups = self._apis.get_api_versions().groups or []
        return any(
            g.name == GROUP and any(v.version == VERSION for v in g.versions) for g in groups
        )

    def _get(self, owner: Owner, workload: Workload) -> dict[str, Any] | None:
        try:
            obj = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, owner.namespace, PLURALS[workload.kind], workload.name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], obj)

    def apply(self, owner: Owner, workload: Workload) -> ApplyResult:
        if not self.installed():
            return ApplyResult.SKIPPED
        desired = render(owner, workload, self._image)
        plural = PLURALS[workload.kind]
        current = self._get(owner, workload)
        if current is None:
            try:
                self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, owner.namespace, plural, desired
                )
            except ApiException as error:
                if error.status != 409:
                    raise
                return ApplyResult.UNCHANGED
            return ApplyResult.CREATED
        annotations = current["metadata"].get("annotations") or {}
        if annotations.get(HASH_ANNOTATION) == desired["metadata"]["annotations"][HASH_ANNOTATION]:
            return ApplyResult.UNCHANGED
        current["spec"] = desired["spec"]
        current["metadata"]["annotations"] = {**annotations, **desired["metadata"]["annotations"]}
        self._custom.replace_namespaced_custom_object(
            GROUP, VERSION, owner.namespace, plural, workload.name, current
        )
        return ApplyResult.UPDATED

    def observe(self, owner: Owner, workload: Workload) -> Observation:
        if not self.installed():
            return Observation(
                WorkloadState.UNAVAILABLE,
                KUBERAY_NOT_INSTALLED,
                f"the API server does not serve {GROUP}/{VERSION} "
                f"{KINDS[workload.kind]}; install the KubeRay operator, or run modelfleet "
                f"with --backend=local",
            )
        current = self._get(owner, workload)
        if current is None:
            return Observation(
                WorkloadState.MISSING, "Creating", f"{KINDS[workload.kind]} not created yet"
            )
        if workload.kind is WorkloadKind.JOB:
            return observe_rayjob(current)
        return observe_rayservice(current, workload)
