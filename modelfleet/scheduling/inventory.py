"""Cluster inventory read from Kubernetes Node objects.

The planners need to know, per node, which GPU it has (speed, memory, HBM bandwidth), how
many, and how the node is wired to the others. Nodes arrive as plain dicts (what the
Kubernetes API returns), so this module has no client dependency and is trivially testable.

Labels read
-----------
NVIDIA GPU feature discovery (existing convention):

- ``nvidia.com/gpu.product`` (required on GPU nodes), e.g. ``NVIDIA-H100-80GB-HBM3``.
- ``nvidia.com/gpu.count``: used when the node reports no ``nvidia.com/gpu`` resource.
- ``nvidia.com/gpu.memory``: memory per GPU in MiB; defaults to the spec table.
- resource ``nvidia.com/gpu`` in ``status.allocatable`` (preferred) or ``status.capacity``.

modelfleet's own labels (no convention exists for NIC topology):

- ``modelfleet.io/nic``: ``infiniband`` | ``roce`` | ``ethernet``. Default ``ethernet``:
  assuming RDMA that is not there would place collectives on a slow link.
- ``modelfleet.io/nic-gbps``: NIC bandwidth per node in Gbit/s. Default 400 (infiniband),
  200 (roce), 25 (ethernet).
- ``modelfleet.io/rdma-island``: name of the set of nodes that reach each other over RDMA.
  Default for an RDMA node without it: an island of its own (it cannot be proven to share
  a fabric with anyone). Ignored on Ethernet nodes.
- ``modelfleet.io/gpu-tflops``: overrides the dense BF16 TFLOPS of the spec table (e.g. for
  power-capped parts), and makes an unknown GPU product usable; for an unknown product the
  memory must come from ``nvidia.com/gpu.memory`` and the HBM bandwidth defaults to
  ``UNKNOWN_HBM_GBPS``.
- ``modelfleet.io/rack`` and the well-known ``topology.kubernetes.io/zone``: carried along
  for reporting; default empty.

Nodes without GPUs are skipped: they are not an error, they are simply not candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelfleet.core.workload import GPU_PRODUCT_LABEL

GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_RESOURCE = "nvidia.com/gpu"
NIC_LABEL = "modelfleet.io/nic"
NIC_GBPS_LABEL = "modelfleet.io/nic-gbps"
ISLAND_LABEL = "modelfleet.io/rdma-island"
TFLOPS_LABEL = "modelfleet.io/gpu-tflops"
RACK_LABEL = "modelfleet.io/rack"
ZONE_LABEL = "topology.kubernetes.io/zone"

UNKNOWN_HBM_GBPS = 500.0
MIB_PER_GIB = 1024.0


class InventoryError(ValueError):
    """A node's labels or resources cannot be interpreted; the message names both."""


class NicKind(StrEnum):
    INFINIBAND = "infiniband"
    ROCE = "roce"
    ETHERNET = "ethernet"

    @property
    def is_rdma(self) -> bool:
        return self is not NicKind.ETHERNET


