"""NIC-aware placement of 4-D parallel training (after Holmes).

Tensor, sequence and data parallelism run collectives every layer or every step; pipeline
parallelism only sends activations between neighbouring stages. So on a cluster where only
some nodes share an RDMA fabric, the collectives must stay inside one RDMA island (or one
node) and only pipeline point-to-point traffic may cross Ethernet.

NIC-aware planning
------------------
For each layout in the search space: cut every island (or Ethernet-only node) into stage
slots made of whole TP blocks (a TP block never leaves a node), fastest GPUs first; choose
how many stages to take from each class of identical islands (every split is tried); order
stages by island so that only island boundaries cross Ethernet; also try the fastest
islands packed in a row, where a stage may straddle two islands (its DP all-reduce then
crosses Ethernet once a step, which can beat leaving fast GPUs idle); give each stage layers in
proportion to its speed within its memory (``allocate_layers``); price the iteration with
the cost model. The cheapest wins.

Baselines, priced by the same model and given the same speed-aware layer allocation, so
that they differ from NIC-aware planning only in where ranks go: ``plan_in_order`` with
``ISLAND_ORDER`` (ranks fill nodes sorted by island label), ``order_as_scheduled(seed)``
(nodes in arbitrary order, ranks node-contiguous), ``INVENTORY_ORDER`` (ranks fill nodes
in inventory order) or ``ROUND_ROBIN`` (ranks dealt to nodes in turn); and
``plan_all_rdma`` (the NIC-aware search on the same GPUs as if every link were RDMA).

Layouts and rank order live in ``parallel_layout``, pricing in ``iteration_cost``, stage
enumeration in ``stage_candidates``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.scheduling.costmodel import CostCoefficients, ModelSpec, make_link_fn
from modelfleet.scheduling.inventory import Device, Inventory
from modelfleet.scheduling.iteration_cost import DEFAULT_USABLE_FRACTION, IterationCost
from modelfleet.scheduling.parallel_layout import (
    Breakdown,
    Layout,
    SearchSpace,
    Stage,
    allocate_layers,
    list_collective_groups,
)
from modelfleet.scheduling.stage_candidates import (
    INVENTORY_ORDER,
    ISLAND_ORDER,
    ROUND_ROBIN,
    Candidates,
    RankOrder,
    enumerate_fabric_stages,
    enumerate_nic_aware_stages,
    order_as_scheduled,
    stage_in_order,
)


@dataclass(frozen=True)
class Placement:
    strategy: str
    layout: Layout
    stages: tuple[Stage, ...]
    breakdown: Breakdown

    @property
    def iteration_s(self) -> float:
        return self.breakdown.total_s

    @property
    def rank_nodes(self) -> tuple[str, ...]:
        """Node name of every global rank, in rank order."""
        return tuple(d.node.name for stage in self.stages for d in stage.devices)


@dataclass(frozen=True)
class Unschedulable:
    """Why no layout could be placed, with the memory numbers when memory was the reason."""

    reason: str
    needed_gib_per_gpu: float | None = None
    available_gib_per_gpu: float | None = None


Result = Placement | Unschedulable


def plan_placement(
    model: ModelSpec,
    inventory: Inventory,
    space: SearchSpace | None = None,
    coefficients: CostCoefficients | None = None,
    usable_fraction: float = DEFAULT_USABLE_FRACTION,
) -> Result:
    """NIC-aware placement: collectives inside islands, pipeline across them."""
    planner = _Planner.create(model, space, coefficients, usable_fraction, all_rdma=False)
    return planner.search(inventory, "nic-aware", enumerate_nic_aware_stages)


def plan_all_rdma(
    model: ModelSpec,
    inventory: Inventory,
    space: SearchSpace | None = None,
    coefficients: CostCoefficients | None = None,
    usable_fraction: float = DEFAULT_USABLE_FRACTION,
) -> Result:
    """The ideal: the same GPUs with every inter-node link RDMA, planned the same way."""
    planner = _Planner.create(model, space, coefficients, usable_fraction, all_rdma=True)
    return planner.search(inventory, "all-rdma", enumerate_fabric_stages)


def plan_in_order(
    model: ModelSpec,
    inventory: Inventory,
    order: RankOrder,
    space: SearchSpace | None = None,
    coefficients: CostCoefficients | None = None,
    usable_fraction: float = DEFAULT_USABLE_FRACTION,
) -> Result:
    """NIC-oblivious baseline: ranks take GPUs in ``order``, stage after stage (see
    ``ROUND_ROBIN``, ``INVENTORY_ORDER``, ``ISLAND_ORDER``, ``order_as_scheduled``)."""
    planner = _Planner.create(model, space, coefficients, usable_fraction, all_rdma=False)
    return planner.search(inventory, order.name, stage_in_order(order.arrange))


def evaluate(
    model: ModelSpec,
    layout: Layout,
    stage_devices: Sequence[Sequence[Device]],
    coefficients: CostCoefficients | None = None,
    usable_fraction: float = DEFAULT_USABLE_FRACTION,
    strategy: str = "given",
) -> Placement | None:
    """Price a given rank-to-GPU mapping (stage by stage, in rank order) with layers
    allocated by speed; None if it does not fit in memory. For what-if questions and tests."""
    planner = _Planner.create(model, None, coefficients, usable_fraction, all_rdma=False)
    return planner.place(strategy, layout, [list(s) for s in stage_devices])


@dataclass(frozen=True)
class _Planner:
    space: SearchSpace
    cost: IterationCost

    @classmethod
    def create(
        cls,
        model: ModelSpec,
        space: SearchSpace | None,
        coefficients: CostCoefficients | None,
        usable_fraction: float,
        all_rdma: bool,
    ) -> _Planner:
        coefficients = coefficients or CostCoefficients()
        link_fn = make_link_fn(coefficients, all_rdma=all_rdma)
        cost = IterationCost(model, coefficients, usable_fraction, link_fn)
        return cls(space or SearchSpace(), cost)

    def search(self, inventory: Inventory, strategy: str, candidates: Candidates) -> Result:
        devices = inventory.devices
        best: Placement | None = None
        neediest = math.inf
        smallest_used = math.inf
        for layout in self.space.layouts(self.cost.model, len(devices)):
            neediest = min(neediest, self.cost.even_need_gib(layout))
            for stages in candidates(devices, layout):
                smallest_used = min(smallest_used, *(d.memory_gib for s in stages for d in s))
                placement = self.place(strategy, layout, stages)
                if placement is not None and (
                    best is None or placement.iteration_s < best.iteration_s
                ):
                    best = placement
        if best is not None:
            return best
        if math.isinf(smallest_used):
            return Unschedulable(
                f"no layout in the search space can be placed by {strategy} on {len(devices)} "
                "GPUs: check world sizes and batch divisibility, and for nic-aware that TP "
                "groups fit in one node and SP groups in one RDMA island"
            )
        largest = max(d.memory_gib for d in devices) * self.cost.usable_fraction
        if neediest > largest:
            return Unschedulable(
                f"no layout fits in memory: the least demanding needs {neediest:.1f} GiB per "
                f"GPU, the largest GPU offers {largest:.1f} GiB",
                needed_gib_per_gpu=neediest,
                available_gib_per_gpu=largest,
            )
        available = smallest_used * self.cost.usable_fraction
        return Unschedulable(
            f"no {strategy} placement fits in memory: the least demanding layout needs "
            f"{neediest:.1f} GiB per GPU and {strategy} puts ranks on GPUs offering only "
            f"{available:.1f} GiB",
            needed_gib_per_gpu=neediest,
            available_gib_per_gpu=available,
        )

    def place(
        self, strategy: str, layout: Layout, stage_devices: list[list[Device]]
    ) -> Placement | None:
        micro_batches = self.cost.model.global_batch // (layout.dp * self.cost.model.micro_batch)
        per_layer = [self.cost.stage_seconds(layout, devs, 1) for devs in stage_devices]
        caps = [
            self.cost.layer_cap(layout, devs, s, micro_batches)
            for s, devs in enumerate(stage_devices)
        ]
        try:
            counts = allocate_layers([sum(p) for p in per_layer], caps, self.cost.model.layers)
        except ValueError:
            return None
        stages = tuple(Stage(tuple(d), n) for d, n in zip(stage_devices, counts, strict=True))
        return Placement(strategy, layout, stages, self.cost.estimate(layout, stages))


__all__ = [
    "DEFAULT_USABLE_FRACTION",
    "INVENTORY_ORDER",
    "ISLAND_ORDER",
    "ROUND_ROBIN",
    "Breakdown",
    "Layout",
    "Placement",
    "RankOrder",
    "Result",
    "SearchSpace",
    "Stage",
    "Unschedulable",
    "allocate_layers",
    "evaluate",
    "list_collective_groups",
    "order_as_scheduled",
    "plan_all_rdma",
    "plan_in_order",
    "plan_placement",
]
