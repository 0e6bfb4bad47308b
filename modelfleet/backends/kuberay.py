"""Run workloads as KubeRay objects: a RayJob for jobs, a RayService for services.

Rendering is pure (``render_*``); ``KubeRayBackend`` applies the rendering with
deterministic names, owner references and a spec hash, so repeating it after a
crash at any point converges to one child with the current spec.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any, cast

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelfleet.artifacts.uri import PVC_MOUNT_ROOT
from modelfleet.backends.base import Owner, spec_hash
from modelfleet.core.ttl import Ttl
from modelfleet.core.workload import (
    API_KEYS_ARG,
    API_KEYS_MOUNT,
    GPU_PRODUCT_LABEL,
    ApplyResult,
    Observation,
    WorkerGroup,
    Workload,
    WorkloadKind,
    WorkloadState,
    distribute_ready,
)
from modelfleet.scheduling.inventory import Inventory, canonical_product, read_inventory

log = logging.getLogger(__name__)
GROUP, VERSION = "ray.io", "v1"
PLURALS = {WorkloadKind.JOB: "rayjobs", WorkloadKind.SERVICE: "rayservices"}
KINDS = {WorkloadKind.JOB: "RayJob", WorkloadKind.SERVICE: "RayService"}
HASH_ANNOTATION = "modelfleet.io/spec-hash"
SERVE_PORT = 8000
DASHBOARD_PORTS = (8265, 52365)
"""The Ray dashboard and the dashboard agent, which KubeRay calls to submit and poll."""
KUBERAY_NAMESPACE = "kuberay-system"
"""Where the KubeRay operator runs unless told otherwise (its Helm chart's usual namespace)."""
KUBERAY_NOT_INSTALLED = "KubeRayNotInstalled"
NAME_CONFLICT = "NameConflict"
WORKLOAD_LABEL = "modelfleet.io/workload"
"""On every Ray pod template: the workload's name, which its NetworkPolicy selects."""
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
API_KEYS_VOLUME = "api-keys"
RAY_GROUP = 100
"""The group of the runtime image's user (1000:100, as in rayproject/ray)."""


def _pod_security() -> dict[str, Any]:
    """A Ray pod's part of the restricted Pod Security Standard (see
    modelfleet.core.pod_security); the fsGroup lets the Ray user read mounted Secrets."""
    return {
        "runAsNonRoot": True,
        "fsGroup": RAY_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    """A Ray container's part of the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _container(name: str, image: str, gpus: int, workload: Workload) -> dict[str, Any]:
    """A Ray container. A job's config is in its environment; a service's travels only in
    its serveConfigV2, which KubeRay applies to the running cluster: in the pods it would
    change the pod template on every scale, and KubeRay would start a new RayCluster."""
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": gpus}
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": resources,
        "securityContext": _container_security(),
    }
    if workload.kind is WorkloadKind.JOB:
        config = json.dumps(workload.config, sort_keys=True)
        container["env"] = [{"name": "MODELFLEET_WORKLOAD_CONFIG", "value": config}]
    if workload.credential_secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in workload.credential_secrets]
    mounts = [
        {
            "name": _volume_name(claim),
            "mountPath": f"{PVC_MOUNT_ROOT}/{claim}",
            "readOnly": True,
        }
        for claim in workload.claims
    ]
    if workload.api_keys_secret:
        mounts.append({"name": API_KEYS_VOLUME, "mountPath": API_KEYS_MOUNT, "readOnly": True})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _volume_name(claim: str) -> str:
    """A pod volume name for a claim; claim names are DNS subdomains, volumes labels."""
    return f"pvc-{spec_hash({'claim': claim})[:12]}"


def _pod(container: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """A pod spec around ``container`` with the workload's claims as read-only volumes and
    its API keys Secret, under the restricted Pod Security Standard."""
    pod: dict[str, Any] = {"securityContext": _pod_security(), "containers": [container]}
    volumes: list[dict[str, Any]] = [
        {
            "name": _volume_name(claim),
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        for claim in workload.claims
    ]
    if workload.api_keys_secret:
        # Owned by root and the pod's fsGroup (the Ray user's group): readable by Ray only.
        volumes.append(
            {
                "name": API_KEYS_VOLUME,
                "secret": {"secretName": workload.api_keys_secret, "defaultMode": 0o440},
            }
        )
    if volumes:
        pod["volumes"] = volumes
    return pod


def _template(pod: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """A pod template labelled with its workload, the label NetworkPolicies select."""
    return {"metadata": {"labels": {WORKLOAD_LABEL: workload.name}}, "spec": pod}


GpuProducts = Mapping[str, tuple[str, ...]]
"""The ``nvidia.com/gpu.product`` values seen on the cluster's nodes, by GPU type."""
GPU_TAINT = "nvidia.com/gpu"
"""The taint GPU node pools commonly carry (GKE, EKS and AKS GPU pools, NVIDIA's docs)."""


def gpu_affinity(gpu_type: str, products: GpuProducts) -> dict[str, Any]:
    """A node affinity landing on ``gpu_type`` (a short name such as ``A100-80GB``): any node
    whose GPU feature discovery product string is that type, plus the name as written, for
    clusters that label nodes with short names."""
    values = sorted({gpu_type, *products.get(canonical_product(gpu_type), ())})
    term = {"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": values}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def _worker_group(
    group: WorkerGroup, image: str, workload: Workload, products: GpuProducts
) -> dict[str, Any]:
    """A worker group: the GPU type through a node affinity on the real product strings
    (a node selector would need the exact string), the other labels as a node selector,
    and a toleration of the GPU taint where the group uses GPUs."""
    selector = dict(group.node_selector)
    gpu_type = selector.pop(GPU_PRODUCT_LABEL, None)
    pod = _pod(_container("ray-worker", image, group.gpus_per_worker, workload), workload)
    if selector:
        pod["nodeSelector"] = selector
    if gpu_type is not None:
        pod["affinity"] = gpu_affinity(gpu_type, products)
    if group.gpus_per_worker:
        pod["tolerations"] = [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        "rayStartParams": {},
        "template": _template(pod, workload),
    }


def render_cluster_spec(
    workload: Workload, image: str, token_auth: bool, products: GpuProducts
) -> dict[str, Any]:
    """The RayCluster spec both RayJob and RayService embed. With ``token_auth`` KubeRay
    (1.5 or newer) generates a token Secret and Ray requires the token on its dashboard and
    GCS. The dashboard listens on the pod network for KubeRay and is reached only through
    the head's ClusterIP Service; nothing here exposes it further."""
    head = _pod(_container("ray-head", image, 0, workload), workload)
    cluster: dict[str, Any] = {
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "serviceType": "ClusterIP",
            "template": _template(head, workload),
        },
        "workerGroupSpecs": [
            _worker_group(g, image, workload, products) for g in workload.worker_groups
        ],
    }
    if token_auth:
        cluster["authOptions"] = {"mode": "token"}
    return cluster


def _submitter(image: str, workload: Workload) -> dict[str, Any]:
    """The RayJob's submitter pod (KubeRay fills in its command and environment), so it too
    meets the restricted Pod Security Standard."""
    container = {
        "name": "ray-job-submitter",
        "image": image,
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
        "securityContext": _container_security(),
    }
    pod = {"restartPolicy": "Never", "securityContext": _pod_security(), "containers": [container]}
    return _template(pod, workload)


def render_spec(
    workload: Workload, image: str, token_auth: bool = True, products: GpuProducts | None = None
) -> dict[str, Any]:
    """The child's spec: what the spec hash covers."""
    cluster = render_cluster_spec(workload, image, token_auth, products or {})
    if workload.kind is WorkloadKind.JOB:
        return {
            "entrypoint": f"python -m {workload.entrypoint}",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "submitterPodTemplate": _submitter(image, workload),
            "rayClusterSpec": cluster,
        }
    args = {**workload.config, **workload.restore}
    if workload.api_keys_secret:
        args[API_KEYS_ARG] = API_KEYS_MOUNT
    serve = {
        "applications": [
            {
                "name": workload.name,
                "import_path": f"{workload.entrypoint}:build",
                "route_prefix": "/",
                "args": args,
            }
        ]
    }
    return {"serveConfigV2": yaml.safe_dump(serve, sort_keys=True), "rayClusterConfig": cluster}


def _metadata(owner: Owner, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A child's metadata: labelled, owned by the custom resource, with ``spec``'s hash."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {
            "app.kubernetes.io/managed-by": "modelfleet",
            "modelfleet.io/owner-kind": owner.kind.lower(),
            "modelfleet.io/owner-name": owner.name,
        },
        "annotations": {HASH_ANNOTATION: spec_hash(spec)},
        "ownerReferences": [owner.reference()],
    }


