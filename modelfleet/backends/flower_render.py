"""Render a FedJob's Flower federation as Kubernetes objects: pure, no I/O.

One SuperLink Deployment and its Service, and one SuperNode Deployment per client:

- The SuperLink pod runs :mod:`modelfleet.federated.superlink_pod` over TLS with
  SuperNode authentication, writes the run to the output claim, and publishes progress
  into the job's status ConfigMap through a service account that may patch that one
  ConfigMap only.
- Each SuperNode pod lands where its client says (GPU type, site, node selector), mounts
  only its own dataset claim and its own key, and has no service account token.
- A NetworkPolicy lets only the job's SuperNodes reach the SuperLink's port: Flower serves
  its Fleet, Control and ServerAppIo APIs on that one port.

The Secret with the TLS and authentication material is minted by the backend (see
:mod:`modelfleet.federated.credentials`) and only named here; each pod mounts only its
own files from it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.artifacts.uri import PVC_MOUNT_ROOT, ArtifactUri
from modelfleet.backends.base import Owner
from modelfleet.backends.pod_templates import (
    GPU_TAINT,
    GpuProducts,
    apply_overrides,
    child_metadata,
    container_security,
    gpu_affinity,
    pod_security,
    resources,
    volume_name,
)
from modelfleet.core.names import child_name
from modelfleet.core.workload import CPU, WORKLOAD_LABEL, Workload
from modelfleet.federated.credentials import CA_CERT, NODE_KEY, node_files, superlink_files
from modelfleet.federated.job import JOB_FILE, JobSettings
from modelfleet.federated.local_federation import render_node_config, supernode_arguments
from modelfleet.federated.plan import SITE_LABEL
from modelfleet.federated.superlink_pod import STATUS_KEY

SUPERLINK_PORT = 9092
"""The SuperLink's one HTTP port (Fleet, Control and ServerAppIo APIs); not Ray Serve's 8000."""
SUPERNODE_PORT = 9094
"""A SuperNode's ClientAppIo port, which only its own ClientApp processes use."""
ROLE_LABEL = "modelfleet.io/flower-role"
CREDENTIALS_MOUNT = PurePosixPath("/etc/modelfleet/flower")
JOB_MOUNT = PurePosixPath("/etc/modelfleet/fedjob")
SPEC_FILE = "spec.json"
"""In the job ConfigMap beside ``job.json``: the spec the federation was created with."""
SECRET_MODE = 0o440
"""Secret files readable by root and the pod's fsGroup, the image user's group."""


@dataclass(frozen=True)
class FederationNames:
    """The deterministic names of one FedJob's children, derived from its workload's."""

    workload: str

    @property
    def superlink(self) -> str:
        return child_name(self.workload, "superlink")

    @property
    def credentials(self) -> str:
        return child_name(self.workload, "flower-tls")

    @property
    def job(self) -> str:
        return child_name(self.workload, "job")

    @property
    def status(self) -> str:
        return child_name(self.workload, "status")

    def supernode(self, client: str) -> str:
        return child_name(self.workload, f"node-{client}")

    def superlink_host(self, namespace: str) -> str:
        """The SuperLink Service's name in cluster DNS, as its certificate names it."""
        return f"{self.superlink}.{namespace}.svc"

    def superlink_hosts(self, namespace: str) -> list[str]:
        """Every name the SuperLink is reached by: its Service's, and loopback for the
        ``flwr`` CLI inside its own pod."""
        service = self.superlink
        return [
            service,
            f"{service}.{namespace}",
            self.superlink_host(namespace),
            f"{self.superlink_host(namespace)}.cluster.local",
            "localhost",
            "127.0.0.1",
        ]


def _claim_path(uri: ArtifactUri) -> PurePosixPath:
    """Where a ``pvc://`` URI's directory is in a pod that mounts its claim."""
    return PVC_MOUNT_ROOT / uri.name / uri.path


