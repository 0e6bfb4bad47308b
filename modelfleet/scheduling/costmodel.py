"""An explicit, calibratable cost model shared by every planner.

Planners compare layouts by predicted time, so all of them must price work the same way:

- compute: ``overhead + linear_flops / (peak * mfu_linear)
  + attention_flops / (peak * mfu_attention) + hbm_bytes / (hbm_bandwidth * hbm_efficiency)``.
  Attention FLOPs grow with the square of the sequence length, everything else (MLP,
  projections) linearly in tokens, hence the two efficiency terms.
- communication: ``latency + bytes / bandwidth`` per link kind: NVLink inside a node, RDMA
  (InfiniBand/RoCE) inside an island, Ethernet anywhere else.

The efficiencies and link constants live in ``CostCoefficients`` so they can be fitted to
measurements (``fit_compute``, ``fit_link``) and stored as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import numpy as np
from scipy.optimize import nnls

from modelfleet.scheduling.inventory import Device, GpuSpec

GIB = float(2**30)
FloatT = TypeVar("FloatT", float, "np.typing.NDArray[np.float64]")


class LinkKind(StrEnum):
    NVLINK = "nvlink"
    RDMA = "rdma"
    ETHERNET = "ethernet"


@dataclass(frozen=True)
class Link:
    kind: LinkKind
    latency_s: float
    gbps: float

    def seconds(self, nbytes: float, messages: int = 1) -> float:
        """Time to move ``nbytes`` in total, split over ``messages`` sequential messages."""
        return messages * self.latency_s + nbytes * 8.0 / (self.gbps * 1e9)


@dataclass(frozen=True)
class CostCoefficients:
    """Efficiencies and link constants; RDMA/Ethernet bandwidth is capped by the nodes' NICs."""

    mfu_linear: float = 0.45
    mfu_attention: float = 0.35
    hbm_efficiency: float = 0.7
    overhead_s: float = 0.0
    nvlink: Link = Link(LinkKind.NVLINK, 5e-6, 2400.0)
    rdma: Link = Link(LinkKind.RDMA, 1e-5, 400.0)
    ethernet: Link = Link(LinkKind.ETHERNET, 5e-5, 100.0)


@dataclass(frozen=True)
class Work:
    """Work of a piece of training, in the units the compute term prices."""

    linear_flops: float = 0.0
    attention_flops: float = 0.0
    hbm_bytes: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(
            self.linear_flops + other.linear_flops,
            self.attention_flops + other.attention_flops,
            self.hbm_bytes + other.hbm_bytes,
        )

    def scaled(self, factor: float) -> Work:
        return Work(
            self.linear_flops * factor, self.attention_flops * factor, self.hbm_bytes * factor
        )


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as the planners see it.

    ``activation_factor`` is bytes of stored activations per token, layer and hidden unit
    (34 for 16-bit training with flash attention and no recomputation, after Korthikanti et
    al.); ``state_bytes_per_param`` covers 16-bit weights and gradients plus fp32 Adam.
    """

    layers: int
    hidden: int
    params: float
    seq_len: int
    global_batch: int
    micro_batch: int = 1
    bytes_per_value: int = 2
    state_bytes_per_param: float = 16.0
    activation_factor: float = 34.0

    def sequence_work(
        self, length: float, degree: int = 1, layer_fraction: float = 1.0, weight_shards: int = 1
    ) -> Work:
        """Per-device forward+backward work of one sequence split over ``degree`` devices."""
        constant, per_token, per_token2 = self.sequence_work_terms(
            degree, layer_fraction, weight_shards
        )
        return constant + per_token.scaled(length) + per_token2.scaled(length * length)

    def sequence_work_terms(
        self, degree: int = 1, layer_fraction: float = 1.0, weight_shards: int = 1
    ) -> tuple[Work, Work, Work]:
        """Work of one sequence as constant + per-token + per-token-squared terms.

        Backward is twice forward; attention is causal, so its FLOPs are half the full
        square. Each device reads its share of the weights (1/``weight_shards``, i.e. the
        tensor-parallel degree) three times; the rest splits by ``degree``.
        """
        weights = Work(hbm_bytes=3.0 * self.params * self.bytes_per_value / weight_shards)
        per_token = Work(
            linear_flops=6.0 * self.params / degree,
            hbm_bytes=2.0 * self.activation_bytes(1.0) / degree,
        )
        per_token2 = Work(attention_flops=6.0 * self.layers * self.hidden / degree)
        return (
            weights.scaled(layer_fraction),
            per_token.scaled(layer_fraction),
            per_token2.scaled(layer_fraction),
        )

    def activation_bytes(self, tokens: float, layers: float | None = None) -> float:
        """Activation memory held for the backward pass of ``tokens`` tokens."""
        count = self.layers if layers is None else layers
        return self.activation_factor * self.hidden * count * tokens

    def state_bytes(self, layers: float) -> float:
        """Weights, gradients and optimizer state of ``layers`` layers, unsharded."""
        return self.params / self.layers * layers * self.state_bytes_per_param


def compute_seconds(work: Work, gpu: GpuSpec, coefficients: CostCoefficients) -> float:
    """Predicted time of ``work`` on one GPU, including the fixed per-launch overhead."""
    return coefficients.overhead_s + _work_seconds(work, gpu, coefficients)


def count_effective_flops(work: Work, coefficients: CostCoefficients) -> float:
    """FLOPs weighted by inverse efficiency: divided by a GPU's peak, a floor on its time."""
    return (
        work.linear_flops / coefficients.mfu_linear
        + work.attention_flops / coefficients.mfu_attention
    )