def render(
    owner: Owner,
    workload: Workload,
    image: str,
    token_auth: bool = True,
    products: GpuProducts | None = None,
) -> dict[str, Any]:
    """The whole child object, labelled and owned by the custom resource. The spec hash
    leaves out the workload's ``restore`` state, so state changes alone update nothing."""
    spec = render_spec(workload, image, token_auth, products)
    unrestored = render_spec(replace(workload, restore={}), image, token_auth, products)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KINDS[workload.kind],
        "metadata": _metadata(owner, workload.name, unrestored),
        "spec": spec,
    }


def _namespaces(names: list[str]) -> dict[str, Any]:
    """A NetworkPolicy peer: every pod in the namespaces so named."""
    return {
        "namespaceSelector": {
            "matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": names}]
        }
    }


def render_network_policy(
    owner: Owner, workload: Workload, serve_from: Sequence[str], kuberay_namespace: str
) -> dict[str, Any]:
    """The NetworkPolicy of a service workload's Ray pods: the pods talk freely among
    themselves (GCS, object store, workers); the Serve port answers pods of the namespaces in
    ``serve_from`` and the workload's own; the dashboard ports only the KubeRay operator's
    namespace, which submits and polls through them."""
    pods = {"matchLabels": {WORKLOAD_LABEL: workload.name}}
    spec = {
        "podSelector": pods,
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": pods}]},
            {
                "from": [_namespaces(sorted({*serve_from, owner.namespace}))],
                "ports": [{"port": SERVE_PORT, "protocol": "TCP"}],
            },
            {
                "from": [_namespaces([kuberay_namespace])],
                "ports": [{"port": port, "protocol": "TCP"} for port in DASHBOARD_PORTS],
            },
        ],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, workload.name, spec),
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


