"""NIC-aware placement: collectives off Ethernet, optimal on tiny clusters, beats baselines."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfleet.scheduling.costmodel import (
    GIB,
    CostCoefficients,
    LinkKind,
    ModelSpec,
    find_link,
)
from modelfleet.scheduling.inventory import Device, Inventory, describe_node, read_inventory
from modelfleet.scheduling.placement import (
    DEFAULT_USABLE_FRACTION,
    Layout,
    Placement,
    SearchSpace,
    Unschedulable,
    allocate_layers,
    evaluate,
    list_collective_groups,
    plan_all_rdma,
    plan_packed,
    plan_placement,
    plan_round_robin,
)

TINY_MODEL = ModelSpec(layers=4, hidden=1024, params=2e8, seq_len=2048, global_batch=8)
TINY_SPACE = SearchSpace(tp=(1, 2), pp=(1, 2, 3), dp=(1, 2), sp=(1, 2))


def tiny_cluster() -> Inventory:
    return read_inventory(
        [
            describe_node("ib0", "NVIDIA-H100-80GB-HBM3", 2, "infiniband", "x"),
            describe_node("ib1", "NVIDIA-H100-80GB-HBM3", 2, "infiniband", "x"),
            describe_node("eth", "NVIDIA-L4", 2),
        ]
    )


def split_cluster() -> Inventory:
    """Three 2-GPU nodes that reach each other only over Ethernet."""
    return read_inventory(
        [
            describe_node("x", "NVIDIA-H100-80GB-HBM3", 2, "infiniband", "x"),
            describe_node("y", "NVIDIA-H100-80GB-HBM3", 2, "roce", "y"),
            describe_node("z", "NVIDIA-A100-SXM4-80GB", 2),
        ]
    )


def mixed_cluster() -> Inventory:
    """Two InfiniBand islands of H100 nodes, an A100 RoCE island, an Ethernet-only L4 node."""
    return read_inventory(
        [
            *(
                describe_node(f"h{i}{j}", "NVIDIA-H100-80GB-HBM3", 8, "infiniband", f"ib{i}")
                for i in range(2)
                for j in range(2)
            ),
            *(describe_node(f"a{j}", "NVIDIA-A100-SXM4-80GB", 8, "roce", "roce") for j in range(2)),
            describe_node("l4", "NVIDIA-L4", 8),
        ]
    )


def placed(result: Placement | Unschedulable) -> Placement:
    assert isinstance(result, Placement), result
    return result


def assert_collectives_avoid_ethernet(placement: Placement) -> None:
    coefficients = CostCoefficients()
    for stage in placement.stages:
        for kind, groups in list_collective_groups(placement.layout, stage.devices).items():
            for group in groups:
                for a, b in itertools.combinations(group, 2):
                    link = find_link(a, b, coefficients)
                    assert link.kind is not LinkKind.ETHERNET, (kind, a.node.name, b.node.name)


def distinct_rank_orders(devices: Sequence[Device], world: int) -> Iterator[list[Device]]:
    """Every rank-to-GPU mapping up to swapping identical GPUs of one node."""
    names = [d.node.name for d in devices]
    for order in set(itertools.permutations(names, world)):
        pools = {n: [d for d in devices if d.node.name == n] for n in set(names)}
        yield [pools[n].pop() for n in order]


@pytest.mark.parametrize("cluster", [tiny_cluster, split_cluster])
def test_matches_brute_force_on_a_tiny_cluster(cluster: Callable[[], Inventory]) -> None:
    """Every rank-to-GPU mapping of every layout, Ethernet-straddling ones included."""
    inventory = cluster()
    best = placed(plan_placement(TINY_MODEL, inventory, TINY_SPACE))

    brute = float("inf")
    for layout in TINY_SPACE.layouts(TINY_MODEL, len(inventory.devices)):
        for ranks in distinct_rank_orders(inventory.devices, layout.world):
            stages = [
                ranks[s * layout.stage_size : (s + 1) * layout.stage_size] for s in range(layout.pp)
            ]
            candidate = evaluate(TINY_MODEL, layout, stages)
            if candidate is not None:
                brute = min(brute, candidate.iteration_s)

    assert best.iteration_s == pytest.approx(brute, rel=1e-9)
    if cluster is split_cluster:
        assert len(set(best.rank_nodes)) > 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.lists(
        st.tuples(
            st.sampled_from(["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB", "Tesla-T4"]),
            st.sampled_from([1, 2, 4]),
            st.sampled_from([("infiniband", "a"), ("roce", "b"), ("ethernet", None)]),
        ),
        min_size=1,
        max_size=5,
    ),
    layers=st.integers(2, 8),
)
def test_tp_sp_dp_groups_never_straddle_ethernet(
    nodes: list[tuple[str, int, tuple[str, str | None]]], layers: int
) -> None:
    inventory = read_inventory(
        [
            describe_node(f"n{i}", product, gpus, nic, island)
            for i, (product, gpus, (nic, island)) in enumerate(nodes)
        ]
    )
    model = ModelSpec(layers=layers, hidden=512, params=5e7, seq_len=1024, global_batch=8)

    result = plan_placement(model, inventory, TINY_SPACE)

    placement = placed(result)
    assert_collectives_avoid_ethernet(placement)
    assert sum(s.layers for s in placement.stages) == layers
    assert len(placement.rank_nodes) == placement.layout.world


def test_nic_aware_beats_round_robin_and_packing_on_a_mixed_cluster() -> None:
    inventory = mixed_cluster()
    model = ModelSpec(layers=40, hidden=5120, params=13e9, seq_len=4096, global_batch=256)
    space = SearchSpace(tp=(1, 2, 4, 8), pp=(1, 2, 4, 6), dp=(1, 2, 4), sp=(1, 2))

    aware = placed(plan_placement(model, inventory, space))
    round_robin = placed(plan_round_robin(model, inventory, space))
    packed = placed(plan_packed(model, inventory, space))
    ideal = placed(plan_all_rdma(model, inventory, space))

    assert aware.iteration_s < round_robin.iteration_s
    assert aware.iteration_s <= packed.iteration_s
    assert aware.iteration_s <= 1.05 * ideal.iteration_s
    assert_collectives_avoid_ethernet(aware)


def test_same_layout_placed_obliviously_crosses_ethernet_and_is_slower() -> None:
    """Nodes listed by name, islands interleaved; stages of two nodes each."""
    h100 = "NVIDIA-H100-80GB-HBM3"
    inventory = read_inventory(
        [
            describe_node("gpu-1", h100, 8, "infiniband", "a"),
            describe_node("gpu-2", h100, 8, "infiniband", "b"),
            describe_node("gpu-3", h100, 8, "infiniband", "a"),
            describe_node("gpu-4", h100, 8, "infiniband", "b"),
        ]
    )
    model = ModelSpec(layers=40, hidden=5120, params=13e9, seq_len=4096, global_batch=256)
    one = SearchSpace(tp=(8,), pp=(2,), dp=(2,), sp=(1,))

    aware = placed(plan_placement(model, inventory, one))
    packed = placed(plan_packed(model, inventory, one))
    round_robin = placed(plan_round_robin(model, inventory, one))

    assert aware.layout == packed.layout == round_robin.layout
    assert_collectives_avoid_ethernet(aware)
    assert packed.breakdown.dp_s > aware.breakdown.dp_s
    assert round_robin.breakdown.tp_s > aware.breakdown.tp_s
    assert aware.iteration_s < min(packed.iteration_s, round_robin.iteration_s)


def test_breakdown_adds_up_and_layers_follow_speed() -> None:
    inventory = mixed_cluster()
    model = ModelSpec(layers=40, hidden=5120, params=13e9, seq_len=4096, global_batch=256)
    layout = Layout(tp=8, pp=4, dp=1, sp=1)
    by_node = {
        n.name: [d for d in inventory.devices if d.node.name == n.name] for n in inventory.nodes
    }

    placement = evaluate(
        model, layout, [by_node["h00"], by_node["h01"], by_node["a0"], by_node["a1"]]
    )

    assert placement is not None
    parts = placement.breakdown
    assert parts.total_s == pytest.approx(
        parts.compute_s + parts.tp_s + parts.sp_s + parts.pp_s + parts.bubble_s + parts.dp_s
    )
    h100_layers, a100_layers = placement.stages[0].layers, placement.stages[2].layers
    assert h100_layers > a100_layers


def test_infeasible_request_reports_needed_and_available_memory() -> None:
    model = ModelSpec(layers=8, hidden=16384, params=1e12, seq_len=8192, global_batch=8)

    result = plan_placement(model, tiny_cluster(), TINY_SPACE)

    assert isinstance(result, Unschedulable)
    assert result.needed_gib_per_gpu is not None and result.available_gib_per_gpu is not None
    assert result.needed_gib_per_gpu > result.available_gib_per_gpu
    assert result.available_gib_per_gpu == pytest.approx(80 * DEFAULT_USABLE_FRACTION)
    assert f"{result.needed_gib_per_gpu:.1f} GiB" in result.reason


def test_topology_that_forbids_every_layout_is_reported() -> None:
    inventory = read_inventory([describe_node(f"e{i}", "NVIDIA-L4", 1) for i in range(4)])
    only_data_parallel = SearchSpace(tp=(1,), pp=(1,), dp=(4,), sp=(1,))

    result = plan_placement(TINY_MODEL, inventory, only_data_parallel)

    assert isinstance(result, Unschedulable)
    assert "RDMA island" in result.reason
    assert result.needed_gib_per_gpu is None


def test_allocate_layers_balances_and_respects_caps() -> None:
    assert allocate_layers([1.0, 2.0], [10, 10], 9) == [6, 3]
    assert allocate_layers([1.0, 2.0], [4, 10], 9) == [4, 5]
    with pytest.raises(ValueError):
        allocate_layers([1.0, 1.0], [2, 2], 5)


def test_memory_per_gpu_within_budget() -> None:
    inventory = mixed_cluster()
    model = ModelSpec(layers=40, hidden=5120, params=13e9, seq_len=4096, global_batch=256)
    placement = placed(plan_placement(model, inventory))
    m = model.global_batch // (placement.layout.dp * model.micro_batch)

    for s, stage in enumerate(placement.stages):
        layout = placement.layout
        states = model.state_bytes(stage.layers) / layout.tp
        in_flight = min(layout.pp - s, m)
        activations = (
            in_flight
            * model.activation_bytes(model.seq_len, stage.layers)
            / (layout.tp * layout.sp)
        )
        budget = min(d.memory_gib for d in stage.devices) * GIB * DEFAULT_USABLE_FRACTION
        assert states + activations <= budget