def _claim_volume(uri: ArtifactUri, read_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A claim's volume and its mount at ``/mnt/pvc/<claim>``."""
    name = volume_name(uri.name)
    volume = {"name": name, "persistentVolumeClaim": {"claimName": uri.name, "readOnly": read_only}}
    mount = {"name": name, "mountPath": str(PVC_MOUNT_ROOT / uri.name), "readOnly": read_only}
    return volume, mount


def _secret_volume(secret: str, files: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The federation's Secret projected to ``files`` (key to file name): a pod sees only
    its own credentials."""
    items = [{"key": key, "path": path} for key, path in files.items()]
    volume = {
        "name": "credentials",
        "secret": {"secretName": secret, "items": items, "defaultMode": SECRET_MODE},
    }
    mount = {"name": "credentials", "mountPath": str(CREDENTIALS_MOUNT), "readOnly": True}
    return volume, mount


def _quantities(gpus: int, workload: Workload) -> dict[str, Any]:
    """The pod's resources with every quantity a string, as Deployments are validated
    (a RayCluster's schema takes the integer, and its rendering keeps it)."""
    return {
        section: {name: str(value) for name, value in values.items()}
        for section, values in resources(gpus, workload.pod).items()
    }


def _labels(names: FederationNames, role: str) -> dict[str, str]:
    return {WORKLOAD_LABEL: names.workload, ROLE_LABEL: role}


def _deployment(
    owner: Owner, name: str, labels: dict[str, str], pod: dict[str, Any], replicas: int
) -> dict[str, Any]:
    """One pod's Deployment, recreated rather than rolled (the SuperLink's volume is
    ReadWriteOnce; two SuperNodes of one client would train twice). It carries its pods'
    labels too, so the federation's Deployments are listed by their workload in one call."""
    spec = {
        "replicas": replicas,
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    deployment = _object("apps/v1", "Deployment", owner, name, spec)
    deployment["metadata"]["labels"].update(labels)
    return deployment


def _object(
    api_version: str, kind: str, owner: Owner, name: str, body: Any, field: str = "spec"
) -> dict[str, Any]:
    """A namespaced child whose ``field`` holds ``body``, owned and hashed."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": child_metadata(owner, name, body),
        field: body,
    }


def _superlink_pod(
    names: FederationNames, spec: FedJobSpec, output: ArtifactUri, workload: Workload, image: str
) -> dict[str, Any]:
    claim, claim_mount = _claim_volume(output, read_only=False)
    credentials, credentials_mount = _secret_volume(
        names.credentials, superlink_files([c.name for c in spec.clients])
    )
    # job.json only: the stored spec beside it names every client's dataset.
    job = {
        "name": "job",
        "configMap": {"name": names.job, "items": [{"key": JOB_FILE, "path": JOB_FILE}]},
    }
    command = [
        "python",
        "-m",
        "modelfleet.federated.superlink_pod",
        f"--run-dir={_claim_path(output)}",
        f"--output-uri={spec.output.uri}",
        f"--job={JOB_MOUNT / JOB_FILE}",
        f"--credentials={CREDENTIALS_MOUNT}",
        f"--port={SUPERLINK_PORT}",
        f"--status-configmap={names.status}",
    ]
    container = {
        "name": "superlink",
        "image": image,
        "command": command,
        "env": [
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            }
        ],
        "ports": [{"name": "flower", "containerPort": SUPERLINK_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": SUPERLINK_PORT}, "periodSeconds": 5},
        "resources": _quantities(0, workload),
        "securityContext": container_security(),
        "volumeMounts": [
            claim_mount,
            credentials_mount,
            {"name": "job", "mountPath": str(JOB_MOUNT), "readOnly": True},
        ],
    }
    pod: dict[str, Any] = {
        "serviceAccountName": names.superlink,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [claim, credentials, job],
    }
    if workload.pod is not None:
        apply_overrides(pod, workload.pod)
        pod["serviceAccountName"] = names.superlink
    return pod


def _supernode_pod(
    names: FederationNames,
    owner: Owner,
    spec: FedJobSpec,
    index: int,
    dataset: ArtifactUri,
    workload: Workload,
    image: str,
    products: GpuProducts,
) -> dict[str, Any]:
    client = spec.clients[index]
    claim, claim_mount = _claim_volume(dataset, read_only=True)
    credentials, credentials_mount = _secret_volume(names.credentials, node_files(client.name))
    command = [
        "python",
        "-m",
        "modelfleet.federated.supernode_pod",
        *supernode_arguments(
            f"{names.superlink_host(owner.namespace)}:{SUPERLINK_PORT}",
            render_node_config(client.name, _claim_path(dataset)),
            SUPERNODE_PORT,
            CREDENTIALS_MOUNT / CA_CERT,
            CREDENTIALS_MOUNT / NODE_KEY,
        ),
    ]
    gpus = client.resources.gpus
    container = {
        "name": "supernode",
        "image": image,
        "command": command,
        "resources": _quantities(gpus, workload),
        "securityContext": container_security(),
        "volumeMounts": [claim_mount, credentials_mount],
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [claim, credentials],
    }
    selector = dict(client.node_selector)
    if client.site:
        selector.setdefault(SITE_LABEL, client.site)
    if selector:
        pod["nodeSelector"] = selector
    if client.resources.gpu_type != CPU:
        pod["affinity"] = gpu_affinity(client.resources.gpu_type, products)
    if gpus:
        pod["tolerations"] = [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    if workload.pod is not None:
        apply_overrides(pod, workload.pod)
    return pod


def _access(owner: Owner, names: FederationNames) -> list[dict[str, Any]]:
    """The SuperLink's service account, allowed to read and patch the status ConfigMap."""
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(owner, names.superlink, {}),
    }
    rules = [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [names.status],
            "verbs": ["get", "patch"],
        }
    ]
    binding = {
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": names.superlink,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": names.superlink, "namespace": owner.namespace}
        ],
    }
    return [
        account,
        _object("rbac.authorization.k8s.io/v1", "Role", owner, names.superlink, rules, "rules"),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": child_metadata(owner, names.superlink, binding),
            **binding,
        },
    ]