class ClusterChange(StrEnum):
    """What KubeRay does with a RayService whose cluster spec changed (its
    ``shouldPrepareNewCluster`` rule): nothing, update the cluster in place, or roll out a
    new cluster and move traffic once it serves."""

    NONE = "None"
    IN_PLACE = "InPlace"
    NEW_CLUSTER = "NewCluster"


def _without_replicas(cluster: dict[str, Any]) -> dict[str, Any]:
    """The cluster spec as KubeRay hashes it to compare: replica counts left out."""
    muted = ("replicas", "minReplicas", "maxReplicas")
    groups = [
        {key: value for key, value in group.items() if key not in muted}
        for group in cluster.get("workerGroupSpecs", [])
    ]
    return {**cluster, "workerGroupSpecs": groups}


def cluster_change(old: dict[str, Any], new: dict[str, Any]) -> ClusterChange:
    """How KubeRay takes a RayService's ``rayClusterConfig`` going from ``old`` to ``new``:
    equal but for replica counts is no new cluster, nor are worker groups appended at the
    end; anything else (a pod template, a removed group) is a new RayCluster."""
    if _without_replicas(old) == _without_replicas(new):
        return ClusterChange.NONE
    groups = len(old.get("workerGroupSpecs", []))
    if len(new.get("workerGroupSpecs", [])) > groups:
        kept = {**new, "workerGroupSpecs": new["workerGroupSpecs"][:groups]}
        if _without_replicas(old) == _without_replicas(kept):
            return ClusterChange.IN_PLACE
    return ClusterChange.NEW_CLUSTER


def _owned(current: dict[str, Any], owner_uid: str) -> bool:
    """Whether an object read by its deterministic name is the resource's own child, not
    someone else's object that happens to share the name."""
    references = current["metadata"].get("ownerReferences") or []
    return any(reference.get("uid") == owner_uid for reference in references)


