"""NIC-aware placement vs the placements a cluster gives without it, and the all-RDMA ideal.

Two clusters: "mixed" (two InfiniBand islands of 2 x 8 H100, a RoCE island of 2 x 8
A100-80GB, an Ethernet-only node of 8 L4) and "uneven" (two InfiniBand islands of 3 x 8
H100 and a RoCE island of 2 x 8 A100-80GB, islands not a multiple of a two-node stage),
nodes listed by name as the API returns them (islands interleaved). Every strategy searches
the same layout space and is priced by the same cost model with the same speed-aware layer
split, so they differ only in where ranks go:

- island packing: nodes sorted by island label, ranks fill them in order;
- the default scheduler: nodes in the arbitrary order pods land on them, ranks
  node-contiguous, over SEEDS orders (mean ratio with a 95% bootstrap interval, and worst);
- round-robin (ranks dealt one node at a time), kept as a footnote: no launcher does it;
- the all-RDMA ideal: the NIC-aware search as if every inter-node link were RDMA.

Views: each strategy's best layout, and layouts whose stages span two nodes imposed on all
(there placement alone decides whether TP/SP/DP collectives cross Ethernet). Headlines are
geometric means over every cluster, model and view.

Ends with ``RESULT`` lines: ``placement_speedup_vs_island_packing``,
``placement_speedup_vs_default_scheduler``, ``placement_over_ideal``,
``placement_speedup_vs_round_robin``.

Run: ``python benchmarks/placement.py`` (a few seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from common.bootstrap import interval
from common.result_lines import print_result

from modelfleet.scheduling.costmodel import CostCoefficients, ModelSpec
from modelfleet.scheduling.inventory import Inventory, describe_node, read_inventory
from modelfleet.scheduling.placement import (
    ISLAND_ORDER,
    ROUND_ROBIN,
    Layout,
    Placement,
    RankOrder,
    Result,
    SearchSpace,
    order_as_scheduled,
    plan_all_rdma,
    plan_in_order,
    plan_placement,
)

SEEDS = range(10)
Planner = Callable[[ModelSpec, Inventory, SearchSpace | None, CostCoefficients | None], Result]


def in_order(order: RankOrder) -> Planner:
    """A baseline planner that hands GPUs to ranks in ``order``."""

    def plan(
        model: ModelSpec,
        inventory: Inventory,
        space: SearchSpace | None,
        coefficients: CostCoefficients | None,
    ) -> Result:
        return plan_in_order(model, inventory, order, space, coefficients)

    return plan


PLANNERS: dict[str, Planner] = {
    "nic-aware": plan_placement,
    "island packing": in_order(ISLAND_ORDER),
    **{f"default scheduler {seed}": in_order(order_as_scheduled(seed)) for seed in SEEDS},
    "round-robin": in_order(ROUND_ROBIN),
    "all-rdma ideal": plan_all_rdma,
}
MODELS = {
    "13B, seq 4k, batch 256": ModelSpec(
        layers=40, hidden=5120, params=13e9, seq_len=4096, global_batch=256
    ),
    "30B, seq 8k, batch 128": ModelSpec(
        layers=60, hidden=6656, params=30e9, seq_len=8192, global_batch=128
    ),
}


H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"


def mixed_cluster() -> Inventory:
    """Nodes in the order the API lists them (by name), which says nothing about islands."""
    return read_inventory(
        [
            describe_node("gpu-01", H100, 8, "infiniband", "ib-a"),
            describe_node("gpu-02", H100, 8, "infiniband", "ib-b"),
            describe_node("gpu-03", A100, 8, "roce", "roce"),
            describe_node("gpu-04", H100, 8, "infiniband", "ib-a"),
            describe_node("gpu-05", H100, 8, "infiniband", "ib-b"),
            describe_node("gpu-06", A100, 8, "roce", "roce"),
            describe_node("gpu-07", "NVIDIA-L4", 8, **{"modelfleet.io/nic-gbps": "25"}),
        ]
    )


def uneven_cluster() -> Inventory:
    """Islands of three nodes: a two-node stage cut in rank order straddles two islands."""
    islands = ["ib-a", "ib-b", "roce", "ib-a", "ib-b", "roce", "ib-a", "ib-b"]
    return read_inventory(
        [
            describe_node(
                f"gpu-{i + 1:02d}",
                A100 if island == "roce" else H100,
                8,
                "roce" if island == "roce" else "infiniband",
                island,
            )
            for i, island in enumerate(islands)
        ]
    )


CLUSTERS = {"mixed": mixed_cluster, "uneven": uneven_cluster}


def describe(placement: Placement) -> str:
    layout = placement.layout
    parts = placement.breakdown
    return (
        f"tp{layout.tp} pp{layout.pp} dp{layout.dp} sp{layout.sp} on {layout.world} GPUs; "
        f"compute {parts.compute_s:.2f} tp {parts.tp_s:.2f} sp {parts.sp_s:.2f} "
        f"pp {parts.pp_s:.2f} bubble {parts.bubble_s:.2f} dp {parts.dp_s:.2f}"
    )


def compare(
    title: str, model: ModelSpec, inventory: Inventory, space: SearchSpace
) -> dict[str, float]:
    """Print each strategy's placement; return its iteration time over NIC-aware's
    (``inf`` where it cannot place the layout)."""
    coefficients = CostCoefficients()
    results = {name: plan(model, inventory, space, coefficients) for name, plan in PLANNERS.items()}
    reference = results["nic-aware"]
    assert isinstance(reference, Placement), getattr(reference, "reason", "")
    print(title)
    ratios = {}
    for name, result in results.items():
        if not isinstance(result, Placement):
            ratios[name] = math.inf
            if not name.startswith("default scheduler"):
                print(f"  {name:15s} unschedulable: {getattr(result, 'reason', '')}")
            continue
        ratios[name] = result.iteration_s / reference.iteration_s
        if not name.startswith("default scheduler"):
            print(
                f"  {name:15s} {result.iteration_s:8.2f} s  {ratios[name]:6.2f}x nic-aware  "
                f"{describe(result)}"
            )
    shuffled = np.array([ratios.pop(f"default scheduler {seed}") for seed in SEEDS])
    placed = shuffled[np.isfinite(shuffled)]
    ratios["default scheduler"] = float(placed.mean()) if len(placed) else math.inf
    low, high = interval(placed, np.mean) if len(placed) else (math.nan, math.nan)
    print(
        f"  {'default sched.':15s} mean {ratios['default scheduler']:.2f}x nic-aware "
        f"[{low:.2f}, {high:.2f}], worst {placed.max() if len(placed) else math.nan:.2f}x, "
        f"{len(shuffled) - len(placed)} of {len(shuffled)} node orders do not fit"
    )
    return ratios


def geometric_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in finite) / len(finite))


TWO_NODE_STAGES = (Layout(tp=8, pp=3, dp=2, sp=1), Layout(tp=4, pp=3, dp=2, sp=2))


def main() -> None:
    rows: list[dict[str, float]] = []
    for cluster_name, build in CLUSTERS.items():
        inventory = build()
        print(
            f"== {cluster_name}: {len(inventory.devices)} GPUs on {len(inventory.nodes)} nodes; "
            "ratios are iteration time / NIC-aware iteration time"
        )
        for name, model in MODELS.items():
            title = f"{cluster_name}, {name}: best layout per strategy"
            rows.append(compare(title, model, inventory, SearchSpace()))
            for layout in TWO_NODE_STAGES:
                only = SearchSpace(
                    tp=(layout.tp,), pp=(layout.pp,), dp=(layout.dp,), sp=(layout.sp,)
                )
                title = (
                    f"{cluster_name}, {name}: tp{layout.tp} pp{layout.pp} dp{layout.dp} "
                    f"sp{layout.sp} for all"
                )
                rows.append(compare(title, model, inventory, only))
    for name in ("island packing", "default scheduler", "round-robin"):
        unplaced = sum(not math.isfinite(row[name]) for row in rows)
        print(
            f"{name}: geometric mean {geometric_mean([row[name] for row in rows]):.3f}x over "
            f"{len(rows) - unplaced} rows ({unplaced} it cannot place)"
        )
    print_result(
        "placement_speedup_vs_island_packing", geometric_mean([r["island packing"] for r in rows])
    )
    print_result(
        "placement_speedup_vs_default_scheduler",
        geometric_mean([r["default scheduler"] for r in rows]),
    )
    print_result("placement_over_ideal", geometric_mean([1 / r["all-rdma ideal"] for r in rows]))
    print_result(
        "placement_speedup_vs_round_robin", geometric_mean([r["round-robin"] for r in rows])
    )


if __name__ == "__main__":
    main()
