"""Mixed-integer programs that choose sequence-parallel group layouts.

The planner reduces a training step to a ``LayoutProblem``: sequences bucketed by length
(``counts``), candidate group *types* (a pool of identical devices and a degree), the time
of one sequence of each bucket on each type (``inf`` where its activations do not fit),
and how many devices each pool has. Any multiset of power-of-two degrees whose sum fits a
pool can be packed into it as aligned blocks (place them largest first), so choosing *how
many groups of each type* is enough; which devices form them is decided afterwards.

Two formulations, both solved by HiGHS through ``scipy.optimize.milp`` with a time limit
(past it, the best solution found so far is returned, flagged not optimal):

- ``solve_exact``: one binary per potential group and an integer count of each bucket on
  it; the makespan it minimises is achievable as is. Its size grows with devices x buckets,
  so it is for small steps (and is what the brute-force tests check).
- ``solve_aggregate``: one integer group count per type and a fractional share of each
  bucket per type, made linear by optimising the reciprocal of the makespan. Small
  regardless of device count; sequences are then placed on the chosen groups by LPT. A
  bucket may only go to a type on which its longest sequence finishes within the
  makespan, because a sequence cannot be split across groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LayoutProblem:
    """``times``: mean time of a bucket's sequences on a type (its load per sequence);
    ``longest``: time of its longest one (no target below it is reachable on that type)."""

    counts: IntArray
    times: FloatArray
    longest: FloatArray
    degrees: IntArray
    pools: IntArray
    capacities: IntArray

    def max_groups(self, group_type: int) -> int:
        """Groups of a type that could ever be useful: bounded by devices and sequences."""
        fitting = int(self.counts[np.isfinite(self.times[:, group_type])].sum())
        return min(
            int(self.capacities[self.pools[group_type]] // self.degrees[group_type]), fitting
        )


@dataclass(frozen=True)
class LayoutSolution:
    groups_per_type: tuple[int, ...]
    optimal: bool
    group_buckets: tuple[tuple[int, tuple[int, ...]], ...] | None = None
    """For exact solutions: each opened group's type and its count of every bucket."""


@dataclass
class _Program:
    """Accumulates variables and sparse rows, then hands them to HiGHS via scipy."""

    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)
    relative_gap: float = 1e-6

    def add_var(self, lower: float, upper: float, integer: bool) -> int:
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(int(integer))
        return len(self.lower) - 1

    def add_row(self, terms: dict[int, float], lower: float, upper: float) -> None:
        row = len(self.row_lower)
        for col, value in terms.items():
            self.rows.append(row)
            self.cols.append(col)
            self.values.append(value)
        self.row_lower.append(lower)
        self.row_upper.append(upper)

    def minimize(
        self, objective: dict[int, float], time_limit_s: float
    ) -> tuple[FloatArray, bool] | None:
        """Solve; None when no feasible point was found in time."""
        cost = np.zeros(len(self.lower))
        for var, weight in objective.items():
            cost[var] = weight
        matrix = coo_array(
            (self.values, (self.rows, self.cols)), shape=(len(self.row_lower), len(self.lower))
        ).tocsr()
        result = milp(
            cost,
            integrality=np.array(self.integer),
            bounds=Bounds(np.array(self.lower), np.array(self.upper)),
            constraints=LinearConstraint(matrix, self.row_lower, self.row_upper),
            options={"time_limit": time_limit_s, "mip_rel_gap": self.relative_gap},
        )
        if result.x is None:
            return None
        return np.asarray(result.x, dtype=np.float64), bool(result.status == 0)


def solve_exact(problem: LayoutProblem, time_limit_s: float) -> LayoutSolution | None:
    """Per-group formulation; optimal for the bucketed lengths when it finishes in time."""
    program = _Program()
    makespan = program.add_var(0.0, np.inf, integer=False)
    buckets, types = problem.times.shape
    slots: list[tuple[int, int, dict[int, int]]] = []
    for t in range(types):
        previous: int | None = None
        for _ in range(problem.max_groups(t)):
            used = program.add_var(0.0, 1.0, integer=True)
            shares = {
                b: program.add_var(0.0, float(problem.counts[b]), integer=True)
                for b in range(buckets)
                if np.isfinite(problem.times[b, t])
            }
            load = {shares[b]: float(problem.times[b, t]) for b in shares}
            program.add_row({**load, makespan: -1.0}, -np.inf, 0.0)
            for b, var in shares.items():
                program.add_row({var: 1.0, used: -float(problem.counts[b])}, -np.inf, 0.0)
            if previous is not None:
                program.add_row({used: 1.0, previous: -1.0}, -np.inf, 0.0)
            previous = used
            slots.append((t, used, shares))
    _add_bucket_rows(program, problem, [(t, s) for t, _, s in slots])
    _add_capacity_rows(program, problem, [(t, {used: 1.0}) for t, used, _ in slots])
    solved = program.minimize({makespan: 1.0}, time_limit_s)
    if solved is None:
        return None
    x, optimal = solved
    opened = [
        (t, tuple(round(x[s[b]]) if b in s else 0 for b in range(buckets)))
        for t, used, s in slots
        if x[used] > 0.5
    ]
    per_type = [0] * types
    for t, _ in opened:
        per_type[t] += 1
    return LayoutSolution(tuple(per_type), optimal, tuple(opened))


