"""Run workloads as KubeRay objects: a RayJob for jobs, a RayService for services;
FedJobs, which run on Flower rather than Ray, as the Deployments of
:mod:`~modelfleet.backends.cluster_fedjobs`.

Rendering is pure (``render_*``); ``KubeRayBackend`` applies the rendering with
deterministic names, owner references and a spec hash, so repeating it after a
crash at any point converges to one child with the current spec.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any, cast

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelfleet.artifacts.uri import PVC_MOUNT_ROOT
from modelfleet.backends.base import Owner
from modelfleet.backends.cluster_fedjobs import ClusterFedJobs
from modelfleet.backends.pod_templates import (
    GPU_TAINT,
    GpuProducts,
    apply_overrides,
    child_metadata,
    container_security,
    gpu_affinity,
    namespace_peer,
    outdated,
    owned,
    pod_security,
    resources,
    volume_name,
)
from modelfleet.core.ttl import Ttl
from modelfleet.core.workload import (
    API_KEYS_ARG,
    API_KEYS_MOUNT,
    GPU_PRODUCT_LABEL,
    WORKLOAD_LABEL,
    ApplyResult,
    Observation,
    WorkerGroup,
    Workload,
    WorkloadKind,
    WorkloadState,
    distribute_ready,
)
from modelfleet.federated.plan import ENTRYPOINT as FEDERATED_ENTRYPOINT
from modelfleet.scheduling.inventory import Inventory, read_inventory

log = logging.getLogger(__name__)
GROUP, VERSION = "ray.io", "v1"
PLURALS = {WorkloadKind.JOB: "rayjobs", WorkloadKind.SERVICE: "rayservices"}
KINDS = {WorkloadKind.JOB: "RayJob", WorkloadKind.SERVICE: "RayService"}
SERVE_PORT = 8000
DASHBOARD_PORTS = (8265, 52365)
"""The Ray dashboard and the dashboard agent, which KubeRay calls to submit and poll."""
KUBERAY_NAMESPACE = "kuberay-system"
"""Where the KubeRay operator runs unless told otherwise (its Helm chart's usual namespace)."""
KUBERAY_NOT_INSTALLED = "KubeRayNotInstalled"
NAME_CONFLICT = "NameConflict"
API_KEYS_VOLUME = "api-keys"


def _container(name: str, image: str, gpus: int, workload: Workload) -> dict[str, Any]:
    """A Ray container. A job's config is in its environment; a service's travels only in
    its serveConfigV2, which KubeRay applies to the running cluster: in the pods it would
    change the pod template on every scale, and KubeRay would start a new RayCluster."""
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": resources(gpus, workload.pod),
        "securityContext": container_security(),
    }
    if workload.kind is WorkloadKind.JOB:
        config = json.dumps(workload.config, sort_keys=True)
        container["env"] = [{"name": "MODELFLEET_WORKLOAD_CONFIG", "value": config}]
    secrets = _env_secrets(workload)
    if secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in secrets]
    mounts = [
        {
            "name": volume_name(claim),
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


def _env_secrets(workload: Workload) -> list[str]:
    """Secrets whose keys become a Ray container's environment: the artifacts' credentials,
    then ``spec.pod.credentialsSecret`` unless it is one of them."""
    secrets = list(workload.credential_secrets)
    own = workload.pod.credentials_secret if workload.pod else None
    if own and own not in secrets:
        secrets.append(own)
    return secrets


def _pod(container: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """A pod spec around ``container`` with the workload's claims as read-only volumes and
    its API keys Secret, under the restricted Pod Security Standard."""
    pod: dict[str, Any] = {"securityContext": pod_security(), "containers": [container]}
    volumes: list[dict[str, Any]] = [
        {
            "name": volume_name(claim),
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
    """A pod template labelled with its workload, the label NetworkPolicies select, with
    the spec's pod overrides applied over what the operator planned."""
    if workload.pod is not None:
        apply_overrides(pod, workload.pod)
    return {"metadata": {"labels": {WORKLOAD_LABEL: workload.name}}, "spec": pod}


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
        "securityContext": container_security(),
    }
    pod = {"restartPolicy": "Never", "securityContext": pod_security(), "containers": [container]}
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
        "metadata": child_metadata(owner, workload.name, unrestored),
        "spec": spec,
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
                "from": [namespace_peer(sorted({*serve_from, owner.namespace}))],
                "ports": [{"port": SERVE_PORT, "protocol": "TCP"}],
            },
            {
                "from": [namespace_peer([kuberay_namespace])],
                "ports": [{"port": port, "protocol": "TCP"} for port in DASHBOARD_PORTS],
            },
        ],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(owner, workload.name, spec),
        "spec": spec,
    }


JOB_FAILED = "RayJobFailed"
SERVE_DEPLOY_FAILED = "ServeDeployFailed"
FINAL_FAILED_DEPLOYMENTS = ("Failed", "ValidationFailed")
"""KubeRay's jobDeploymentStatus values for a RayJob it gave up on: the Ray job failed (reason
AppFailed), could not be submitted (SubmissionFailed), ran out of time (DeadlineExceeded), or
the spec was invalid (ValidationFailed)."""
UNSUCCESSFUL_JOB_STATUSES = ("FAILED", "STOPPED")
REPLICA_FAILURE = "ReplicaFailure"
"""The RayCluster condition KubeRay sets when it cannot create the head or worker pods."""


def _true_condition(conditions: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    """The condition of type ``kind`` when its status is True."""
    return next(
        (c for c in conditions or [] if c.get("type") == kind and c.get("status") == "True"),
        None,
    )


def _describe_cluster_problem(cluster_status: dict[str, Any] | None) -> str:
    """What keeps a RayCluster (as embedded in a RayJob's or RayService's status) from
    starting its pods, or "" when nothing does."""
    failure = _true_condition((cluster_status or {}).get("conditions"), REPLICA_FAILURE)
    if failure is None:
        return ""
    return (
        f"; its RayCluster cannot create pods ({failure.get('reason')}): {failure.get('message')}"
    )


def _job_failure(status: dict[str, Any]) -> str:
    """Why KubeRay gave up on a RayJob, in its own words."""
    job = status.get("jobStatus") or "unset"
    why = status.get("reason") or f"jobStatus={job}"
    message = status.get("message") or (
        "the Ray job was stopped" if job == "STOPPED" else "no message from KubeRay"
    )
    return f"the RayJob failed ({why}): {message}"


def _job_waiting(status: dict[str, Any]) -> str:
    """Where a RayJob KubeRay is still working on stands."""
    deployment = status.get("jobDeploymentStatus") or "unset"
    message = status.get("message")
    return (
        f"waiting for the RayJob: jobDeploymentStatus={deployment}, "
        f"jobStatus={status.get('jobStatus') or 'unset'}"
        + (f": {message}" if message else "")
        + _describe_cluster_problem(status.get("rayClusterStatus"))
    )


def observe_rayjob(obj: dict[str, Any]) -> Observation:
    """Map a RayJob's status, as KubeRay v1.7 writes it, onto a workload state.

    ``jobDeploymentStatus`` says whether KubeRay is done with the job: Complete (the Ray job
    ended SUCCEEDED or STOPPED) and Failed / ValidationFailed are final. A FAILED
    ``jobStatus`` alone is not: KubeRay may still retry (Retrying, under spec.backoffLimit).
    """
    status = obj.get("status") or {}
    deployment = status.get("jobDeploymentStatus", "")
    job = status.get("jobStatus", "")
    if deployment in FINAL_FAILED_DEPLOYMENTS or (
        deployment == "Complete" and job in UNSUCCESSFUL_JOB_STATUSES
    ):
        return Observation(WorkloadState.FAILED, JOB_FAILED, _job_failure(status))
    if deployment == "Complete" or job == "SUCCEEDED":
        message = status.get("message") or "the Ray job succeeded"
        return Observation(WorkloadState.SUCCEEDED, "Succeeded", message)
    if deployment == "Running" and job == "RUNNING":
        return Observation(WorkloadState.RUNNING, "Running", "the Ray job is running")
    return Observation(WorkloadState.PENDING, "RayJobStarting", _job_waiting(status))


def _application(service_status: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The Serve application ``name`` in a RayService's active or pending service status."""
    applications = (service_status or {}).get("applicationStatuses") or {}
    return cast(dict[str, Any], applications.get(name) or {})


def _describe_application(app: dict[str, Any], name: str) -> str:
    """``; application <name> is <STATUS>: <message>``, or "" before Serve reports it."""
    if not app.get("status"):
        return ""
    message = app.get("message")
    return f"; application {name} is {app['status']}" + (f": {message}" if message else "")


def _service_ready(status: dict[str, Any]) -> bool:
    """KubeRay's Ready condition (True once the Serve service has endpoints); serviceStatus,
    which KubeRay keeps in step with it, where no conditions are written."""
    conditions = status.get("conditions")
    if conditions:
        return _true_condition(conditions, "Ready") is not None
    return bool(status.get("serviceStatus") == "Running")


def _service_waiting(status: dict[str, Any], app: dict[str, Any], name: str) -> str:
    """Where a RayService that does not serve yet stands."""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None:
        summary = f"serviceStatus={status.get('serviceStatus') or 'unset'}"
    else:
        summary = f"Ready={ready.get('status')} ({ready.get('reason')}: {ready.get('message')})"
    clusters = (status.get(key) or {} for key in ("activeServiceStatus", "pendingServiceStatus"))
    problems = "".join(_describe_cluster_problem(c.get("rayClusterStatus")) for c in clusters)
    return f"waiting for the RayService: {summary}" + _describe_application(app, name) + problems


def _describe_upgrade(status: dict[str, Any], name: str) -> str:
    """While KubeRay brings up a new RayCluster for a changed spec, how that goes."""
    if _true_condition(status.get("conditions"), "UpgradeInProgress") is None:
        return ""
    pending = _application(status.get("pendingServiceStatus"), name)
    return "; moving to a new RayCluster" + _describe_application(pending, name)


def observe_rayservice(obj: dict[str, Any], workload: Workload) -> Observation:
    """Map a RayService's status, as KubeRay v1.7 writes it, onto a workload state with
    ready replicas by GPU type: the Ready condition and numServeEndpoints for serving, the
    active cluster's Serve application (named after the workload) for a failed deployment."""
    status = obj.get("status") or {}
    name = workload.name
    app = _application(status.get("activeServiceStatus"), name)
    if app.get("status") == "DEPLOY_FAILED":
        return Observation(
            WorkloadState.FAILED,
            SERVE_DEPLOY_FAILED,
            f"Ray Serve could not deploy application {name}: "
            f"{app.get('message') or 'no message from Ray Serve'}",
        )
    if not _service_ready(status):
        return Observation(
            WorkloadState.PENDING, "RayServiceStarting", _service_waiting(status, app, name)
        )
    ready = distribute_ready(workload.worker_groups, int(status.get("numServeEndpoints", 0)))
    namespace = obj["metadata"]["namespace"]
    unhealthy = _describe_application(app, name) if app.get("status") != "RUNNING" else ""
    return Observation(
        WorkloadState.RUNNING,
        "Serving",
        f"{sum(ready.values())} replica(s) serving" + unhealthy + _describe_upgrade(status, name),
        ready_replicas=ready,
        endpoint=f"http://{name}-serve-svc.{namespace}.svc:{SERVE_PORT}/v1",
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


def rendered_part(stored: Any, rendered: Any) -> Any:
    """``stored`` (as read back) reduced to the keys ``rendered`` has, at every depth: what
    the API server filled in from KubeRay's schema defaults (``numOfHosts``, ``priority``,
    port protocols...) drops out, so it does not read as a change of ours."""
    if isinstance(stored, dict) and isinstance(rendered, dict):
        return {key: rendered_part(stored[key], rendered[key]) for key in rendered if key in stored}
    if isinstance(stored, list) and isinstance(rendered, list):
        pairs = zip(stored, rendered, strict=False)
        return [rendered_part(s, r) for s, r in pairs] + stored[len(rendered) :]
    return stored


def cluster_change(old: dict[str, Any], new: dict[str, Any]) -> ClusterChange:
    """How KubeRay takes a RayService's ``rayClusterConfig`` going from ``old`` (as stored,
    with the server's defaults) to ``new`` (as rendered): equal but for replica counts is
    no new cluster, nor are worker groups appended at the end; anything else (a pod
    template, a removed group) is a new RayCluster. KubeRay compares two stored specs,
    which carry the same defaults, so the defaults are left out of ``old`` here."""
    old = rendered_part(old, new)
    if _without_replicas(old) == _without_replicas(new):
        return ClusterChange.NONE
    groups = len(old.get("workerGroupSpecs", []))
    if len(new.get("workerGroupSpecs", [])) > groups:
        kept = {**new, "workerGroupSpecs": new["workerGroupSpecs"][:groups]}
        if _without_replicas(old) == _without_replicas(kept):
            return ClusterChange.IN_PLACE
    return ClusterChange.NEW_CLUSTER


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
        federated_image: str = "",
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
        self.fedjobs = ClusterFedJobs(
            api, federated_image or image, lambda: self.inventory().product_labels()
        )

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
        unguarded); the result is the child's. FedJobs run on Flower, not Ray."""
        if workload.entrypoint == FEDERATED_ENTRYPOINT:
            return self.fedjobs.apply(owner, workload)
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
        if not owned(current, owner.uid):
            return ApplyResult.SKIPPED
        if workload.kind is WorkloadKind.JOB or not outdated(current, desired):
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
        if not owned(current, desired["metadata"]["ownerReferences"][0]["uid"]) or not outdated(
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
        if workload.entrypoint == FEDERATED_ENTRYPOINT:
            return self.fedjobs.observe(owner, workload)
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
        if not owned(current, owner.uid):
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
            outdated(current, self._render(owner, workload))
            and observed.state is not WorkloadState.SUCCEEDED
        ):
            note = (
                "; the spec changed after the RayJob was created: a running job keeps the "
                "spec it started with (delete the RayJob to start over with the new one)"
            )
            observed = replace(observed, message=observed.message + note)
        return observed
