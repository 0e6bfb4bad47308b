"""Heterogeneity-adaptive sequence parallelism (after FlexSP).

Sequence lengths in real corpora are long-tailed. One static SP degree sized for the
longest sequence makes every short sequence pay all-to-all traffic it does not need, and
one sized for the typical sequence cannot hold the longest in memory. Each step this
planner instead picks a mix of SP groups of different degrees and assigns every sequence to
one of them, minimising the step's makespan subject to per-device activation memory (a
sequence of length L on a group of degree d holds L/d tokens of activations per device).

How a step is planned
---------------------
1. Devices are split into *pools*: identical GPUs inside one RDMA island (or one Ethernet-only
   node), so an SP group never crosses Ethernet and runs at one speed. Candidate groups are
   aligned power-of-two blocks of a pool; a block that stays inside a node talks over NVLink.
2. Lengths are bucketed (at most ``max_buckets`` buckets, split at equal shares of work so
   the long tail gets fine buckets). A bucket's load is the exact sum of its members' times;
   its longest member decides memory fit and which groups are fast enough for it. Steps
   with few distinct lengths are not bucketed.
3. A MILP (``layout_milp``) chooses how many groups of each (pool, degree) to open. Small
   steps use the exact per-group formulation; large ones the aggregated one, with degrees
   pruned to those that matter (from the memory minimum up to twice the degree at which the
   longest sequence fits inside the work bound).
4. Sequences are placed on the opened groups (exactly as the MILP says for the exact
   formulation, else longest-processing-time first), and the result is compared with a
   greedy layout and every static degree, all priced by the same cost model; the best wins.
   So the plan is never worse than the best static degree, and a MILP that runs out of its
   time limit still leaves a good plan.

This module orchestrates; ``seqpar_groups`` holds pools, group types and plans,
``seqpar_assign`` places sequences on a layout, ``layout_milp`` holds the programs.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from modelfleet.scheduling.layout_milp import (
    LayoutProblem,
    LayoutSolution,
    solve_aggregate,
    solve_exact,
)
from modelfleet.scheduling.seqpar_assign import (
    Step,
    assign_longest_first,
    build_groups,
    choose_greedy_layout,
    compute_lower_bound,
    fill_spare,
    list_static_degrees,
    plan_pool_static_step,
    plan_static_step,
    prepare_step,
)
from modelfleet.scheduling.seqpar_groups import (
    GroupType,
    Pool,
    SeqParPlan,
    SeqParSetup,
    SequenceTooLong,
    SPGroup,
    compute_makespan,
    count_micro_batches,
    prepare,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TIE = 1e-9
"""Relative difference below which two makespans are equal; the MILP's plan wins ties."""


def plan_sequence_parallel(
    lengths: Sequence[int],
    setup: SeqParSetup,
    *,
    max_buckets: int = 16,
    time_limit_s: float = 0.025,
    exact_max_slots: int = 64,
) -> SeqParPlan:
    """Best plan for one step: MILP layout, greedy layout and static degrees, priced alike.

    ``time_limit_s`` is the budget, from the call, up to the end of the MILP; placing the
    sequences on the MILP's layout takes a few ms more. ``exact_max_slots`` is the largest
    number of potential groups for which the exact per-group MILP is used.
    """
    started = time.perf_counter()
    step = prepare_step(lengths, setup)
    greedy = assign_longest_first(step, setup, choose_greedy_layout(step, setup), "greedy")
    statics = [plan_static_step(step, setup, d) for d in list_static_degrees(setup)]
    heuristic = min((p for p in (greedy, *statics) if p is not None), key=lambda p: p.makespan_s)
    milp_plan = _plan_with_milp(
        step, setup, max_buckets, started + time_limit_s, exact_max_slots, heuristic.makespan_s
    )
    best = heuristic
    if milp_plan is not None and milp_plan.makespan_s <= heuristic.makespan_s * (1 + TIE):
        best = milp_plan
    return replace(best, solve_ms=(time.perf_counter() - started) * 1000.0)


