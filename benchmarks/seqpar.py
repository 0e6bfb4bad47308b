"""Adaptive sequence parallelism vs the best static SP degree on long-tailed batches.

64 GPUs differing in speed and memory (32 H100-80GB on InfiniBand, 32 A100-40GB on RoCE),
a 7B model with 20 GiB per GPU reserved for model states, 20 steps of 512 sequences drawn
from each of three long-tailed length distributions. Prints, per distribution, the summed
step makespan of the adaptive plans and of the best single static degree (one degree for
the whole run, the best in hindsight, priced by the same cost model), their ratio, the
ratio to the work bound, and planning time per step (p50/max, after one warm-up plan).
The MILP runs under a time limit, so the figures vary a little from run to run.

Run: ``python benchmarks/seqpar.py`` (a few seconds).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np
from result_lines import print_result, slug

from modelfleet.scheduling.costmodel import ModelSpec
from modelfleet.scheduling.inventory import describe_node, read_inventory
from modelfleet.scheduling.seqpar import (
    SeqParSetup,
    plan_sequence_parallel,
    plan_static,
    prepare,
)

STEPS = 20
BATCH = 512
Sampler = Callable[[np.random.Generator], np.ndarray]


def cluster_setup() -> SeqParSetup:
    nodes = [
        *(
            describe_node(f"h100-{i}", "NVIDIA-H100-80GB-HBM3", 8, "infiniband", "ib")
            for i in range(4)
        ),
        *(describe_node(f"a100-{i}", "NVIDIA-A100-SXM4-40GB", 8, "roce", "roce") for i in range(4)),
    ]
    model = ModelSpec(layers=32, hidden=4096, params=7e9, seq_len=32768, global_batch=BATCH)
    return prepare(read_inventory(nodes).devices, model, reserved_gib=20.0)


def lognormal(median: float, sigma: float, longest: int) -> Sampler:
    def sample(rng: np.random.Generator) -> np.ndarray:
        return np.clip(rng.lognormal(np.log(median), sigma, BATCH), 32, longest).astype(int)

    return sample


def with_long_documents(base: Sampler, share: float, longest: int) -> Sampler:
    """An SFT mix with a share of long documents spread up to ``longest`` tokens."""

    def sample(rng: np.random.Generator) -> np.ndarray:
        lengths = base(rng)
        long = rng.random(BATCH) < share
        lengths[long] = rng.integers(longest // 4, longest + 1, int(long.sum()))
        return lengths

    return sample


DISTRIBUTIONS: dict[str, Sampler] = {
    "sft lognormal, max 32k": lognormal(1500, 1.0, 32768),
    "sft lognormal, max 128k": lognormal(2000, 1.3, 131072),
    "sft + 1% long docs, max 128k": with_long_documents(lognormal(1500, 1.0, 32768), 0.01, 131072),
}


def run(name: str, sample: Sampler, setup: SeqParSetup) -> tuple[float, float, float]:
    """Print one distribution's comparison; return (static / adaptive, adaptive / bound,
    max solve ms)."""
    rng = np.random.default_rng(7)
    steps = [sample(rng).tolist() for _ in range(STEPS)]
    plan_sequence_parallel(steps[0], setup)
    plans = [plan_sequence_parallel(lengths, setup) for lengths in steps]
    adaptive = sum(p.makespan_s for p in plans)
    bound = sum(p.lower_bound_s for p in plans)
    static_totals = {}
    for degree in sorted({t.degree for t in setup.types}):
        statics = [plan_static(lengths, setup, degree) for lengths in steps]
        if all(s is not None for s in statics):
            static_totals[degree] = sum(s.makespan_s for s in statics if s is not None)
    degree, static = min(static_totals.items(), key=lambda item: item[1])
    solve = [p.solve_ms for p in plans]
    solvers = {s: sum(p.solver == s for p in plans) for s in sorted({p.solver for p in plans})}
    longest = max(max(lengths) for lengths in steps)
    print(f"{name} (longest {longest} tokens)")
    print(f"  adaptive makespan   {adaptive:8.2f} s over {STEPS} steps; winners {solvers}")
    print(f"  best static SP={degree:<3d} {static:8.2f} s")
    print(f"  static / adaptive   {static / adaptive:8.3f}x")
    print(f"  adaptive / bound    {adaptive / bound:8.3f}x")
    print(f"  solve ms            p50 {statistics.median(solve):.1f}  max {max(solve):.1f}")
    return static / adaptive, adaptive / bound, max(solve)


def main() -> None:
    setup = cluster_setup()
    print(
        f"{sum(len(p.devices) for p in setup.pools)} GPUs in {len(setup.pools)} pools, "
        f"{BATCH} sequences per step"
    )
    solve_max = 0.0
    for name, sample in DISTRIBUTIONS.items():
        speedup, over_bound, solve_ms = run(name, sample, setup)
        print_result(f"seqpar_speedup_vs_best_static_{slug(name)}", speedup)
        print_result(f"seqpar_adaptive_over_bound_{slug(name)}", over_bound)
        solve_max = max(solve_max, solve_ms)
    print_result("seqpar_solve_ms_max", solve_max)


if __name__ == "__main__":
    main()
