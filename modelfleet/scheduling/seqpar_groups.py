"""Sequence-parallel pools, group types and plans: what the SP planner works with.

A *pool* is a set of identical GPUs inside one RDMA island (or one Ethernet-only node); SP
groups are aligned power-of-two blocks of one pool, so a group never crosses Ethernet and
runs at one speed. A *group type* is a degree within a pool, with the time of one sequence
on it as a polynomial in its length and the longest sequence its memory holds.

With packing (the default, as varlen attention kernels train), a group runs the sequences
it is given in micro-batches of up to ``max_length`` tokens in all, so the polynomial's
constant (kernel launches, collective latency) is paid once per micro-batch, not once per
sequence; the per-token terms are paid per sequence either way, since attention stays
within a sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
    packing: bool = True

    def price(self, lengths: Sequence[float]) -> float:
        """Seconds for a group of this type to run ``lengths``, packed when packing is on."""
        if not self.packing:
            return float(sum(self.seconds(float(length)) for length in lengths))
        array = np.asarray(lengths, dtype=np.float64)
        per_token = float(np.sum(array * (self.seconds.c1 + array * self.seconds.c2)))
        return self.seconds.c0 * count_micro_batches(array, self.max_length) + per_token

    def amortised(self, lengths: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Per-sequence seconds with the constant shared by a full micro-batch's tokens.

        What a sequence adds to a group's packed load on average; placement heuristics
        and the layout program use it, and ``price`` gives the exact figure afterwards.
        """
        if not self.packing:
            return self.seconds(lengths)
        share = np.minimum(lengths / self.max_length, 1.0) if self.max_length > 0 else 1.0
        return self.seconds.c0 * share + lengths * (self.seconds.c1 + lengths * self.seconds.c2)


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
    packing: bool = True,
) -> SeqParSetup:
    """Pools and candidate group types; ``reserved_gib`` per device is for model states.

    ``packing=False`` charges every sequence the full constant, for steps that run one
    sequence per micro-batch.
    """
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
                    packing=packing,
                )
            )
            degree *= 2
    peak = sum(d.tflops * 1e12 for d in devices)
    return SeqParSetup(pools, tuple(types), model, coefficients, peak)


def compute_makespan(
    lengths: Sequence[float], groups: Sequence[SPGroup], assignment: Sequence[int]
) -> float:
    """Step time of an assignment: the most loaded group's total."""
    members: list[list[float]] = [[] for _ in groups]
    for length, g in zip(lengths, assignment, strict=True):
        members[g].append(float(length))
    return max(group.group_type.price(mine) for group, mine in zip(groups, members, strict=True))


def count_micro_batches(lengths: npt.NDArray[np.float64], capacity: float) -> int:
    """Micro-batches of at most ``capacity`` tokens that hold ``lengths``: first-fit decreasing.

    FFD uses at most 11/9 of the optimal count plus one; a sequence longer than the capacity
    (which memory checks refuse elsewhere) gets a micro-batch of its own.
    """
    room: list[float] = []
    for length in sorted(lengths.tolist(), reverse=True):
        for index, free in enumerate(room):
            if length <= free:
                room[index] = free - length
                break
        else:
            room.append(capacity - length)
    return len(room)


def _count_per_node(devices: Sequence[Device]) -> list[int]:
    sizes: dict[str, int] = {}
    for device in devices:
        sizes[device.node.name] = sizes.get(device.node.name, 0) + 1
    return list(sizes.values())