def _work_seconds(work: Work, gpu: GpuSpec, coefficients: CostCoefficients) -> float:
    return count_effective_flops(work, coefficients) / (gpu.tflops * 1e12) + work.hbm_bytes / (
        gpu.hbm_gbps * 1e9 * coefficients.hbm_efficiency
    )


@dataclass(frozen=True)
class Quadratic:
    """``c0 + c1 x + c2 x^2``; works elementwise on numpy arrays."""

    c0: float
    c1: float
    c2: float

    def __call__(self, x: FloatT) -> FloatT:
        return self.c0 + x * (self.c1 + x * self.c2)


def time_sequence(
    model: ModelSpec, gpu: GpuSpec, degree: int, link: Link, coefficients: CostCoefficients
) -> Quadratic:
    """Time of one sequence on a sequence-parallel group, as a polynomial in its length.

    The group runs at the pace of its slowest member, so ``gpu`` should be that member.
    """
    constant, per_token, per_token2 = model.sequence_work_terms(degree)
    comm_constant = time_ulysses(model, 0.0, degree, link)
    comm_per_token = time_ulysses(model, 1.0, degree, link) - comm_constant
    return Quadratic(
        compute_seconds(constant, gpu, coefficients) + comm_constant,
        _work_seconds(per_token, gpu, coefficients) + comm_per_token,
        _work_seconds(per_token2, gpu, coefficients),
    )


LinkFn = Callable[[Device, Device], Link]


def find_link(a: Device, b: Device, coefficients: CostCoefficients) -> Link:
    """The link two GPUs talk over: NVLink, their island's RDMA, or Ethernet."""
    if a.node.name == b.node.name:
        return coefficients.nvlink
    if a.node.island is not None and a.node.island == b.node.island:
        gbps = min(coefficients.rdma.gbps, a.node.nic.gbps, b.node.nic.gbps)
        return replace(coefficients.rdma, gbps=gbps)
    caps = [n.nic.gbps for n in (a.node, b.node) if not n.nic.kind.is_rdma]
    return replace(coefficients.ethernet, gbps=min([coefficients.ethernet.gbps, *caps]))


def make_link_fn(coefficients: CostCoefficients, all_rdma: bool = False) -> LinkFn:
    """Link lookup; ``all_rdma`` prices every inter-node link as RDMA (the ideal baseline)."""
    if not all_rdma:
        return lambda a, b: find_link(a, b, coefficients)
    return lambda a, b: coefficients.nvlink if a.node.name == b.node.name else coefficients.rdma


def find_slowest_link(devices: Sequence[Device], link_fn: LinkFn) -> Link:
    """The link that bounds a collective over ``devices``: the slowest between any two nodes."""
    heads = list({d.node.name: d for d in devices}.values())
    if len(heads) == 1:
        return link_fn(heads[0], heads[0])
    links = [link_fn(a, b) for i, a in enumerate(heads) for b in heads[i + 1 :]]
    return min(links, key=lambda link: (link.gbps, -link.latency_s))


def time_allreduce(nbytes: float, members: int, link: Link) -> float:
    """Ring all-reduce: 2(n-1) steps, each moving nbytes/n."""
    if members <= 1:
        return 0.0
    steps = 2 * (members - 1)
    return link.seconds(steps * nbytes / members, messages=steps)