def solve_aggregate(
    problem: LayoutProblem,
    low: float,
    high: float,
    time_limit_s: float,
    relative_gap: float = 0.01,
) -> LayoutSolution | None:
    """Per-type formulation for a makespan known to lie in [low, high].

    ``load_t <= groups_t x makespan`` is bilinear; dividing by the makespan makes it linear:
    with ``rate = 1 / makespan`` and ``w_bt = share_bt x rate``, it reads
    ``sum_b w_bt time_bt <= groups_t`` and ``sum_t w_bt = count_b x rate``; maximise rate.
    A bucket whose longest sequence takes longer than ``low`` on a type may use it only if
    a binary ``allowed_bt`` is set, which caps the makespan from below by that time.
    The LPT placement afterwards loses more than 1% anyway, hence the default gap.
    """
    program = _Program(relative_gap=relative_gap)
    rate_max = 1.0 / low
    rate = program.add_var(1.0 / high, rate_max, integer=False)
    buckets, types = problem.times.shape
    groups: dict[int, int] = {}
    share_sets: list[tuple[int, dict[int, int]]] = []
    for t in range(types):
        limit = problem.max_groups(t)
        candidates = [b for b in range(buckets) if problem.longest[b, t] <= high]
        if limit == 0 or not candidates:
            continue
        groups[t] = program.add_var(0.0, float(limit), integer=True)
        shares = {b: program.add_var(0.0, problem.counts[b] * rate_max, False) for b in candidates}
        for b in candidates:
            longest = float(problem.longest[b, t])
            if longest > low:
                allowed = program.add_var(0.0, 1.0, integer=True)
                bound = float(problem.counts[b]) * rate_max
                program.add_row({shares[b]: 1.0, allowed: -bound}, -np.inf, 0.0)
                big = longest * rate_max - 1.0
                program.add_row({rate: longest, allowed: big}, -np.inf, 1.0 + big)
        load = {var: float(problem.times[b, t]) for b, var in shares.items()}
        program.add_row({**load, groups[t]: -1.0}, -np.inf, 0.0)
        share_sets.append((t, shares))
    if any(not any(b in s for _, s in share_sets) for b in range(buckets)):
        return None
    for b, count in enumerate(problem.counts):
        terms = {s[b]: 1.0 for _, s in share_sets if b in s}
        program.add_row({**terms, rate: -float(count)}, 0.0, 0.0)
    _add_capacity_rows(program, problem, [(t, {var: 1.0}) for t, var in groups.items()])
    solved = program.minimize({rate: -1.0}, time_limit_s)
    if solved is None:
        return None
    x, optimal = solved
    per_type = [0] * types
    for t, var in groups.items():
        per_type[t] = round(x[var])
    return LayoutSolution(tuple(per_type), optimal)


def _add_bucket_rows(
    program: _Program, problem: LayoutProblem, share_sets: list[tuple[int, dict[int, int]]]
) -> None:
    """Every sequence of every bucket is placed somewhere."""
    for b, count in enumerate(problem.counts):
        terms = {s[b]: 1.0 for _, s in share_sets if b in s}
        program.add_row(terms, float(count), float(count))


def _add_capacity_rows(
    program: _Program, problem: LayoutProblem, group_counts: list[tuple[int, dict[int, float]]]
) -> None:
    """Groups opened in a pool use at most its devices."""
    for pool, capacity in enumerate(problem.capacities):
        terms: dict[int, float] = {}
        for t, counts in group_counts:
            if problem.pools[t] == pool:
                for var, weight in counts.items():
                    terms[var] = terms.get(var, 0.0) + weight * float(problem.degrees[t])
        if terms:
            program.add_row(terms, -np.inf, float(capacity))
