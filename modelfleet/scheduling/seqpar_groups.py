"""Sequence-parallel pools, group types and plans: what the SP planner works with.

A *pool* is a set of identical GPUs inside one RDMA island (or one Ethernet-only node); SP
groups are aligned power-of-two blocks of one pool, so a group never crosses Ethernet and
runs at one speed. A *group type* is a degree within a pool, with the time of one sequence
on it as a polynomial in its length and the longest sequence its memory holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.scheduling.costmodel import (
    GIB,
    CostCoefficients,
    Link,
    ModelSpec,
    Quadratic,
    find_slowest_link,
    make_link_fn,
    time_sequence,
)
from modelfleet.scheduling.inventory import Device


class SequenceTooLong(ValueError):
    """A sequence does not fit in memory even on the largest possible group."""


@dataclass(frozen=True)
class Pool:
    """Identical devices that can form SP groups together, in node-contiguous order."""

    devices: tuple[Device, ...]
    budget_bytes: float


@dataclass(frozen=True)
class GroupType:
    """A degree within a pool: what one sequence costs there and how long it may be."""

    pool: int
    degree: int
    link: Link
    seconds: Quadratic
    max_length: float


@dataclass(frozen=True)
class SPGroup:
    """One SP group: ``devices`` are ``Device.index`` values, in rank order."""

    devices: tuple[int, ...]
    group_type: GroupType

    @property
    def degree(self) -> int:
        return self.group_type.degree


@dataclass(frozen=True)
class SeqParPlan:
    groups: tuple[SPGroup, ...]
    assignment: tuple[int, ...]
    """``assignment[i]`` is the index in ``groups`` of the group that runs sequence i."""
    makespan_s: float
    lower_bound_s: float
    solver: str
    solve_ms: float


@dataclass(frozen=True)
class SeqParSetup:
    """Everything about the devices that does not change from step to step."""

    pools: tuple[Pool, ...]
    types: tuple[GroupType, ...]
    model: ModelSpec
    coefficients: CostCoefficients
    total_peak_flops: float


def prepare(
    devices: Sequence[Device],
    model: ModelSpec,
    coefficients: CostCoefficients | None = None,
    reserved_gib: float = 0.0,
) -> SeqParSetup:
    """Pools and candidate group types; ``reserved_gib`` per device is for model states."""
    coefficients = coefficients or CostCoefficients()
    link_fn = make_link_fn(coefficients)
    by_key: dict[tuple[str, str, float], list[Device]] = {}
    for device in devices:
        key = (device.node.domain, device.node.gpu.product, device.memory_gib)
        by_key.setdefault(key, []).append(device)
    pools = tuple(
        Pool(tuple(members), (members[0].memory_gib - reserved_gib) * GIB)
        for members in by_key.values()
    )
    types = []
    per_token = model.activation_bytes(1.0)
    for index, pool in enumerate(pools):
        node_sizes = _count_per_node(pool.devices)
        degree = 1
        while degree <= len(pool.devices):
            in_node = all(size % degree == 0 for size in node_sizes)
            block = pool.devices[:degree]
            link = (
                link_fn(block[0], block[0]) if in_node else find_slowest_link(pool.devices, link_fn)
            )
            gpu = pool.devices[0].node.gpu
            types.append(
                GroupType(
                    pool=index,
                    degree=degree,
                    link=link,
                    seconds=time_sequence(model, gpu, degree, link, coefficients),
                    max_length=max(pool.budget_bytes, 0.0) * degree / per_token,
                )
            )
            degree *= 2
    peak = sum(d.tflops * 1e12 for d in devices)
    return SeqParSetup(pools, tuple(types), model, coefficients, peak)


def compute_makespan(
    lengths: Sequence[float], groups: Sequence[SPGroup], assignment: Sequence[int]
) -> float:
    """Step time of an assignment: the most loaded group's total."""
    loads = [0.0] * len(groups)
    for length, g in zip(lengths, assignment, strict=True):
        loads[g] += float(groups[g].group_type.seconds(float(length)))
    return max(loads)


def _count_per_node(devices: Sequence[Device]) -> list[int]:
    sizes: dict[str, int] = {}
    for device in devices:
        sizes[device.node.name] = sizes.get(device.node.name, 0) + 1
    return list(sizes.values())