def time_all_to_all(nbytes_per_member: float, members: int, link: Link) -> float:
    """All-to-all where each member sends (n-1)/n of its buffer."""
    if members <= 1:
        return 0.0
    return link.seconds(nbytes_per_member * (members - 1) / members, messages=members - 1)


def time_ulysses(
    model: ModelSpec, length: float, degree: int, link: Link, layer_fraction: float = 1.0
) -> float:
    """Ulysses all-to-alls of one sequence: q, k, v, output forward and their gradients."""
    per_member = length / degree * model.hidden * model.bytes_per_value
    per_layer = 8 * time_all_to_all(per_member, degree, link)
    return per_layer * model.layers * layer_fraction


@dataclass(frozen=True)
class ComputeSample:
    work: Work
    seconds: float


@dataclass(frozen=True)
class LinkSample:
    nbytes: float
    seconds: float


def fit_compute(
    samples: Sequence[ComputeSample], gpu: GpuSpec, prior: CostCoefficients
) -> CostCoefficients:
    """Least-squares (non-negative) fit of overhead and efficiencies to measured times.

    The model is linear in (overhead, 1/mfu_linear, 1/mfu_attention, 1/hbm_efficiency).
    Residuals are relative, so small and large kernels count alike and one disturbed long
    measurement cannot dominate. A term the samples never exercise keeps its prior value.
    """
    peak = gpu.tflops * 1e12
    features = np.array(
        [
            [
                1.0,
                s.work.linear_flops / peak,
                s.work.attention_flops / peak,
                s.work.hbm_bytes / (gpu.hbm_gbps * 1e9),
            ]
            for s in samples
        ]
    )
    seconds = np.array([s.seconds for s in samples])
    used = np.flatnonzero(np.abs(features).sum(axis=0) > 0)
    relative = features[:, used] / seconds[:, None]
    solution, _ = nnls(relative, np.ones(len(seconds)))
    fitted = dict(zip(used.tolist(), solution.tolist(), strict=True))
    if any(fitted.get(i, 1.0) <= 0 for i in (1, 2, 3)):
        raise ValueError("samples imply an infinite efficiency; measure larger workloads")

    def inverse(index: int, prior_value: float) -> float:
        return 1.0 / fitted[index] if index in fitted else prior_value

    return replace(
        prior,
        overhead_s=fitted.get(0, prior.overhead_s),
        mfu_linear=inverse(1, prior.mfu_linear),
        mfu_attention=inverse(2, prior.mfu_attention),
        hbm_efficiency=inverse(3, prior.hbm_efficiency),
    )


def fit_link(kind: LinkKind, samples: Iterable[LinkSample]) -> Link:
    """Least-squares latency and bandwidth from (bytes, seconds) measurements."""
    pairs = np.array([[s.nbytes, s.seconds] for s in samples])
    design = np.column_stack([np.ones(len(pairs)), pairs[:, 0]])
    (latency, per_byte), *_ = np.linalg.lstsq(design, pairs[:, 1], rcond=None)
    if per_byte <= 0:
        raise ValueError("link samples do not grow with size; cannot fit a bandwidth")
    return Link(kind, max(float(latency), 0.0), 8.0 / (float(per_byte) * 1e9))


def replace_link(coefficients: CostCoefficients, link: Link) -> CostCoefficients:
    """Coefficients with one link kind replaced (e.g. by a fitted one)."""
    if link.kind is LinkKind.NVLINK:
        return replace(coefficients, nvlink=link)
    if link.kind is LinkKind.RDMA:
        return replace(coefficients, rdma=link)
    return replace(coefficients, ethernet=link)


def save_calibration(coefficients: CostCoefficients, path: Path) -> None:
    path.write_text(json.dumps(asdict(coefficients), indent=2, sort_keys=True))


def load_calibration(path: Path) -> CostCoefficients:
    raw = json.loads(path.read_text())

    def read_link(kind: LinkKind) -> Link:
        entry = raw[kind.value]
        return Link(LinkKind(entry["kind"]), float(entry["latency_s"]), float(entry["gbps"]))

    return CostCoefficients(
        mfu_linear=float(raw["mfu_linear"]),
        mfu_attention=float(raw["mfu_attention"]),
        hbm_efficiency=float(raw["hbm_efficiency"]),
        overhead_s=float(raw["overhead_s"]),
        nvlink=read_link(LinkKind.NVLINK),
        rdma=read_link(LinkKind.RDMA),
        ethernet=read_link(LinkKind.ETHERNET),
    )
