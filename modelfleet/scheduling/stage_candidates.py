"""Which GPUs form each pipeline stage: the NIC-aware cut and the NIC-oblivious orders.

A candidate is a list of stages, each a list of GPUs in local rank order. The NIC-aware
enumeration cuts every domain (RDMA island, or Ethernet-only node) into stage slots of whole
TP blocks (a TP block never leaves a node), fastest GPUs first, and tries every split of the
pipeline's stages across classes of identical domains, filling one domain before the next
so that only domain boundaries cross Ethernet. It also tries the fastest domains packed
one after another, which lets a stage straddle two domains: when domains are not a
multiple of the stage size, putting a stage's infrequent data-parallel all-reduce on
Ethernet can cost less than leaving fast GPUs idle or taking slower ones. The baselines
take GPUs in inventory order (packed), by island label (island packing), in the order pods
land on nodes (default scheduler) or dealt one node at a time (round-robin).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from modelfleet.scheduling.inventory import Device
from modelfleet.scheduling.parallel_layout import Layout, list_collective_groups

Candidates = Callable[[Sequence[Device], Layout], Iterator[list[list[Device]]]]


def enumerate_island_stages(
    devices: Sequence[Device],
    layout: Layout,
    domain: Callable[[Device], str] = lambda d: d.node.domain,
) -> Iterator[list[list[Device]]]:
    """Stage sets with every stage inside one domain, for every split across domain classes."""
    slots_by_domain: dict[str, list[list[Device]]] = {}
    for key, members in _group_by(devices, domain).items():
        blocks = _cut_tp_blocks(members, layout.tp)
        per_stage = layout.sp * layout.dp
        slots = [
            [d for block in blocks[i : i + per_stage] for d in block]
            for i in range(0, len(blocks) - per_stage + 1, per_stage)
        ]
        if slots:
            slots_by_domain[key] = slots
    classes: dict[tuple[object, ...], list[list[list[Device]]]] = {}
    for slots in slots_by_domain.values():
        signature = (len(slots), *(_describe_stage(s) for s in slots))
        classes.setdefault(signature, []).append(slots)
    ordered = sorted(classes.values(), key=lambda c: -min(d.tflops for d in c[0][0]))
    limits = [sum(len(slots) for slots in members) for members in ordered]
    for counts in _split(layout.pp, limits):
        yield [
            stage
            for members, count in zip(ordered, counts, strict=True)
            for stage in _take(members, count)
        ]


def enumerate_nic_aware_stages(
    devices: Sequence[Device], layout: Layout
) -> Iterator[list[list[Device]]]:
    """Stages inside domains (every split), then the fastest domains packed in a row where
    only data-parallel groups leave a domain (TP groups stay in a node, SP groups in a
    domain)."""
    yield from enumerate_island_stages(devices, layout)
    for stages in stage_in_order(sort_fastest_domains_first)(devices, layout):
        if all(keeps_frequent_collectives_inside(layout, stage) for stage in stages):
            yield stages


def keeps_frequent_collectives_inside(layout: Layout, stage: Sequence[Device]) -> bool:
    """Whether a stage's per-layer collectives (TP, SP) stay inside a node and a domain."""
    groups = list_collective_groups(layout, stage)
    return all(len({d.node.name for d in g}) == 1 for g in groups["tp"]) and all(
        len({d.node.domain for d in g}) == 1 for g in groups["sp"]
    )


def sort_fastest_domains_first(devices: Sequence[Device]) -> list[Device]:
    """Whole domains, fastest GPUs first, each domain's nodes together."""
    return sorted(devices, key=lambda d: (-d.tflops, d.node.domain, d.node.name))


def _split(total: int, limits: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every way to write ``total`` as a sum of counts, count i at most ``limits[i]``."""
    if not limits:
        if total == 0:
            yield ()
        return
    for first in range(min(total, limits[0]) + 1):
        for rest in _split(total - first, limits[1:]):
            yield (first, *rest)


def enumerate_fabric_stages(
    devices: Sequence[Device], layout: Layout
) -> Iterator[list[list[Device]]]:
    """Stage sets as if the whole cluster were one RDMA island."""
    return enumerate_island_stages(devices, layout, domain=lambda d: "one fabric")


def _take(domains: list[list[list[Device]]], count: int) -> list[list[Device]]:
    """``count`` stage slots, filling one domain before the next to keep hops inside it."""
    flat = [slot for slots in domains for slot in slots]
    return flat[:count]


def _describe_stage(stage: Sequence[Device]) -> tuple[object, ...]:
    return tuple((d.node.gpu, d.node.nic) for d in stage)


def _cut_tp_blocks(members: Sequence[Device], tp: int) -> list[list[Device]]:
    """Whole TP groups of one node each, fastest GPUs first."""
    blocks: list[list[Device]] = []
    for node_devices in _group_by(members, lambda d: d.node.name).values():
        usable = len(node_devices) - len(node_devices) % tp
        blocks += [list(node_devices[i : i + tp]) for i in range(0, usable, tp)]
    return sorted(blocks, key=lambda block: -block[0].tflops)


def _group_by(devices: Sequence[Device], key: Callable[[Device], str]) -> dict[str, list[Device]]:
    grouped: dict[str, list[Device]] = {}
    for device in devices:
        grouped.setdefault(key(device), []).append(device)
    return grouped


def stage_in_order(
    order: Callable[[Sequence[Device]], list[Device]],
) -> Candidates:
    """One candidate: ranks take devices in the given order, stage after stage."""

    def candidates(devices: Sequence[Device], layout: Layout) -> Iterator[list[list[Device]]]:
        ranked = order(devices)[: layout.world]
        size = layout.stage_size
        yield [ranked[s * size : (s + 1) * size] for s in range(layout.pp)]

    return candidates


@dataclass(frozen=True)
class RankOrder:
    """A NIC-oblivious way of handing GPUs to ranks: a name for reports and the order."""

    name: str
    arrange: Callable[[Sequence[Device]], list[Device]]


def sort_by_island(devices: Sequence[Device]) -> list[Device]:
    """Nodes grouped by fabric domain (island label, else the node itself), then by name:
    the packing an operator gets by sorting nodes on the island label."""
    return sorted(devices, key=lambda d: (d.node.domain, d.node.name))


def order_as_scheduled(seed: int) -> RankOrder:
    """Whole nodes in a random order, ranks node-contiguous: what the default scheduler
    gives a job of one pod per node whose launcher numbers nodes as pods start."""

    def arrange(devices: Sequence[Device]) -> list[Device]:
        nodes = list(_group_by(devices, lambda d: d.node.name).values())
        random.Random(seed).shuffle(nodes)
        return [d for node in nodes for d in node]

    return RankOrder(f"default-scheduler-{seed}", arrange)


def deal_round_robin(devices: Sequence[Device]) -> list[Device]:
    """Devices dealt one per node in turn, as a NIC-oblivious scheduler spreads ranks."""
    per_node = list(_group_by(devices, lambda d: d.node.name).values())
    return [
        node[i]
        for i in range(max(len(node) for node in per_node))
        for node in per_node
        if i < len(node)
    ]


ROUND_ROBIN = RankOrder("round-robin", deal_round_robin)
INVENTORY_ORDER = RankOrder("packed", list)
ISLAND_ORDER = RankOrder("island-packed", sort_by_island)
