"""Plan the workload that runs a FedJob: a pure function, no I/O."""

from __future__ import annotations

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.core.names import child_name
from modelfleet.core.workload import Blocked, Workload, WorkloadKind
from modelfleet.scheduling.inventory import Inventory, canonical_product

ENTRYPOINT = "modelfleet.federated"
"""Tells the backends a workload is a FedJob's federation, which each starts its own way."""
SITE_LABEL = "modelfleet.io/site"
"""The node label a client's ``site`` selects."""


def find_unplaceable_client(spec: FedJobSpec, inventory: Inventory) -> Blocked | None:
    """The first client whose GPUs no single node can provide, named with the numbers."""
    for index, client in enumerate(spec.clients):
        gpus, gpu_type = client.resources.gpus, client.resources.gpu_type
        if gpus == 0:
            continue
        product = canonical_product(gpu_type)
        largest = max((n.gpu_count for n in inventory.nodes if n.gpu.product == product), default=0)
        if largest < gpus:
            return Blocked(
                "Unschedulable",
                f"spec.clients[{index}] ({client.name}) needs {gpus} {gpu_type} GPU(s) on one "
                f"node; the largest {gpu_type} node has {largest}",
            )
    return None


def plan_fedjob(name: str, spec: FedJobSpec, inventory: Inventory | None) -> Workload | Blocked:
    """The FedJob's workload: its spec, which each backend turns into a Flower federation
    (local processes, or a SuperLink and a SuperNode Deployment per client placed by that
    client's GPUs, site and node selector). No Ray workers: the federation is not Ray's.

    With the cluster's inventory, a client no node can host blocks the job up front
    rather than leaving a SuperNode pending forever."""
    if inventory is not None and (blocked := find_unplaceable_client(spec, inventory)):
        return blocked
    return Workload(
        name=child_name(name, "fed"),
        kind=WorkloadKind.JOB,
        entrypoint=ENTRYPOINT,
        config=spec.to_wire(),
        worker_groups=(),
        pod=spec.pod,
    )
