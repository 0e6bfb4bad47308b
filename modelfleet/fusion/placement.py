"""Place a FusionJob's training on the cluster's GPUs, NIC-aware, and summarise the plan.

The job's ``resources`` say how many GPUs of which types it may use; the
inventory says where those GPUs are and how they are wired. The NIC-aware
planner picks the parallel layout and the nodes; the workload then pins one
Ray worker to each node it uses, so what runs is what was planned.
"""

from __future__ import annotations

from dataclasses import replace

from modelfleet.api.common import GpuRequest
from modelfleet.api.fusionjob import FusionJobSpec, PlacementGroup, PlacementSummary
from modelfleet.core.workload import (
    CPU,
    GPU_PRODUCT_LABEL,
    HOSTNAME_LABEL,
    Blocked,
    WorkerGroup,
    worker_group_name,
)
from modelfleet.scheduling.costmodel import ModelSpec
from modelfleet.scheduling.inventory import Inventory, Node, canonical_product
from modelfleet.scheduling.placement import Placement, Unschedulable, plan_placement

UNSCHEDULABLE = "Unschedulable"


def select_nodes(inventory: Inventory, requests: list[GpuRequest]) -> Inventory | Blocked:
    """The part of the cluster the job asked for: up to ``count`` GPUs of each type."""
    chosen: list[Node] = []
    for index, request in enumerate(requests):
        if request.gpu_type == CPU or request.count == 0:
            continue
        wanted, have = request.count, 0
        for node in inventory.nodes:
            if node.gpu.product != canonical_product(request.gpu_type) or have == wanted:
                continue
            take = min(node.gpu_count, wanted - have)
            chosen.append(node if take == node.gpu_count else replace(node, gpu_count=take))
            have += take
        if have < wanted:
            return Blocked(
                UNSCHEDULABLE,
                f"spec.resources[{index}] asks for {wanted} {request.gpu_type} GPU(s) but the "
                f"cluster's nodes offer {have}; label GPU nodes with {GPU_PRODUCT_LABEL} or "
                f"lower the count",
            )
    return Inventory(tuple(chosen))


def describe_model(spec: FusionJobSpec) -> ModelSpec | None:
    """The target as the cost model sees it, if the spec says how big it is."""
    architecture = spec.target.architecture
    if architecture is None:
        return None
    return ModelSpec(
        layers=architecture.layers,
        hidden=architecture.hidden_size,
        params=architecture.parameters_billions * 1e9,
        seq_len=spec.training.max_seq_len,
        global_batch=spec.training.global_batch_size,
        micro_batch=spec.training.micro_batch_size,
    )


def place_training(spec: FusionJobSpec, inventory: Inventory) -> Placement | Blocked:
    """NIC-aware placement of the job on the GPUs it asked for, or why it cannot run."""
    model = describe_model(spec)
    if model is None:
        raise ValueError("place_training needs spec.target.architecture")
    nodes = select_nodes(inventory, spec.resources)
    if isinstance(nodes, Blocked):
        return nodes
    placed = plan_placement(model, nodes)
    if isinstance(placed, Unschedulable):
        return Blocked(UNSCHEDULABLE, f"{placed.reason}; add GPUs or shrink the model")
    return placed


def _node_stages(placement: Placement) -> dict[str, tuple[Node, int, list[int]]]:
    """Per node: the node, GPUs used and the pipeline stages it holds."""
    used: dict[str, tuple[Node, int, list[int]]] = {}
    for index, stage in enumerate(placement.stages):
        for device in stage.devices:
            node, gpus, stages = used.get(device.node.name, (device.node, 0, []))
            if index not in stages:
                stages.append(index)
            used[device.node.name] = (node, gpus + 1, stages)
    return used


def summarize(placement: Placement) -> PlacementSummary:
    """The plan as it appears in the FusionJob's status."""
    layout = placement.layout
    return PlacementSummary(
        strategy=placement.strategy,
        layout=f"tp{layout.tp} pp{layout.pp} dp{layout.dp} sp{layout.sp}",
        gpus=layout.world,
        expected_step_seconds=round(placement.iteration_s, 4),
        layers_per_stage=[stage.layers for stage in placement.stages],
        groups=[
            PlacementGroup(
                node=name,
                gpu_type=node.gpu.product,
                domain=node.island or name,
                gpus=gpus,
                stages=stages,
            )
            for name, (node, gpus, stages) in _node_stages(placement).items()
        ],
    )


def pin_workers(placement: Placement) -> tuple[WorkerGroup, ...]:
    """One Ray worker per node the plan uses, pinned to that node by hostname."""
    return tuple(
        WorkerGroup(
            name=worker_group_name(index, name),
            gpu_type=node.gpu.product,
            replicas=1,
            gpus_per_worker=gpus,
            node_selector=((HOSTNAME_LABEL, name),),
        )
        for index, (name, (node, gpus, _)) in enumerate(_node_stages(placement).items())
    )