def plan_static(lengths: Sequence[int], setup: SeqParSetup, degree: int) -> SeqParPlan | None:
    """Baseline: every pool cut into groups of one degree; None if some sequence cannot fit."""
    return plan_pool_static(lengths, setup, (degree,) * len(setup.pools))


def plan_pool_static(
    lengths: Sequence[int], setup: SeqParSetup, degrees: Sequence[int]
) -> SeqParPlan | None:
    """Baseline: each pool cut into groups of its own fixed degree; None if a sequence fits
    nowhere. Heterogeneous pools differ in memory, so their best static degrees differ."""
    started = time.perf_counter()
    plan = plan_pool_static_step(prepare_step(lengths, setup), setup, degrees)
    if plan is None:
        return None
    return replace(plan, solve_ms=(time.perf_counter() - started) * 1000.0)


def list_pool_degrees(setup: SeqParSetup) -> list[tuple[int, ...]]:
    """Every choice of one static degree per pool."""
    per_pool = [
        sorted({t.degree for t in setup.types if t.pool == p}) for p in range(len(setup.pools))
    ]
    return list(itertools.product(*per_pool))


def plan_best_static(lengths: Sequence[int], setup: SeqParSetup) -> SeqParPlan:
    """The best single static SP degree, the baseline an adaptive plan must beat."""
    plans = [p for d in list_static_degrees(setup) if (p := plan_static(lengths, setup, d))]
    if not plans:
        raise SequenceTooLong("no static SP degree fits every sequence")
    return min(plans, key=lambda p: p.makespan_s)


def _time_left(deadline: float) -> float:
    return max(deadline - time.perf_counter(), 1e-3)


def _plan_with_milp(
    step: Step,
    setup: SeqParSetup,
    max_buckets: int,
    deadline: float,
    exact_max_slots: int,
    incumbent: float,
) -> SeqParPlan | None:
    bucket_of, representative = _bucketize(step.lengths, setup, max_buckets)
    types = list(range(len(setup.types)))
    problem = _build_layout_problem(setup, types, step, bucket_of, representative)
    slots = sum(problem.max_groups(t) for t in types)
    if slots <= exact_max_slots:
        solution = solve_exact(problem, _time_left(deadline))
        if solution is None:
            return None
        if len(representative) == len(np.unique(step.lengths)):
            return _follow_exact(step, setup, solution, bucket_of)
        return assign_longest_first(step, setup, _to_layout(types, solution), _label_milp(solution))
    types = _select_useful_types(setup, representative, step.bound)
    problem = _build_layout_problem(setup, types, step, bucket_of, representative)
    solution = solve_aggregate(problem, step.bound, incumbent, _time_left(deadline))
    if solution is None:
        return None
    layout = fill_spare(setup, _to_layout(types, solution))
    return assign_longest_first(step, setup, layout, _label_milp(solution))


def _label_milp(solution: LayoutSolution) -> str:
    return "milp" if solution.optimal else "milp-time-limit"


def _build_layout_problem(
    setup: SeqParSetup,
    types: list[int],
    step: Step,
    bucket_of: IntArray,
    representative: FloatArray,
) -> LayoutProblem:
    chosen = [setup.types[i] for i in types]
    counts = np.bincount(bucket_of, minlength=len(representative)).astype(np.int64)
    fits = np.column_stack([representative <= t.max_length for t in chosen])
    totals = np.column_stack(
        [
            np.bincount(
                bucket_of,
                weights=np.nan_to_num(step.times[:, i], posinf=0.0),
                minlength=len(representative),
            )
            for i in types
        ]
    )
    longest = np.column_stack([t.seconds(representative) for t in chosen])
    return LayoutProblem(
        counts=counts,
        times=np.where(fits, totals / counts[:, None], np.inf),
        longest=np.where(fits, longest, np.inf),
        degrees=np.array([t.degree for t in chosen], dtype=np.int64),
        pools=np.array([t.pool for t in chosen], dtype=np.int64),
        capacities=np.array([len(p.devices) for p in setup.pools], dtype=np.int64),
    )


