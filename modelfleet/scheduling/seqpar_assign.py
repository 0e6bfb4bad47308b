"""Placing one step's sequences on a layout of SP groups.

A layout says how many groups of each type to open (``{type index: count}``);
``build_groups`` packs them into their pools as aligned blocks, largest degree first, and
``assign_longest_first`` places sequences longest first on the group that finishes them
soonest (LPT). Also here: the greedy and static layouts the planner compares against, and
the work bound.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelfleet.scheduling.costmodel import GIB, count_effective_flops
from modelfleet.scheduling.seqpar_groups import (
    GroupType,
    SeqParPlan,
    SeqParSetup,
    SequenceTooLong,
    SPGroup,
    compute_makespan,
)

FloatArray = npt.NDArray[np.float64]


def compute_lower_bound(lengths: FloatArray, setup: SeqParSetup) -> float:
    """Total work / total speed: the makespan with perfect division and free communication."""
    _, per_token, per_token2 = setup.model.sequence_work_terms()
    work = count_effective_flops(per_token, setup.coefficients) * float(lengths.sum()) + (
        count_effective_flops(per_token2, setup.coefficients) * float((lengths**2).sum())
    )
    return work / setup.total_peak_flops


@dataclass(frozen=True)
class Step:
    """One step's lengths, priced once on every group type (``inf`` where it does not fit)."""

    lengths: FloatArray
    times: FloatArray
    longest_first: list[int]
    bound: float


def prepare_step(lengths: Sequence[int], setup: SeqParSetup) -> Step:
    array = np.asarray(lengths, dtype=np.float64)
    check_fits(array, setup)
    limits = np.array([t.max_length for t in setup.types])
    times = np.where(array[:, None] <= limits[None, :], _price_all(array, setup.types), np.inf)
    order = np.argsort(-array, kind="stable").tolist()
    return Step(array, times, order, compute_lower_bound(array, setup))


def check_fits(lengths: FloatArray, setup: SeqParSetup) -> None:
    longest = float(lengths.max())
    limit = max(t.max_length for t in setup.types)
    if longest > limit:
        raise SequenceTooLong(
            f"sequence of {longest:.0f} tokens needs "
            f"{setup.model.activation_bytes(longest) / GIB:.1f} GiB of activations; the largest "
            f"group holds {limit:.0f} tokens"
        )


def list_static_degrees(setup: SeqParSetup) -> list[int]:
    return sorted({t.degree for t in setup.types})


def plan_static_step(step: Step, setup: SeqParSetup, degree: int) -> SeqParPlan | None:
    return plan_pool_static_step(step, setup, (degree,) * len(setup.pools))


def plan_pool_static_step(
    step: Step, setup: SeqParSetup, degrees: Sequence[int]
) -> SeqParPlan | None:
    """Every pool cut into groups of its own degree (``degrees[pool]``)."""
    layout = {
        i: len(setup.pools[t.pool].devices) // t.degree
        for i, t in enumerate(setup.types)
        if t.degree == degrees[t.pool]
    }
    label = "-".join(map(str, sorted(set(degrees))))
    return assign_longest_first(step, setup, layout, f"static-{label}")


def choose_greedy_layout(step: Step, setup: SeqParSetup) -> dict[int, int]:
    """Give each sequence the cheapest type that finishes it within the bound, then size groups.

    Device-seconds per type decide how many groups it gets; a pool that runs out of devices
    gives up groups, largest degree first, then whole types; spare devices are filled in.
    """
    times, bound = step.times, step.bound
    degrees = np.array([t.degree for t in setup.types], dtype=np.float64)
    device_time = np.where(times <= bound, degrees * times, np.inf)
    chosen = np.where(
        np.isfinite(device_time).any(axis=1),
        np.argmin(device_time, axis=1),
        np.argmin(times, axis=1),
    )
    rows = np.arange(len(step.lengths))
    work = np.bincount(
        chosen, weights=degrees[chosen] * times[rows, chosen], minlength=len(setup.types)
    )
    layout = {
        int(i): max(1, math.ceil(work[i] / (degrees[i] * max(bound, 1e-12))))
        for i in np.flatnonzero(work)
    }
    for pool_index, pool in enumerate(setup.pools):
        mine = sorted(
            (i for i in layout if setup.types[i].pool == pool_index),
            key=lambda i: -setup.types[i].degree,
        )

        def used(members: list[int] = mine) -> int:
            return sum(layout[i] * setup.types[i].degree for i in members)

        for i in mine:
            while used() > len(pool.devices) and layout[i] > 1:
                layout[i] -= 1
        while used() > len(pool.devices):
            layout.pop(mine.pop())
    return fill_spare(setup, layout)


def fill_spare(setup: SeqParSetup, layout: dict[int, int]) -> dict[int, int]:
    """Turn each pool's unused devices into groups of the smallest degree it already uses.

    An idle device never shortens a step; an extra group takes load off the busiest type.
    """
    filled = dict(layout)
    for pool_index, pool in enumerate(setup.pools):
        mine = {setup.types[i].degree: i for i, t in enumerate(setup.types) if t.pool == pool_index}
        used = [setup.types[i].degree for i in layout if setup.types[i].pool == pool_index]
        spare = len(pool.devices) - sum(layout[mine[d]] * d for d in used)
        degree = min(used, default=1)
        while spare > 0:
            while degree > spare:
                degree //= 2
            filled[mine[degree]] = filled.get(mine[degree], 0) + 1
            spare -= degree
    return filled


def build_groups(setup: SeqParSetup, layout: dict[int, int]) -> list[SPGroup]:
    """Pack each pool's groups as aligned blocks, largest degree first."""
    groups: list[SPGroup] = []
    offsets = [0] * len(setup.pools)
    for i in sorted(layout, key=lambda i: -setup.types[i].degree):
        t = setup.types[i]
        pool = setup.pools[t.pool]
        for _ in range(layout[i]):
            start = offsets[t.pool]
            block = pool.devices[start : start + t.degree]
            groups.append(SPGroup(tuple(d.index for d in block), t))
            offsets[t.pool] += t.degree
    return groups


def _price_all(lengths: FloatArray, types: Sequence[GroupType]) -> FloatArray:
    """Seconds each sequence (rows) adds to a group of each type (columns), amortised."""
    return np.column_stack([t.amortised(lengths) for t in types])


def assign_longest_first(
    step: Step, setup: SeqParSetup, layout: dict[int, int], solver: str
) -> SeqParPlan | None:
    """Longest-processing-time-first placement onto a layout; None if a sequence fits nowhere.

    Groups of one type are interchangeable, so only the least-loaded group of each type is a
    candidate for the next sequence (a heap per type keeps this O(n log g)).
    """
    groups = build_groups(setup, layout)
    heaps: dict[int, list[tuple[float, int]]] = {}
    for g, group in enumerate(groups):
        heaps.setdefault(setup.types.index(group.group_type), []).append((0.0, g))
    type_ids = list(heaps)
    columns = [heaps[i] for i in type_ids]
    rows = step.times[:, type_ids].tolist()
    assignment = [0] * len(step.lengths)
    for s in step.longest_first:
        best_finish, best_heap = math.inf, None
        for heap, seconds in zip(columns, rows[s], strict=True):
            finish = heap[0][0] + seconds
            if finish < best_finish:
                best_finish, best_heap = finish, heap
        if best_heap is None:
            return None
        assignment[s] = heapq.heapreplace(best_heap, (best_finish, best_heap[0][1]))[1]
    span = compute_makespan(step.lengths.tolist(), groups, assignment)
    return SeqParPlan(tuple(groups), tuple(assignment), span, step.bound, solver, 0.0)