def _outdated(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether the object as read was rendered from another spec than ``desired``."""
    annotations = current["metadata"].get("annotations") or {}
    return bool(
        annotations.get(HASH_ANNOTATION) != desired["metadata"]["annotations"][HASH_ANNOTATION]
    )


def _update(current: dict[str, Any], desired: dict[str, Any]) -> None:
    """Give ``current`` (as read, with its resourceVersion) the desired spec and hash."""
    current["spec"] = desired["spec"]
    annotations = current["metadata"].get("annotations") or {}
    current["metadata"]["annotations"] = {**annotations, **desired["metadata"]["annotations"]}


class KubeRayBackend:
    """Applies rendered KubeRay objects through the Kubernetes API: a RayJob per job, a
    RayService and its NetworkPolicy per service. ``token_auth`` turns on Ray's token
    authentication (KubeRay 1.5 or newer); ``serve_from`` are the namespaces, besides a
    service's own, whose pods may call it; ``kuberay_namespace`` is the KubeRay operator's."""

    name = "kuberay"

    def __init__(
        self,
        api: client.ApiClient,
        image: str,
        cache_seconds: float = 5.0,
        *,
        token_auth: bool = True,
        serve_from: Sequence[str] = (),
        kuberay_namespace: str = KUBERAY_NAMESPACE,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._networking = client.NetworkingV1Api(api)
        self._apis = client.ApisApi(api)
        self._image = image
        self._token_auth = token_auth
        self._serve_from = tuple(serve_from)
        self._kuberay_namespace = kuberay_namespace
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
        """Apply the child (and, first, a service's NetworkPolicy, so its pods never run
        unguarded); the result is the child's."""
        if not self.installed():
            return ApplyResult.SKIPPED
        if workload.kind is WorkloadKind.SERVICE:
            self._apply_network_policy(
                render_network_policy(owner, workload, self._serve_from, self._kuberay_namespace)
            )
        desired = self._render(owner, workload)
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
        if not _owned(current, owner.uid):
            return ApplyResult.SKIPPED
        if workload.kind is WorkloadKind.JOB or not _outdated(current, desired):
            return ApplyResult.UNCHANGED
        if workload.kind is WorkloadKind.SERVICE:
            change = cluster_change(
                current["spec"].get("rayClusterConfig") or {}, desired["spec"]["rayClusterConfig"]
            )
            if change is ClusterChange.NEW_CLUSTER:
                log.info(
                    "%s/%s: the change reaches the Ray pods, so KubeRay starts a new RayCluster "
                    "and moves traffic to it once it serves",
                    owner.namespace,
                    workload.name,
                )
        _update(current, desired)
        self._custom.replace_namespaced_custom_object(
            GROUP, VERSION, owner.namespace, plural, workload.name, current
        )
        return ApplyResult.UPDATED

    def _render(self, owner: Owner, workload: Workload) -> dict[str, Any]:
        """The child as this backend renders it now, for the GPU products the cluster has."""
        products = self.inventory().product_labels()
        return render(owner, workload, self._image, self._token_auth, products)

    def _apply_network_policy(self, desired: dict[str, Any]) -> None:
        """Create the NetworkPolicy, or replace it when its spec hash differs."""
        name, namespace = desired["metadata"]["name"], desired["metadata"]["namespace"]
        try:
            response: Any = self._networking.read_namespaced_network_policy(
                name, namespace, _preload_content=False
            )
        except ApiException as error:
            if error.status != 404:
                raise
            try:
                self._networking.create_namespaced_network_policy(
                    namespace, client.V1NetworkPolicy.model_validate(desired)
                )
            except ApiException as conflict:
                if conflict.status != 409:
                    raise
            return
        current = json.loads(response.data)
        if not _owned(current, desired["metadata"]["ownerReferences"][0]["uid"]) or not _outdated(
            current, desired
        ):
            return
        # The rendered object at the version read, keeping annotations others added.
        metadata = current["metadata"]
        replacement = {
            **desired,
            "metadata": {
                **desired["metadata"],
                "resourceVersion": metadata["resourceVersion"],
                "annotations": {
                    **(metadata.get("annotations") or {}),
                    **desired["metadata"]["annotations"],
                },
            },
        }
        self._networking.replace_namespaced_network_policy(
            name, namespace, client.V1NetworkPolicy.model_validate(replacement)
        )

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
        kind = KINDS[workload.kind]
        if current is None:
            return Observation(WorkloadState.MISSING, "Creating", f"{kind} not created yet")
        if not _owned(current, owner.uid):
            return Observation(
                WorkloadState.UNAVAILABLE,
                NAME_CONFLICT,
                f"a {kind} named {workload.name} exists in namespace {owner.namespace} that this "
                f"{owner.kind} does not own; delete or rename it, and the operator creates its own",
            )
        if workload.kind is WorkloadKind.SERVICE:
            return observe_rayservice(current, workload)
        observed = observe_rayjob(current)
        if (
            _outdated(current, self._render(owner, workload))
            and observed.state is not WorkloadState.SUCCEEDED
        ):
            note = (
                "; the spec changed after the RayJob was created: a running job keeps the "
                "spec it started with (delete the RayJob to start over with the new one)"
            )
            observed = replace(observed, message=observed.message + note)
        return observed
