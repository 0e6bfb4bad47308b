"""NIC-aware placement vs NIC-oblivious baselines and the all-RDMA ideal on a mixed cluster.

Cluster: two InfiniBand islands of 2 x 8 H100, one RoCE island of 2 x 8 A100-80GB, one
Ethernet-only node of 8 L4. Every strategy searches the same layout space and is priced
by the same cost model with the same speed-aware layer split, so they differ only in where
ranks go. Printed are iteration times and ratios against NIC-aware:

- best layout per strategy (each planner free to choose its layout);
- layouts whose stages span two nodes imposed on every strategy: there placement alone
  decides whether TP/SP/DP collectives cross Ethernet.

Run: ``python benchmarks/placement.py`` (a few seconds).
"""

from __future__ import annotations

from collections.abc import Callable

from result_lines import print_result, slug

from modelfleet.scheduling.costmodel import CostCoefficients, ModelSpec
from modelfleet.scheduling.inventory import Inventory, describe_node, read_inventory
from modelfleet.scheduling.placement import (
    Layout,
    Placement,
    Result,
    SearchSpace,
    plan_all_rdma,
    plan_packed,
    plan_placement,
    plan_round_robin,
)

Planner = Callable[[ModelSpec, Inventory, SearchSpace | None, CostCoefficients | None], Result]
PLANNERS: dict[str, Planner] = {
    "nic-aware": plan_placement,
    "round-robin": plan_round_robin,
    "packed": plan_packed,
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


def mixed_cluster() -> Inventory:
    """Nodes in the order the API lists them (by name), which says nothing about islands."""
    h100 = "NVIDIA-H100-80GB-HBM3"
    return read_inventory(
        [
            describe_node("gpu-01", h100, 8, "infiniband", "ib-a"),
            describe_node("gpu-02", h100, 8, "infiniband", "ib-b"),
            describe_node("gpu-03", "NVIDIA-A100-SXM4-80GB", 8, "roce", "roce"),
            describe_node("gpu-04", h100, 8, "infiniband", "ib-a"),
            describe_node("gpu-05", h100, 8, "infiniband", "ib-b"),
            describe_node("gpu-06", "NVIDIA-A100-SXM4-80GB", 8, "roce", "roce"),
            describe_node("gpu-07", "NVIDIA-L4", 8, **{"modelfleet.io/nic-gbps": "25"}),
        ]
    )


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
    """Print each planner's placement; return its iteration time over NIC-aware's."""
    coefficients = CostCoefficients()
    results = {name: plan(model, inventory, space, coefficients) for name, plan in PLANNERS.items()}
    reference = results["nic-aware"]
    print(title)
    ratios = {}
    for name, result in results.items():
        if not isinstance(result, Placement) or not isinstance(reference, Placement):
            print(f"  {name:15s} unschedulable: {getattr(result, 'reason', '')}")
            continue
        ratio = result.iteration_s / reference.iteration_s
        ratios[name] = ratio
        print(
            f"  {name:15s} {result.iteration_s:8.2f} s  {ratio:6.2f}x nic-aware  {describe(result)}"
        )
    return ratios


TWO_NODE_STAGES = (Layout(tp=8, pp=3, dp=2, sp=1), Layout(tp=4, pp=3, dp=2, sp=2))


def main() -> None:
    inventory = mixed_cluster()
    print(
        f"{len(inventory.devices)} GPUs on {len(inventory.nodes)} nodes; "
        "ratios are iteration time / NIC-aware iteration time"
    )
    headline: dict[str, float] = {}
    for name, model in MODELS.items():
        best = compare(f"{name}: best layout per strategy", model, inventory, SearchSpace())
        for planner, ratio in best.items():
            if planner != "nic-aware":
                headline[f"placement_speedup_vs_{slug(planner)}_{slug(name)}"] = ratio
        for layout in TWO_NODE_STAGES:
            only = SearchSpace(tp=(layout.tp,), pp=(layout.pp,), dp=(layout.dp,), sp=(layout.sp,))
            title = f"{name}: tp{layout.tp} pp{layout.pp} dp{layout.dp} sp{layout.sp} for all"
            compare(title, model, inventory, only)
    for result_name, value in headline.items():
        print_result(result_name, value)


if __name__ == "__main__":
    main()