def _network(owner: Owner, names: FederationNames) -> list[dict[str, Any]]:
    """The SuperLink's Service, and the policy that admits only the job's SuperNodes to it
    and nothing to the SuperNodes."""
    service = {
        "selector": _labels(names, "superlink"),
        "ports": [{"name": "flower", "port": SUPERLINK_PORT, "targetPort": SUPERLINK_PORT}],
    }
    policy = {
        "podSelector": {"matchLabels": {WORKLOAD_LABEL: names.workload}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": _labels(names, "supernode")}}],
                "ports": [{"port": SUPERLINK_PORT, "protocol": "TCP"}],
            }
        ],
    }
    return [
        _object("v1", "Service", owner, names.superlink, service),
        _object("networking.k8s.io/v1", "NetworkPolicy", owner, names.workload, policy),
    ]


def render_federation(
    owner: Owner,
    workload: Workload,
    settings: JobSettings,
    paths: tuple[ArtifactUri, Mapping[str, ArtifactUri]],
    image: str,
    products: GpuProducts,
    replicas: int = 1,
) -> list[dict[str, Any]]:
    """Every child of the federation but its Secrets, in creation order: who may publish
    status before the pod that publishes, the SuperLink before its SuperNodes.
    ``replicas`` is 0 once the run has ended."""
    spec = FedJobSpec.model_validate(workload.config)
    names = FederationNames(workload.name)
    output, datasets = paths
    job = {JOB_FILE: settings.to_json(), SPEC_FILE: json.dumps(workload.config, sort_keys=True)}
    children = [
        *_access(owner, names),
        _object("v1", "ConfigMap", owner, names.status, {STATUS_KEY: json.dumps(None)}, "data"),
        _object("v1", "ConfigMap", owner, names.job, job, "data"),
        *_network(owner, names),
        _deployment(
            owner,
            names.superlink,
            _labels(names, "superlink"),
            _superlink_pod(names, spec, output, workload, image),
            replicas,
        ),
    ]
    for index, client in enumerate(spec.clients):
        pod = _supernode_pod(
            names, owner, spec, index, datasets[client.name], workload, image, products
        )
        labels = {**_labels(names, "supernode"), "modelfleet.io/client": client.name}
        children.append(_deployment(owner, names.supernode(client.name), labels, pod, replicas))
    return children


def render_secret(owner: Owner, name: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    """The Secret of the federation's material; its hash covers the file names, not the
    minted keys."""
    data = {key: base64.b64encode(value).decode() for key, value in sorted(files.items())}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": child_metadata(owner, name, {"files": sorted(files)}),
        "data": data,
    }
