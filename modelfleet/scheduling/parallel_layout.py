"""4-D parallel layouts: degrees, rank order, collective groups, layers per stage.

Layout and rank order
---------------------
A layout is (tp, pp, dp, sp). Ranks are stage-major: pipeline stage ``s`` owns ranks
``[s*S, (s+1)*S)`` with ``S = tp*sp*dp``, and inside a stage local rank
``(dp_i*sp + sp_i)*tp + tp_i``. TP groups are consecutive, SP groups share (dp_i, tp_i),
and the gradient all-reduce group of a stage is all of its ranks with the same ``tp_i``
(parameters are replicated across both SP and DP). Every collective therefore lives inside
one stage, which is what lets a stage be confined to one RDMA island.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from modelfleet.scheduling.costmodel import ModelSpec
from modelfleet.scheduling.inventory import Device


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    sp: int

    @property
    def stage_size(self) -> int:
        return self.tp * self.sp * self.dp

    @property
    def world(self) -> int:
        return self.stage_size * self.pp


@dataclass(frozen=True)
class SearchSpace:
    tp: tuple[int, ...] = (1, 2, 4, 8)
    pp: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    dp: tuple[int, ...] = (1, 2, 4, 8)
    sp: tuple[int, ...] = (1, 2, 4)

    def layouts(self, model: ModelSpec, gpus: int) -> Iterator[Layout]:
        """Layouts that fit the GPU count and divide the batch and the layers sensibly."""
        for tp, pp, dp, sp in itertools.product(self.tp, self.pp, self.dp, self.sp):
            layout = Layout(tp, pp, dp, sp)
            if (
                layout.world <= gpus
                and pp <= model.layers
                and model.global_batch % (dp * model.micro_batch) == 0
            ):
                yield layout


@dataclass(frozen=True)
class Stage:
    devices: tuple[Device, ...]
    layers: int


@dataclass(frozen=True)
class Breakdown:
    """Iteration time split so that the parts add up to ``total_s``."""

    compute_s: float
    tp_s: float
    sp_s: float
    pp_s: float
    bubble_s: float
    dp_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.tp_s + self.sp_s + self.pp_s + self.bubble_s + self.dp_s


def list_collective_groups(
    layout: Layout, stage: Sequence[Device]
) -> dict[str, list[list[Device]]]:
    """TP, SP and gradient (DP) groups of one stage, following the rank order above."""

    def rank(dp_i: int, sp_i: int, tp_i: int) -> Device:
        return stage[(dp_i * layout.sp + sp_i) * layout.tp + tp_i]

    dps, sps, tps = range(layout.dp), range(layout.sp), range(layout.tp)
    return {
        "tp": [[rank(d, s, t) for t in tps] for d in dps for s in sps],
        "sp": [[rank(d, s, t) for s in sps] for d in dps for t in tps],
        "dp": [[rank(d, s, t) for d in dps for s in sps] for t in tps],
    }


def allocate_layers(per_layer_s: Sequence[float], caps: Sequence[int], layers: int) -> list[int]:
    """Layers per stage minimising the slowest stage, within per-stage memory caps.

    Each stage gets one layer, then each further layer goes to the stage that would finish
    it soonest; for stage times linear in layers this greedy is optimal for the maximum.
    Raises ValueError when the caps cannot hold every layer.
    """
    if sum(caps) < layers or min(caps) < 1 or len(caps) > layers:
        raise ValueError("layers do not fit the stages' memory")
    counts = [1] * len(caps)
    for _ in range(layers - len(caps)):
        open_stages = [s for s in range(len(caps)) if counts[s] < caps[s]]
        best = min(open_stages, key=lambda s: ((counts[s] + 1) * per_layer_s[s], s))
        counts[best] += 1
    return counts
