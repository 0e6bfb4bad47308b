"""A backend-neutral description of what runs for a resource, and what was seen of it.

Domain planners produce a ``Workload``; a backend renders it (KubeRay objects
on a cluster, a local Ray otherwise) and reports an ``Observation`` that the
domain's status computation reads. Neither side knows the other's details.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""Set by NVIDIA GPU feature discovery on every GPU node."""
HOSTNAME_LABEL = "kubernetes.io/hostname"
CPU = "cpu"
"""The GPU type that means: no GPU."""


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
    name: str
    kind: WorkloadKind
    entrypoint: str
    config: dict[str, Any]
    worker_groups: tuple[WorkerGroup, ...]


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
    endpoint: str = ""


class ApplyResult(StrEnum):
    CREATED = "Created"
    UPDATED = "Updated"
    UNCHANGED = "Unchanged"
    SKIPPED = "Skipped"


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
