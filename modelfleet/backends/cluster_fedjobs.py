"""FedJobs on a cluster: the Flower federation rendered by
:mod:`~modelfleet.backends.flower_render`, applied, and observed through the status its
SuperLink pod publishes.

Every child is created once and then left as it is: a run keeps the spec it started with,
as its checkpoints were written under that spec. Only the Deployments' replicas change,
to zero once the run has ended, so a finished job holds no pods. The TLS and
authentication material is minted once per job and stored in one Secret, whole or not at
all; each pod mounts only its own files from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.backends.base import Owner
from modelfleet.backends.federation_status import observe_result, observe_rounds
from modelfleet.backends.flower_render import (
    SPEC_FILE,
    FederationNames,
    render_federation,
    render_secret,
)
from modelfleet.backends.pod_templates import GpuProducts, owned
from modelfleet.core.workload import (
    WORKLOAD_LABEL,
    ApplyResult,
    Observation,
    Workload,
    WorkloadState,
)
from modelfleet.federated.checkpoint import RunResult
from modelfleet.federated.credentials import mint_credentials
from modelfleet.federated.launch import JobInvalid, check_cluster_job, job_settings
from modelfleet.federated.superlink_pod import STATUS_KEY

log = logging.getLogger(__name__)
INVALID = "InvalidForCluster"
NAME_CONFLICT = "NameConflict"


class ClusterFedJobs:
    """Creates, scales and observes the children of FedJobs through the Kubernetes API."""

    def __init__(self, api: client.ApiClient, image: str, products: Callable[[], GpuProducts]):
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._rbac = client.RbacAuthorizationV1Api(api)
        self._networking = client.NetworkingV1Api(api)
        self._image = image
        self._products = products

    def _create(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create ``body`` unless an object of its name exists; whether it was created."""
        makers: dict[str, tuple[Callable[..., Any], type[BaseModel]]] = {
            "ServiceAccount": (
                self._core.create_namespaced_service_account,
                client.V1ServiceAccount,
            ),
            "ConfigMap": (self._core.create_namespaced_config_map, client.V1ConfigMap),
            "Secret": (self._core.create_namespaced_secret, client.V1Secret),
            "Service": (self._core.create_namespaced_service, client.V1Service),
            "Deployment": (self._apps.create_namespaced_deployment, client.V1Deployment),
            "Role": (self._rbac.create_namespaced_role, client.V1Role),
            "RoleBinding": (self._rbac.create_namespaced_role_binding, client.V1RoleBinding),
            "NetworkPolicy": (
                self._networking.create_namespaced_network_policy,
                client.V1NetworkPolicy,
            ),
        }
        create, model = makers[body["kind"]]
        try:
            create(namespace, model.model_validate(body))
        except ApiException as error:
            if error.status != 409:
                raise
            return False
        return True

    def _read(self, read: Callable[..., Any], name: str, namespace: str) -> dict[str, Any] | None:
        try:
            response = read(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        document: dict[str, Any] = json.loads(response.data)
        return document

    def _mint_credentials(self, owner: Owner, names: FederationNames, spec: FedJobSpec) -> None:
        """Store the federation's material. One create stores all of it, so a crash leaves
        either none or the whole set; a set is never replaced, as the running pods trust it."""
        material = mint_credentials(
            names.superlink_hosts(owner.namespace), [c.name for c in spec.clients]
        )
        self._create(owner.namespace, render_secret(owner, names.credentials, material))

    def _read_config_map(self, owner: Owner, name: str) -> dict[str, Any] | None:
        return self._read(self._core.read_namespaced_config_map, name, owner.namespace)

    def _deployments(self, owner: Owner, names: FederationNames) -> dict[str, dict[str, Any]]:
        """The federation's Deployments as they are, by name, in one list call."""
        response: Any = self._apps.list_namespaced_deployment(
            owner.namespace,
            label_selector=f"{WORKLOAD_LABEL}={names.workload}",
            _preload_content=False,
        )
        items = json.loads(response.data)["items"]
        return {item["metadata"]["name"]: item for item in items}

    def _started(self, owner: Owner, workload: Workload) -> Workload:
        """``workload`` with the spec its federation was created with, once it was: the
        children are rendered from that one, never from a spec edited mid-run."""
        stored = self._read_config_map(owner, FederationNames(workload.name).job)
        if stored is None or not owned(stored, owner.uid):
            return workload
        return replace(workload, config=json.loads(stored["data"][SPEC_FILE]))

    def apply(self, owner: Owner, workload: Workload) -> ApplyResult:
        """Create what is missing; scale the pods to zero once the run has ended. Every
        child but the Deployments is tried each time (a few calls, each idempotent); the
        Deployments are listed once and only the missing ones created."""
        workload = self._started(owner, workload)
        spec = FedJobSpec.model_validate(workload.config)
        try:
            paths = check_cluster_job(spec)
        except JobInvalid:
            return ApplyResult.SKIPPED
        names = FederationNames(workload.name)
        status = self._read_config_map(owner, names.status)
        if status is not None and not owned(status, owner.uid):
            return ApplyResult.SKIPPED
        credentials = self._read(
            self._core.read_namespaced_secret, names.credentials, owner.namespace
        )
        if credentials is None:
            self._mint_credentials(owner, names, spec)
        elif not owned(credentials, owner.uid):
            return ApplyResult.SKIPPED
        ended = status is not None and _published(status)[1] is not None
        deployments = self._deployments(owner, names)
        created = False
        children = render_federation(
            owner,
            workload,
            job_settings(spec),
            paths,
            self._image,
            self._products(),
            0 if ended else 1,
        )
        for child in children:
            if child["kind"] == "Deployment" and child["metadata"]["name"] in deployments:
                continue
            created = self._create(owner.namespace, child) or created
        running = [
            name
            for name, current in deployments.items()
            if owned(current, owner.uid) and current["spec"]["replicas"]
        ]
        if ended and running:
            for name in running:
                self._apps.patch_namespaced_deployment_scale(
                    name, owner.namespace, {"spec": {"replicas": 0}}
                )
            return ApplyResult.UPDATED
        return ApplyResult.CREATED if created else ApplyResult.UNCHANGED

    def observe(self, owner: Owner, workload: Workload) -> Observation:
        """The run's state from its published status and its SuperLink Deployment."""
        started = self._started(owner, workload)
        spec = FedJobSpec.model_validate(started.config)
        try:
            check_cluster_job(spec)
        except JobInvalid as error:
            return Observation(WorkloadState.FAILED, INVALID, str(error))
        names = FederationNames(workload.name)
        status = self._read_config_map(owner, names.status)
        if status is not None and not owned(status, owner.uid):
            return _name_conflict(_conflict("ConfigMap", names.status, owner))
        credentials = self._read(
            self._core.read_namespaced_secret, names.credentials, owner.namespace
        )
        if credentials is not None and not owned(credentials, owner.uid):
            return _name_conflict(_conflict("Secret", names.credentials, owner))
        deployments = self._deployments(owner, names)
        strangers = sorted(n for n, d in deployments.items() if not owned(d, owner.uid))
        if strangers:
            return _name_conflict(_conflict("Deployment", strangers[0], owner))
        if status is None:
            return Observation(WorkloadState.MISSING, "Creating", "federation not created yet")
        expected = [names.superlink, *(names.supernode(c.name) for c in spec.clients)]
        for name in (n for n in expected if n not in deployments):
            if self._read(self._apps.read_namespaced_deployment, name, owner.namespace):
                return _name_conflict(_conflict("Deployment", name, owner))
        observed = self._observe_run(names, status, deployments, spec.rounds)
        if started.config != workload.config:
            note = (
                "; the spec changed after the federation was created: a FedJob keeps the spec "
                "it started with (delete it, or create a new one, to run the new spec)"
            )
            observed = replace(observed, message=observed.message + note)
        return observed

    @staticmethod
    def _observe_run(
        names: FederationNames,
        status: dict[str, Any],
        deployments: dict[str, dict[str, Any]],
        rounds: int,
    ) -> Observation:
        progress, result = _published(status)
        if result is not None:
            return observe_result(progress, result)
        link = deployments.get(names.superlink) or {}
        if (link.get("status") or {}).get("availableReplicas"):
            return observe_rounds(progress, rounds)
        return Observation(
            WorkloadState.PENDING,
            "SuperLinkStarting",
            f"waiting for the SuperLink pod of Deployment {names.superlink} to be ready",
            job_report=progress,
        )


def _conflict(kind: str, name: str, owner: Owner) -> str:
    return (
        f"a {kind} named {name} exists in namespace {owner.namespace} that this FedJob does "
        "not own; delete or rename it, and the operator creates its own"
    )


def _name_conflict(message: str) -> Observation:
    return Observation(WorkloadState.UNAVAILABLE, NAME_CONFLICT, message)


def _published(status: dict[str, Any]) -> tuple[dict[str, Any], RunResult | None]:
    """The report and result the SuperLink pod published; before the first, round 0."""
    try:
        document = json.loads((status.get("data") or {}).get(STATUS_KEY) or "null")
    except json.JSONDecodeError:
        log.warning("status ConfigMap %s holds no JSON", status["metadata"]["name"])
        document = None
    if not isinstance(document, dict):
        return {"round": 0}, None
    result = document.get("result")
    return document.get("report") or {"round": 0}, RunResult(**result) if result else None