DEFAULT_NIC_GBPS: Mapping[NicKind, float] = {
    NicKind.INFINIBAND: 400.0,
    NicKind.ROCE: 200.0,
    NicKind.ETHERNET: 25.0,
}


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet numbers of one GPU model (dense BF16/FP16 tensor TFLOPS)."""

    product: str
    tflops: float
    memory_gib: float
    hbm_gbps: float


GPU_SPECS: Mapping[str, GpuSpec] = {
    spec.product: spec
    for spec in (
        GpuSpec("H200", 989.0, 141.0, 4800.0),
        GpuSpec("H100", 989.0, 80.0, 3350.0),
        GpuSpec("A100-80GB", 312.0, 80.0, 2039.0),
        GpuSpec("A100-40GB", 312.0, 40.0, 1555.0),
        GpuSpec("L4", 121.0, 24.0, 300.0),
        GpuSpec("A10G", 70.0, 24.0, 600.0),
        GpuSpec("T4", 65.0, 16.0, 320.0),
        GpuSpec("V100", 125.0, 32.0, 900.0),
    )
}


@dataclass(frozen=True)
class Nic:
    kind: NicKind
    gbps: float


@dataclass(frozen=True)
class Node:
    """One schedulable GPU node; ``island`` is None for Ethernet-only nodes."""

    name: str
    gpu: GpuSpec
    gpu_count: int
    nic: Nic
    island: str | None
    zone: str = ""
    rack: str = ""
    product_label: str = ""
    """The node's ``nvidia.com/gpu.product`` as GPU feature discovery wrote it."""

    @property
    def domain(self) -> str:
        """The largest set of nodes this node reaches without Ethernet: its island or itself."""
        return f"island/{self.island}" if self.island is not None else f"node/{self.name}"


@dataclass(frozen=True)
class Device:
    """One GPU: ``index`` is its position in the inventory's device order."""

    index: int
    local_rank: int
    node: Node

    @property
    def tflops(self) -> float:
        return self.node.gpu.tflops

    @property
    def memory_gib(self) -> float:
        return self.node.gpu.memory_gib


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[Node, ...]

    @property
    def devices(self) -> tuple[Device, ...]:
        """All GPUs, node by node in inventory order, so a node's GPUs are contiguous."""
        slots = [(node, rank) for node in self.nodes for rank in range(node.gpu_count)]
        return tuple(Device(i, rank, node) for i, (node, rank) in enumerate(slots))

    def product_labels(self) -> dict[str, tuple[str, ...]]:
        """The ``nvidia.com/gpu.product`` values on the nodes, by GPU type (``H100``): the
        strings a pod must select to land on that type, whatever the short name it was
        asked for."""
        labels: dict[str, set[str]] = {}
        for node in self.nodes:
            if node.product_label:
                labels.setdefault(node.gpu.product, set()).add(node.product_label)
        return {product: tuple(sorted(values)) for product, values in labels.items()}


def read_inventory(node_objects: Iterable[Mapping[str, Any]]) -> Inventory:
    """Parse Node objects; nodes without GPUs are left out."""
    nodes = (read_node(obj) for obj in node_objects)
    return Inventory(tuple(node for node in nodes if node is not None))


def read_node(obj: Mapping[str, Any]) -> Node | None:
    """Parse one Node object, or None when it has no GPUs."""
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name") or "")
    if not name:
        raise InventoryError("node without metadata.name")
    labels: Mapping[str, str] = metadata.get("labels") or {}
    count = _read_gpu_count(name, labels, obj.get("status") or {})
    if count == 0:
        return None
    nic = _read_nic(name, labels)
    island = (labels.get(ISLAND_LABEL) or name) if nic.kind.is_rdma else None
    return Node(
        name=name,
        gpu=_read_gpu_spec(name, labels),
        gpu_count=count,
        nic=nic,
        island=island,
        zone=labels.get(ZONE_LABEL, ""),
        rack=labels.get(RACK_LABEL, ""),
        product_label=labels.get(GPU_PRODUCT_LABEL, ""),
    )