def _select_useful_types(setup: SeqParSetup, representative: FloatArray, bound: float) -> list[int]:
    """Per pool, degrees from the smallest useful one to twice where the longest fits the bound.

    Larger groups only cost more device-seconds (more communication per device), so they
    pay off only to cut a single long sequence's time; past that point they are dropped.
    """
    useful = []
    for pool_index in range(len(setup.pools)):
        mine = [i for i, t in enumerate(setup.types) if t.pool == pool_index]
        fitting = [i for i in mine if (representative <= setup.types[i].max_length).any()]
        if not fitting:
            continue
        longest = float(representative[representative <= setup.types[fitting[-1]].max_length].max())
        enough = next(
            (
                i
                for i in fitting
                if longest <= setup.types[i].max_length and setup.types[i].seconds(longest) <= bound
            ),
            fitting[-1],
        )
        cap = 2 * setup.types[enough].degree
        useful += [i for i in fitting if setup.types[i].degree <= cap]
    return useful


def _bucketize(
    lengths: FloatArray, setup: SeqParSetup, max_buckets: int
) -> tuple[IntArray, FloatArray]:
    """Bucket index per sequence and each bucket's (longest) length.

    Boundaries split the batch into equal shares of single-device time, so the long tail,
    which dominates the makespan, gets narrow buckets.
    """
    distinct, inverse = np.unique(lengths, return_inverse=True)
    if len(distinct) <= max_buckets:
        return inverse.astype(np.int64), distinct
    order = np.argsort(lengths, kind="stable")
    work = setup.types[0].seconds(lengths[order])
    before = np.concatenate([[0.0], np.cumsum(work)[:-1]]) / float(work.sum())
    raw = np.minimum((before * max_buckets).astype(np.int64), max_buckets - 1)
    sorted_lengths = lengths[order]
    # equal lengths must share a bucket: take the bucket of each length's first occurrence
    first = np.searchsorted(sorted_lengths, sorted_lengths, side="left")
    raw = raw[first]
    _, dense = np.unique(raw, return_inverse=True)
    bucket_of = np.empty(len(lengths), dtype=np.int64)
    bucket_of[order] = dense
    representative = np.zeros(int(dense.max()) + 1)
    np.maximum.at(representative, bucket_of, lengths)
    return bucket_of, representative


def _to_layout(types: list[int], solution: LayoutSolution) -> dict[int, int]:
    return {types[t]: n for t, n in enumerate(solution.groups_per_type) if n > 0}


def _follow_exact(
    step: Step, setup: SeqParSetup, solution: LayoutSolution, bucket_of: IntArray
) -> SeqParPlan:
    """Place sequences exactly as the per-group MILP did (buckets are exact lengths here)."""
    assert solution.group_buckets is not None
    opened = sorted(solution.group_buckets, key=lambda item: -setup.types[item[0]].degree)
    groups = build_groups(setup, _to_layout(list(range(len(setup.types))), solution))
    waiting: dict[int, list[int]] = {}
    for s, b in enumerate(bucket_of.tolist()):
        waiting.setdefault(b, []).append(s)
    assignment = [0] * len(step.lengths)
    for g, (_, bucket_counts) in enumerate(opened):
        for b, count in enumerate(bucket_counts):
            for _ in range(count):
                assignment[waiting[b].pop()] = g
    span = compute_makespan(step.lengths.tolist(), groups, assignment)
    label = "milp-exact" if solution.optimal else "milp-exact-time-limit"
    return SeqParPlan(tuple(groups), tuple(assignment), span, step.bound, label, 0.0)


__all__ = [
    "GroupType",
    "Pool",
    "SPGroup",
    "SeqParPlan",
    "SeqParSetup",
    "SequenceTooLong",
    "compute_lower_bound",
    "compute_makespan",
    "count_micro_batches",
    "list_pool_degrees",
    "plan_best_static",
    "plan_pool_static",
    "plan_sequence_parallel",
    "plan_static",
    "prepare",
]
