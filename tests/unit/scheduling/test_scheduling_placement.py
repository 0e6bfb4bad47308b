"""NIC-aware placement: collectives off Ethernet, optimal on tiny clusters, beats baselines."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfleet.scheduling.costmodel import (
    CostCoefficients,
    LinkKind,
    ModelSpec,
    find_link,
)
from modelfleet.scheduling.inventory import Device, Inventory, describe_node, read_inventory
from modelfleet.scheduling.placement import (
    DEFAULT_USABLE_FRACTION,
    INVENTORY_ORDER,
    ROUND_ROBIN,
    Layout,
    Placement,
    SearchSpace,
    Unschedulable,
    allocate_layers,
    evaluate,
    list_collective_groups,
    plan_all_rdma,
    plan_in_order,
    plan_placement,
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


def assert_collectives_avoid_ethernet(placement: Placement, kinds: str = "tp sp dp") -> None:
    """No collective of the given kinds between two GPUs linked only by Ethernet."""
    coefficients = CostCoefficients()
    for stage in placement.stages:
        for kind, groups in list_collective_groups(placement.layout, stage.devices).items():
            if kind not in kinds.split():
                continue
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
def test_tp_and_sp_groups_never_straddle_ethernet(
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
    assert_collectives_avoid_ethernet(placement, "tp sp")
    assert sum(s.layers for s in placement.stages) == layers
    assert len(placement.rank_nodes) == placement.layout.world


def test_nic_aware_beats_round_robin_and_packing_on_a_mixed_cluster() -> None:
    inventory = mixed_cluster()
    model = ModelSpec(layers=40, hidden=5120, params=13e9, seq_len=4096, global_batch=256)
    space = SearchSpace(tp=(1, 2, 4, 8), pp=(1, 2, 4, 6), dp=(1, 2, 4), sp=(1, 2))

    aware = placed(plan_placement(model, inventory, space))
    round_robin = placed(plan_in_order(model, inventory, ROUND_ROBIN, space))
    packed = placed(plan_in_order(model, inventory, INVENTORY_ORDER, space))
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
    packed = placed(plan_in_order(model, inventory, INVENTORY_ORDER, one))
    round_robin = placed(plan_in_order(model, inventory, ROUND_ROBIN, one))

    assert aware.layout == packed.layout == round_robin.layout
    assert_collectives_avoid_ethernet(aware)
    assert packed.breakdown.dp_s > aware.breakdown.dp_s
    assert round_robin.breakdown.tp_s > aware.breakdown.tp_s
    assert aware.iteration_s < min(packed.iteration_s, round_robin.iteration_s)


def test_single_gpu_iteration_matches_the_hand_computed_compute_time() -> None:
    """One H100, no parallelism: the iteration is 8 micro-batches of pure compute.

    Per micro-batch of TINY_MODEL (4 layers, hidden 1024, 2e8 params, 2048 tokens), with the
    default efficiencies and the H100's 989 TFLOPS and 3350 GB/s:
      linear     6 x 2e8 x 2048            = 2.4576e12 FLOP / (989e12 x 0.45) = 5.52208e-3 s
      attention  6 x 4 x 1024 x 2048^2     = 1.03079e11 FLOP / (989e12 x 0.35) = 2.97788e-4 s
      memory     3 x 2e8 x 2 B (weights)
                 + 2 x 34 x 1024 x 4 x 2048 B (activations) = 1.77043e9 B
                                                  / (3350e9 x 0.7) = 7.54979e-4 s
      sum                                                          = 6.57484e-3 s
    global_batch 8 / micro_batch 1 gives 8 micro-batches: 5.25987e-2 s, with no TP, SP,
    pipeline or gradient traffic.
    """
    inventory = read_inventory([describe_node("h", "NVIDIA-H100-80GB-HBM3", 1, "infiniband", "a")])

    placement = evaluate(TINY_MODEL, Layout(tp=1, pp=1, dp=1, sp=1), [inventory.devices])

    assert placement is not None
    assert placement.iteration_s == pytest.approx(5.259874e-2, rel=1e-6)
    parts = placement.breakdown
    assert parts.compute_s == pytest.approx(5.259874e-2, rel=1e-6)
    assert (parts.tp_s, parts.sp_s, parts.pp_s, parts.bubble_s, parts.dp_s) == (0, 0, 0, 0, 0)


def test_two_stage_pipeline_matches_the_hand_computed_1f1b_time() -> None:
    """Two H100s of one node, one stage each: the 1F1B schedule priced by hand.

    Each stage holds 2 of the 4 layers, so a micro-batch takes half the single-GPU
    6.57484e-3 s above: 3.28742e-3 s. One hop sends 2048 tokens x 1024 x 2 B = 4 MiB over
    NVLink (5 us + 4194304 x 8 / 2400e9 = 1.89810e-5 s), forward and backward: 3.79620e-5 s.
    The stage is the bottleneck, so 8 micro-batches take
    (8 - 1) x 3.28742e-3 + 2 x 3.28742e-3 + 3.79620e-5 = 2.96248e-2 s:
    8 x 3.28742e-3 s of compute, the hop, and one stage time of bubble (3.28742e-3 s).
    """
    inventory = read_inventory([describe_node("h", "NVIDIA-H100-80GB-HBM3", 2, "infiniband", "a")])
    first, second = inventory.devices

    placement = evaluate(TINY_MODEL, Layout(tp=1, pp=2, dp=1, sp=1), [[first], [second]])

    assert placement is not None
    assert [stage.layers for stage in placement.stages] == [2, 2]
    assert placement.iteration_s == pytest.approx(2.962475e-2, rel=1e-6)
    assert placement.breakdown.compute_s == pytest.approx(2.629937e-2, rel=1e-6)
    assert placement.breakdown.pp_s == pytest.approx(3.796203e-5, rel=1e-6)
    assert placement.breakdown.bubble_s == pytest.approx(3.287421e-3, rel=1e-6)
    assert placement.breakdown.dp_s == 0


def test_layers_follow_speed_on_a_mixed_pipeline() -> None:
    """H100 stages (989 TFLOPS) must take more of the 40 layers than A100 ones (312)."""
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
    tensor_parallel_across_nodes = SearchSpace(tp=(2,), pp=(1,), dp=(2,), sp=(1,))

    result = plan_placement(TINY_MODEL, inventory, tensor_parallel_across_nodes)

    assert isinstance(result, Unschedulable)
    assert "TP groups" in result.reason
    assert result.needed_gib_per_gpu is None


def test_data_parallel_alone_may_cross_ethernet() -> None:
    """Four one-GPU Ethernet nodes can still train data-parallel: the gradient all-reduce
    crosses Ethernet once a step, which is what plain DDP does there."""
    inventory = read_inventory([describe_node(f"e{i}", "NVIDIA-L4", 1) for i in range(4)])
    only_data_parallel = SearchSpace(tp=(1,), pp=(1,), dp=(4,), sp=(1,))

    result = plan_placement(TINY_MODEL, inventory, only_data_parallel)

    assert isinstance(result, Placement)
    assert sorted(result.rank_nodes) == ["e0", "e1", "e2", "e3"]
    assert result.breakdown.dp_s > 0 and result.breakdown.tp_s == result.breakdown.sp_s == 0


def test_allocate_layers_balances_and_respects_caps() -> None:
    assert allocate_layers([1.0, 2.0], [10, 10], 9) == [6, 3]
    assert allocate_layers([1.0, 2.0], [4, 10], 9) == [4, 5]
    with pytest.raises(ValueError):
        allocate_layers([1.0, 1.0], [2, 2], 5)


# A 7B-class shape with 2e8 parameters per layer, trained at tp=2, pp=4 on H100s. Per layer:
#   states       2e8 params x 16 B (bf16 weights and grads, fp32 Adam) / tp 2 = 1.6e9 B
#   activations  34 B x 4096 hidden x 2048 tokens / (tp 2 x sp 1)           = 142606336 B
#                per micro-batch in flight; 1F1B keeps min(pp - stage, 8) of them, so
#   stage 0: 1.6e9 + 4 x 142606336 = 2170425344 B     stage 1: 1.6e9 + 3 x ... = 2027819008 B
#   stage 2: 1.6e9 + 2 x ...       = 1885212672 B     stage 3: 1.6e9 + 1 x ... = 1742606336 B
# An H100 offers 80 GiB x 0.92 = 79027398246.4 B, so the stages hold
#   floor(79027398246.4 / 2170425344) = 36,  / 2027819008 -> 38,  / 1885212672 -> 41,
#   / 1742606336 -> 45 layers: 160 in all.
PARAMS_PER_LAYER = 2e8
SEVEN_B_LAYOUT = Layout(tp=2, pp=4, dp=1, sp=1)


def seven_b_like(layers: int) -> ModelSpec:
    return ModelSpec(
        layers=layers,
        hidden=4096,
        params=PARAMS_PER_LAYER * layers,
        seq_len=2048,
        global_batch=8,
    )


def test_stages_fill_exactly_to_their_hand_computed_memory_caps() -> None:
    """160 layers fit the caps worked out above only at (36, 38, 41, 45); 161 do not fit."""
    inventory = read_inventory([describe_node("h", "NVIDIA-H100-80GB-HBM3", 8, "infiniband", "a")])
    devices = inventory.devices
    stages = [devices[2 * s : 2 * s + 2] for s in range(4)]

    full = evaluate(seven_b_like(160), SEVEN_B_LAYOUT, stages)
    over = evaluate(seven_b_like(161), SEVEN_B_LAYOUT, stages)

    assert full is not None
    assert [stage.layers for stage in full.stages] == [36, 38, 41, 45]
    assert over is None


def test_unschedulable_need_is_the_hand_computed_first_stage_memory() -> None:
    """32 layers at pp=4 put 8 on stage 0: 8 x 2170425344 B = 16.170928955078125 GiB, more
    than a T4's 16 GiB x 0.92 = 14.72 GiB."""
    inventory = read_inventory([describe_node("t", "Tesla-T4", 8)])
    only = SearchSpace(tp=(2,), pp=(4,), dp=(1,), sp=(1,))

    result = plan_placement(seven_b_like(32), inventory, only)

    assert isinstance(result, Unschedulable)
    assert result.needed_gib_per_gpu == pytest.approx(16.170928955078125, rel=1e-12)
    assert result.available_gib_per_gpu == pytest.approx(14.72, rel=1e-12)