def describe_node(
    name: str,
    product: str,
    gpus: int,
    nic: str = NicKind.ETHERNET.value,
    island: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    """The Node object a labelled GPU node would return: describes hypothetical clusters
    (benchmarks, what-if planning) in the same form the planners read from the API."""
    all_labels = {GPU_PRODUCT_LABEL: product, NIC_LABEL: nic, **labels}
    if island is not None:
        all_labels[ISLAND_LABEL] = island
    return {
        "metadata": {"name": name, "labels": all_labels},
        "status": {"capacity": {GPU_RESOURCE: str(gpus)}, "allocatable": {GPU_RESOURCE: str(gpus)}},
    }


def identify_product(product: str, memory_mib: float | None = None) -> str | None:
    """Map a GFD product string to a key of GPU_SPECS, or None when unknown."""
    tokens = set(product.upper().replace("_", "-").replace(" ", "-").split("-"))
    text = product.upper()
    if "H200" in text:
        return "H200"
    if "H100" in text:
        return "H100"
    if "A100" in text:
        large = "80GB" in tokens or (memory_mib is not None and memory_mib > 45 * MIB_PER_GIB)
        return "A100-80GB" if large else "A100-40GB"
    for key in ("A10G", "L4", "T4", "V100"):
        if key in tokens:
            return key
    return None


def canonical_product(gpu_type: str) -> str:
    """The GPU_SPECS key for a GPU type as a user writes it, or the type itself if unknown."""
    return identify_product(gpu_type) or gpu_type


def _read_gpu_count(name: str, labels: Mapping[str, str], status: Mapping[str, Any]) -> int:
    for field in ("allocatable", "capacity"):
        value = (status.get(field) or {}).get(GPU_RESOURCE)
        if value is not None:
            return _parse_int(name, f"status.{field}[{GPU_RESOURCE}]", str(value))
    if GPU_COUNT_LABEL in labels:
        return _parse_int(name, GPU_COUNT_LABEL, labels[GPU_COUNT_LABEL])
    return 0


def _read_gpu_spec(name: str, labels: Mapping[str, str]) -> GpuSpec:
    product = labels.get(GPU_PRODUCT_LABEL)
    if not product:
        raise InventoryError(f"node {name}: has GPUs but no label {GPU_PRODUCT_LABEL}")
    memory_mib = (
        _parse_positive(name, GPU_MEMORY_LABEL, labels[GPU_MEMORY_LABEL])
        if GPU_MEMORY_LABEL in labels
        else None
    )
    tflops = (
        _parse_positive(name, TFLOPS_LABEL, labels[TFLOPS_LABEL])
        if TFLOPS_LABEL in labels
        else None
    )
    key = identify_product(product, memory_mib)
    if key is None:
        if tflops is None or memory_mib is None:
            raise InventoryError(
                f"node {name}: unknown GPU {GPU_PRODUCT_LABEL}={product!r}; known: "
                f"{', '.join(GPU_SPECS)}; or set {TFLOPS_LABEL} and {GPU_MEMORY_LABEL}"
            )
        return GpuSpec(product, tflops, memory_mib / MIB_PER_GIB, UNKNOWN_HBM_GBPS)
    spec = GPU_SPECS[key]
    return GpuSpec(
        product=spec.product,
        tflops=spec.tflops if tflops is None else tflops,
        memory_gib=spec.memory_gib if memory_mib is None else memory_mib / MIB_PER_GIB,
        hbm_gbps=spec.hbm_gbps,
    )


def _read_nic(name: str, labels: Mapping[str, str]) -> Nic:
    raw = labels.get(NIC_LABEL, NicKind.ETHERNET.value)
    try:
        kind = NicKind(raw.lower())
    except ValueError:
        choices = "|".join(kind.value for kind in NicKind)
        raise InventoryError(f"node {name}: label {NIC_LABEL}={raw!r} is not {choices}") from None
    gbps = (
        _parse_positive(name, NIC_GBPS_LABEL, labels[NIC_GBPS_LABEL])
        if NIC_GBPS_LABEL in labels
        else DEFAULT_NIC_GBPS[kind]
    )
    return Nic(kind, gbps)


def _parse_int(name: str, key: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InventoryError(f"node {name}: {key}={raw!r} is not an integer") from None
    if value < 0:
        raise InventoryError(f"node {name}: {key}={raw!r} is negative")
    return value


def _parse_positive(name: str, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InventoryError(f"node {name}: label {key}={raw!r} is not a number") from None
    if not value > 0:
        raise InventoryError(f"node {name}: label {key}={raw!r} must be positive")
    return value
