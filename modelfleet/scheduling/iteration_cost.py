"""Iteration time and memory of a placed 4-D parallel layout.

Iteration time (1F1B): ``(m-1) x bottleneck + sum(stage times) + sum(p2p)`` plus the
slowest stage's gradient all-reduce, where ``m`` is the number of micro-batches and the
bottleneck is the slowest stage or p2p hop. Collectives that leave a node share its NIC
with every other such group touching the node.

Memory per GPU: its layers' weights, gradients and optimizer state divided by tp, plus the
micro-batches 1F1B keeps in flight on its stage (``pp - stage``, at most ``m``) of
activations divided by tp x sp, within ``usable_fraction`` of GPU memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelfleet.scheduling.costmodel import (
    GIB,
    CostCoefficients,
    Link,
    LinkFn,
    LinkKind,
    ModelSpec,
    compute_seconds,
    find_slowest_link,
    time_allreduce,
    time_ulysses,
)
from modelfleet.scheduling.inventory import Device
from modelfleet.scheduling.parallel_layout import (
    Breakdown,
    Layout,
    Stage,
    list_collective_groups,
)

DEFAULT_USABLE_FRACTION = 0.92
"""Share of GPU memory a plan may fill; the rest is CUDA context and fragmentation."""


@dataclass(frozen=True)
class IterationCost:
    """Prices a placed layout and bounds the layers each stage can hold."""

    model: ModelSpec
    coefficients: CostCoefficients
    usable_fraction: float
    link_fn: LinkFn

    def estimate(self, layout: Layout, stages: Sequence[Stage]) -> Breakdown:
        """Price one iteration of a placed layout (see the module docstring)."""
        m = self.model.global_batch // (layout.dp * self.model.micro_batch)
        parts = [self.stage_seconds(layout, s.devices, s.layers) for s in stages]
        stage_times = [sum(p) for p in parts]
        hops = [
            2.0 * self.p2p_seconds(layout, a.devices, b.devices)
            for a, b in itertools.pairwise(stages)
        ]
        slowest = max(range(len(stages)), key=lambda s: stage_times[s])
        bottleneck = max([stage_times[slowest], *hops])
        pipeline = (m - 1) * bottleneck + sum(stage_times) + sum(hops)
        compute, tp, sp = (m * part for part in parts[slowest])
        pp = sum(hops) + (m - 1) * (bottleneck - stage_times[slowest])
        dp = max(self.gradient_seconds(layout, s) for s in stages)
        return Breakdown(compute, tp, sp, pp, pipeline - compute - tp - sp - pp, dp)

    def stage_seconds(
        self, layout: Layout, devices: Sequence[Device], layers: int
    ) -> tuple[float, float, float]:
        """(compute, TP, SP) seconds of one micro-batch, forward and backward, on a stage."""
        model, fraction = self.model, layers / self.model.layers
        tokens = model.micro_batch * model.seq_len
        work = model.sequence_work(model.seq_len, layout.tp * layout.sp, fraction, layout.tp)
        gpu = min(devices, key=lambda d: d.tflops).node.gpu
        compute = compute_seconds(work.scaled(model.micro_batch), gpu, self.coefficients)
        groups = list_collective_groups(layout, devices)
        activation = tokens / layout.sp * model.hidden * model.bytes_per_value
        tp = (
            4
            * layers
            * self.collective_seconds(
                groups["tp"], lambda link, n: time_allreduce(activation, n, link)
            )
        )
        sp = self.collective_seconds(
            groups["sp"], lambda link, n: time_ulysses(model, tokens, n, link, fraction)
        )
        return compute, tp, sp

    def gradient_seconds(self, layout: Layout, stage: Stage) -> float:
        grads = self.model.params * stage.layers / self.model.layers / layout.tp
        nbytes = grads * self.model.bytes_per_value
        groups = list_collective_groups(layout, stage.devices)["dp"]
        return self.collective_seconds(groups, lambda link, n: time_allreduce(nbytes, n, link))

    def collective_seconds(
        self, groups: list[list[Device]], cost: Callable[[Link, int], float]
    ) -> float:
        """Slowest group of a collective; groups leaving a node share that node's NIC."""
        if len(groups[0]) <= 1:
            return 0.0
        crossing: dict[str, int] = {}
        for group in groups:
            nodes = {d.node.name for d in group}
            if len(nodes) > 1:
                for name in nodes:
                    crossing[name] = crossing.get(name, 0) + 1
        worst = 0.0
        for group in groups:
            link = find_slowest_link(group, self.link_fn)
            if link.kind is not LinkKind.NVLINK:
                sharing = max(crossing[d.node.name] for d in group)
                link = Link(link.kind, link.latency_s, link.gbps / sharing)
            worst = max(worst, cost(link, len(group)))
        return worst

    def p2p_seconds(
        self, layout: Layout, sender: Sequence[Device], receiver: Sequence[Device]
    ) -> float:
        """Activations of one micro-batch from every rank to its peer in the next stage;
        transfers between the same pair of nodes share the link."""
        model = self.model
        per_rank = (
            model.micro_batch
            * model.seq_len
            / (layout.sp * layout.tp)
            * model.hidden
            * model.bytes_per_value
        )
        per_pair: dict[tuple[str, str], tuple[Link, float]] = {}
        for a, b in zip(sender, receiver, strict=True):
            key = (a.node.name, b.node.name)
            link, nbytes = per_pair.get(key, (self.link_fn(a, b), 0.0))
            per_pair[key] = (link, nbytes + per_rank)
        return max(link.seconds(nbytes) for link, nbytes in per_pair.values())

    def layer_cap(
        self, layout: Layout, devices: Sequence[Device], stage: int, micro_batches: int
    ) -> int:
        """Most layers a stage can hold: states plus the micro-batches 1F1B keeps in flight."""
        per_layer = self.per_layer_bytes(layout, stage, micro_batches)
        budget = min(d.memory_gib for d in devices) * GIB * self.usable_fraction
        return int(budget // per_layer)

    def per_layer_bytes(self, layout: Layout, stage: int, micro_batches: int) -> float:
        model = self.model
        in_flight = min(layout.pp - stage, micro_batches)
        activations = model.activation_bytes(model.micro_batch * model.seq_len, layers=1)
        return model.state_bytes(1) / layout.tp + in_flight * activations / (layout.tp * layout.sp)

    def even_need_gib(self, layout: Layout) -> float:
        """Per-GPU memory of the first (most loaded) stage with layers split evenly."""
        m = self.model.global_batch // (layout.dp * self.model.micro_batch)
        layers = math.ceil(self.model.layers / layout.pp)
        return layers * self.per_layer_bytes(layout, 0, m) / GIB
