"""A backend-neutral description of what runs for a resource, and what was seen of it.

Domain planners produce a ``Workload``; a backend renders it (KubeRay objects
on a cluster, a local Ray otherwise) and reports an ``Observation`` that the
domain's status computation reads. Neither side knows the other's details.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from modelfleet.api.pods import PodOverrides

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""Set by NVIDIA GPU feature discovery on every GPU node."""
HOSTNAME_LABEL = "kubernetes.io/hostname"
CPU = "cpu"
"""The GPU type that means: no GPU."""
API_KEYS_ARG = "apiKeysDir"
"""Build argument of a service app that checks API keys: the directory holding them, one
file per key in a Secret volume's layout. Backends set it; absent, keys are not checked."""
API_KEYS_MOUNT = "/etc/modelfleet/api-keys"
"""Where runtime pods on a cluster mount a workload's API keys Secret."""
WORKLOAD_LABEL = "modelfleet.io/workload"
"""On every runtime pod on a cluster: the workload's name, which its NetworkPolicy and
the owner's ``status.selector`` select."""


def workload_selector(name: str) -> str:
    """The label selector, in string form, of the pods of workload ``name``."""
    return f"{WORKLOAD_LABEL}={name}"


def gpu_selector(gpu_type: str) -> tuple[tuple[str, str], ...]:
    """The node selector that lands a worker on a GPU type (none for CPU workers)."""
    return () if gpu_type == CPU else ((GPU_PRODUCT_LABEL, gpu_type),)


class WorkloadKind(StrEnum):
    JOB = "job"
    SERVICE = "service"


@dataclass(frozen=True)
class WorkerGroup:
    """Identical Ray workers on one GPU type."""

    name: str
    gpu_type: str
    replicas: int
    gpus_per_worker: int = 0
    node_selector: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Workload:
    """What a backend runs. ``credential_secrets`` are Secrets whose keys become the
    runtime's environment (artifact credentials); ``claims`` are PersistentVolumeClaims
    mounted read-only into the runtime pods at ``/mnt/pvc/<claim>`` (pvc:// artifacts);
    ``api_keys_secret`` is the Secret of the API keys a service checks ("" for none), which
    the backend puts where the service reads them (see :data:`API_KEYS_ARG`).
    ``pod`` are the spec's overrides of the runtime pods, which only a backend that
    renders pods applies.
    ``restore`` is state a *new* deployment starts from (what a router learned): it joins
    ``config`` when the workload is created, but a change to it alone redeploys nothing."""

    name: str
    kind: WorkloadKind
    entrypoint: str
    config: dict[str, Any]
    worker_groups: tuple[WorkerGroup, ...]
    credential_secrets: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()
    api_keys_secret: str = ""
    pod: PodOverrides | None = None
    restore: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Blocked:
    """A plan that cannot run as specified, with the numbers that say why."""

    reason: str
    message: str


class WorkloadState(StrEnum):
    MISSING = "Missing"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNAVAILABLE = "Unavailable"


@dataclass(frozen=True)
class Observation:
    """What a backend saw of a workload; ``reason`` is a CamelCase condition reason."""

    state: WorkloadState
    reason: str
    message: str = ""
    ready_replicas: dict[str, int] = field(default_factory=dict)
    """Ready replicas by GPU type."""
    model_replicas: dict[str, int] = field(default_factory=dict)
    """Ready replicas by served model, where the backend can tell them apart."""
    endpoint: str = ""
    migrations: int = 0
    """Live request migrations the service has performed."""
    slo_attainment: float | None = None
    """Share of recent requests within the latency objectives, where the backend measures it."""
    job_report: dict[str, Any] = field(default_factory=dict)
    """What a job's runtime reported of its progress, in its kind's status field names."""


class ApplyResult(StrEnum):
    CREATED = "Created"
    UPDATED = "Updated"
    UNCHANGED = "Unchanged"
    SKIPPED = "Skipped"


def distribute_ready(groups: tuple[WorkerGroup, ...], ready: int) -> dict[str, int]:
    """Attribute ``ready`` replicas to GPU types, filling the planned groups in order.

    Serving backends report how many replicas answer, not where each one runs;
    replicas start group by group, so the earlier groups fill first.
    """
    by_type: dict[str, int] = {}
    for group in groups:
        take = min(group.replicas, ready)
        by_type[group.gpu_type] = by_type.get(group.gpu_type, 0) + take
        ready -= take
    return by_type


def worker_group_name(index: int, gpu_type: str) -> str:
    """A short, DNS-safe KubeRay group name such as g0-a100-80gb."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu_type.lower()).strip("-")
    return f"g{index}-{slug}"[:40]


WorkerRequest = tuple[str, int, tuple[tuple[str, str], ...]]
"""One worker's (GPU type, GPUs, node selector)."""


def group_workers(requests: list[WorkerRequest]) -> tuple[WorkerGroup, ...]:
    """Collapse per-worker (gpu type, gpus, node selector) requests into worker groups.

    One KubeRay worker group per distinct request keeps the number of groups
    bounded by the variety of hardware, not by the number of workers.
    """
    counts: dict[WorkerRequest, int] = {}
    for request in requests:
        counts[request] = counts.get(request, 0) + 1
    return tuple(
        WorkerGroup(worker_group_name(i, gpu), gpu, replicas, gpus, selector)
        for i, ((gpu, gpus, selector), replicas) in enumerate(counts.items())
    )
