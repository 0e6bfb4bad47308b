"""Reading GPU nodes, their NICs and islands from Node objects; errors name node and label."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.scheduling.inventory import (
    GPU_SPECS,
    InventoryError,
    NicKind,
    describe_node,
    identify_product,
    read_inventory,
    read_node,
)


def node(labels: dict[str, str], allocatable: dict[str, str] | None = None) -> dict[str, Any]:
    status = {"allocatable": allocatable} if allocatable is not None else {}
    return {"metadata": {"name": "gpu-7", "labels": labels}, "status": status}


@pytest.mark.parametrize(
    ("product", "memory_mib", "expected"),
    [
        ("NVIDIA-H100-80GB-HBM3", None, "H100"),
        ("NVIDIA-H200", None, "H200"),
        ("NVIDIA-A100-SXM4-80GB", None, "A100-80GB"),
        ("NVIDIA-A100-SXM4-40GB", None, "A100-40GB"),
        ("NVIDIA-A100-PCIE", 81920, "A100-80GB"),
        ("NVIDIA-L4", None, "L4"),
        ("NVIDIA-A10G", None, "A10G"),
        ("Tesla-T4", None, "T4"),
        ("Tesla-V100-SXM2-32GB", None, "V100"),
        ("NVIDIA-GeForce-RTX-4090", None, None),
    ],
)
def test_identifies_gpu_feature_discovery_products(
    product: str, memory_mib: int | None, expected: str | None
) -> None:
    assert identify_product(product, memory_mib) == expected


def test_reads_a_full_node() -> None:
    obj = describe_node(
        "h0",
        "NVIDIA-H100-80GB-HBM3",
        8,
        "infiniband",
        "island-a",
        **{
            "modelfleet.io/nic-gbps": "3200",
            "modelfleet.io/rack": "r1",
            "topology.kubernetes.io/zone": "eu-1a",
            "nvidia.com/gpu.memory": "81559",
        },
    )

    parsed = read_node(obj)

    assert parsed is not None
    assert (parsed.name, parsed.gpu.product, parsed.gpu_count) == ("h0", "H100", 8)
    assert parsed.gpu.tflops == GPU_SPECS["H100"].tflops
    assert parsed.gpu.memory_gib == pytest.approx(81559 / 1024)
    assert (parsed.nic.kind, parsed.nic.gbps) == (NicKind.INFINIBAND, 3200.0)
    assert (parsed.island, parsed.zone, parsed.rack) == ("island-a", "eu-1a", "r1")
    assert parsed.domain == "island/island-a"


def test_defaults_are_conservative() -> None:
    parsed = read_node(node({"nvidia.com/gpu.product": "NVIDIA-L4"}, {"nvidia.com/gpu": "4"}))

    assert parsed is not None
    assert parsed.nic.kind is NicKind.ETHERNET and parsed.nic.gbps == 25.0
    assert parsed.island is None and parsed.domain == "node/gpu-7"
    assert parsed.zone == "" and parsed.rack == ""


def test_rdma_node_without_island_is_its_own_island() -> None:
    parsed = read_node(
        node(
            {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "modelfleet.io/nic": "RoCE"},
            {"nvidia.com/gpu": "8"},
        )
    )

    assert parsed is not None and parsed.island == "gpu-7"


def test_gpu_count_falls_back_to_capacity_then_label() -> None:
    from_capacity = node({"nvidia.com/gpu.product": "NVIDIA-L4"})
    from_capacity["status"] = {"capacity": {"nvidia.com/gpu": "2"}}
    from_label = node({"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.count": "3"})

    assert (parsed := read_node(from_capacity)) is not None and parsed.gpu_count == 2
    assert (parsed := read_node(from_label)) is not None and parsed.gpu_count == 3


def test_tflops_override_and_unknown_product_with_override() -> None:
    capped = read_node(
        node(
            {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "modelfleet.io/gpu-tflops": "700"},
            {"nvidia.com/gpu": "1"},
        )
    )
    custom = read_node(
        node(
            {
                "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-4090",
                "modelfleet.io/gpu-tflops": "165",
                "nvidia.com/gpu.memory": "24564",
            },
            {"nvidia.com/gpu": "1"},
        )
    )

    assert capped is not None and capped.gpu.tflops == 700.0
    assert custom is not None and custom.gpu.tflops == 165.0
    assert custom.gpu.memory_gib == pytest.approx(24564 / 1024)


def test_nodes_without_gpus_are_skipped_and_devices_are_contiguous() -> None:
    cpu = {"metadata": {"name": "cpu-0", "labels": {}}, "status": {"allocatable": {"cpu": "8"}}}
    inventory = read_inventory(
        [describe_node("a", "NVIDIA-L4", 2), cpu, describe_node("b", "Tesla-T4", 1)]
    )

    assert [n.name for n in inventory.nodes] == ["a", "b"]
    assert [(d.index, d.node.name, d.local_rank) for d in inventory.devices] == [
        (0, "a", 0),
        (1, "a", 1),
        (2, "b", 0),
    ]


@pytest.mark.parametrize(
    ("labels", "allocatable", "message"),
    [
        ({}, {"nvidia.com/gpu": "2"}, "node gpu-7: has GPUs but no label nvidia.com/gpu.product"),
        (
            {"nvidia.com/gpu.product": "Mystery-X"},
            {"nvidia.com/gpu": "1"},
            "node gpu-7: unknown GPU nvidia.com/gpu.product='Mystery-X'",
        ),
        (
            {"nvidia.com/gpu.product": "NVIDIA-L4", "modelfleet.io/nic": "token-ring"},
            {"nvidia.com/gpu": "1"},
            "node gpu-7: label modelfleet.io/nic='token-ring' is not",
        ),
        (
            {"nvidia.com/gpu.product": "NVIDIA-L4", "modelfleet.io/nic-gbps": "fast"},
            {"nvidia.com/gpu": "1"},
            "node gpu-7: label modelfleet.io/nic-gbps='fast' is not a",
        ),
        (
            {"nvidia.com/gpu.product": "NVIDIA-L4", "modelfleet.io/gpu-tflops": "-3"},
            {"nvidia.com/gpu": "1"},
            "node gpu-7: label modelfleet.io/gpu-tflops='-3' must be",
        ),
        (
            {"nvidia.com/gpu.product": "NVIDIA-L4"},
            {"nvidia.com/gpu": "two"},
            "node gpu-7: status.allocatable[nvidia.com/gpu]='two' is not an integer",
        ),
        (
            {"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.count": "-1"},
            None,
            "node gpu-7: nvidia.com/gpu.count='-1' is negative",
        ),
    ],
)
def test_bad_labels_name_the_node_and_the_label(
    labels: dict[str, str], allocatable: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(InventoryError) as raised:
        read_node(node(labels, allocatable))

    assert message in str(raised.value)


def test_node_without_name_is_rejected() -> None:
    with pytest.raises(InventoryError, match=r"metadata\.name"):
        read_node({"metadata": {}, "status": {}})
