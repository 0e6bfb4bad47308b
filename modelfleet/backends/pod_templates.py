"""Pieces of the pods and children every cluster rendering shares: the restricted Pod
Security Standard, resources with the spec's overrides, GPU node affinity, and the metadata,
owner reference and spec hash by which a child is recognised as current and as its owner's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from modelfleet.api.pods import PodOverrides
from modelfleet.backends.base import Owner, spec_hash
from modelfleet.core.workload import GPU_PRODUCT_LABEL
from modelfleet.scheduling.inventory import canonical_product

HASH_ANNOTATION = "modelfleet.io/spec-hash"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
RUNTIME_GROUP = 100
"""The group of the runtime images' user (1000:100, as in rayproject/ray)."""
DEFAULT_REQUESTS = {"cpu": "1", "memory": "2Gi"}
"""What a runtime container requests unless ``spec.pod.resources`` says otherwise."""
REQUIRED_NODE_AFFINITY = "requiredDuringSchedulingIgnoredDuringExecution"


def pod_security() -> dict[str, Any]:
    """A runtime pod's part of the restricted Pod Security Standard (see
    modelfleet.core.pod_security); the fsGroup lets the image's user read mounted Secrets."""
    return {
        "runAsNonRoot": True,
        "fsGroup": RUNTIME_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    """A runtime container's part of the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def resources(gpus: int, overrides: PodOverrides | None) -> dict[str, Any]:
    """The default cpu and memory requests with the spec's over them, and the planned GPUs.
    A limit set without its request drops the default request: Kubernetes then requests
    the limit, which the default could exceed."""
    requests: dict[str, Any] = dict(DEFAULT_REQUESTS)
    limits: dict[str, Any] = {}
    if overrides is not None:
        own_limits = overrides.resources.limits.to_wire()
        requests = {k: v for k, v in requests.items() if k not in own_limits}
        requests.update(overrides.resources.requests.to_wire())
        limits.update(own_limits)
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def volume_name(claim: str) -> str:
    """A pod volume name for a claim; claim names are DNS subdomains, volumes labels."""
    return f"pvc-{spec_hash({'claim': claim})[:12]}"


def apply_overrides(pod: dict[str, Any], overrides: PodOverrides) -> None:
    """Add ``spec.pod``'s scheduling, identity and image pulls to ``pod``. Tolerations
    join the operator's and the affinity is merged with its GPU node affinity, so a pod
    still lands on, and only on, the GPU type it was planned for."""
    tolerations = [toleration.to_wire() for toleration in overrides.tolerations]
    if tolerations:
        pod["tolerations"] = [*pod.get("tolerations", []), *tolerations]
    if overrides.affinity is not None:
        pod["affinity"] = _merge_affinity(pod.get("affinity"), overrides.affinity)
    if overrides.service_account_name is not None:
        pod["serviceAccountName"] = overrides.service_account_name
    if overrides.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in overrides.image_pull_secrets]


def _merge_affinity(own: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` (a spec's Affinity) with the operator's required node affinity ``own``
    kept: node selector terms are ORed, so every term of ``extra`` gets ``own``'s match
    expressions and fields; pod (anti-)affinity and preferred terms pass through."""
    merged = copy.deepcopy(extra)
    own_required = ((own or {}).get("nodeAffinity") or {}).get(REQUIRED_NODE_AFFINITY)
    if own_required is None:
        return merged
    node = merged.setdefault("nodeAffinity", {})
    extra_terms = (node.get(REQUIRED_NODE_AFFINITY) or {}).get("nodeSelectorTerms") or [{}]
    node[REQUIRED_NODE_AFFINITY] = {
        "nodeSelectorTerms": [
            _and_terms(term, own_term)
            for term in extra_terms
            for own_term in own_required["nodeSelectorTerms"]
        ]
    }
    return merged


def _and_terms(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One node selector term that matches where both do (requirements in a term are ANDed)."""
    term: dict[str, Any] = {}
    for key in ("matchExpressions", "matchFields"):
        requirements = [*first.get(key, []), *copy.deepcopy(second.get(key, []))]
        if requirements:
            term[key] = requirements
    return term


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


def child_metadata(owner: Owner, name: str, spec: dict[str, Any]) -> dict[str, Any]:
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


def namespace_peer(names: list[str]) -> dict[str, Any]:
    """A NetworkPolicy peer: every pod in the namespaces so named."""
    return {
        "namespaceSelector": {
            "matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": names}]
        }
    }


def owned(current: dict[str, Any], owner_uid: str) -> bool:
    """Whether an object read by its deterministic name is the resource's own child, not
    someone else's object that happens to share the name."""
    references = current["metadata"].get("ownerReferences") or []
    return any(reference.get("uid") == owner_uid for reference in references)


def outdated(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether the object as read was rendered from another spec than ``desired``."""
    annotations = current["metadata"].get("annotations") or {}
    return bool(
        annotations.get(HASH_ANNOTATION) != desired["metadata"]["annotations"][HASH_ANNOTATION]
    )
