"""Calibrate the cost model's compute and communication terms from timings on this machine.

Compute: times dense matmuls (linear FLOPs), attention (quadratic FLOPs) and large copies
(memory traffic) at a few sizes, then fits ``CostCoefficients`` with
``costmodel.fit_compute``. The device's nominal peak and memory bandwidth are inputs: the
fit then says what fraction of them each kind of work achieves, which is what transfers to
the planners. The kernels are numpy's (BLAS on CPU).

Communication: ``comm_calibration`` times all-to-all and all-reduce between gloo processes
on this machine and fits a ``Link`` with ``costmodel.fit_link``. That pulls in torch, so
the planners never import this module; only calibration runs do.

``python -m modelfleet.scheduling.calibration --out calibration/cpu-gloo.json`` does both,
prints the fitted numbers with each measurement's predicted/measured ratio, and saves JSON
that ``costmodel.load_calibration`` reads.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelfleet.scheduling.comm_calibration import fit_collectives, measure_collectives, predict
from modelfleet.scheduling.costmodel import (
    ComputeSample,
    CostCoefficients,
    LinkKind,
    Work,
    compute_seconds,
    fit_compute,
    replace_link,
    save_calibration,
)
from modelfleet.scheduling.inventory import GpuSpec

Matrix = npt.NDArray[np.float32]


def time_call(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time after one warm-up call: the least disturbed run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_matmul(sizes: Sequence[int], seed: int = 0) -> list[ComputeSample]:
    rng = np.random.default_rng(seed)
    samples = []
    for n in sizes:
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        seconds = time_call(partial(np.matmul, a, b))
        samples.append(ComputeSample(Work(linear_flops=2.0 * n**3), seconds))
    return samples


def attend(q: Matrix, k: Matrix, v: Matrix) -> Matrix:
    """Softmax attention over ``[heads, length, head_dim]``, numerically stable."""
    scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(q.shape[-1]))
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    result: Matrix = weights @ v
    return result


def measure_attention(
    lengths: Sequence[int], heads: int = 4, head_dim: int = 64, seed: int = 0
) -> list[ComputeSample]:
    """Attention forward: QK^T and AV, 4 x heads x L^2 x head_dim FLOPs."""
    rng = np.random.default_rng(seed)
    samples = []
    for length in lengths:
        q, k, v = (
            rng.standard_normal((heads, length, head_dim), dtype=np.float32) for _ in range(3)
        )
        seconds = time_call(partial(attend, q, k, v))
        flops = 4.0 * heads * length * length * head_dim
        samples.append(ComputeSample(Work(attention_flops=flops), seconds))
    return samples


def measure_copy(megabytes: Sequence[int]) -> list[ComputeSample]:
    """A copy reads and writes every byte once."""
    samples = []
    for mb in megabytes:
        source = np.ones(mb * 2**20, dtype=np.uint8)
        target = np.empty_like(source)
        seconds = time_call(partial(np.copyto, target, source))
        samples.append(ComputeSample(Work(hbm_bytes=2.0 * source.size), seconds))
    return samples


def measure_compute(
    matmul_sizes: Sequence[int] = (256, 512, 1024),
    attention_lengths: Sequence[int] = (256, 512, 1024),
    copy_megabytes: Sequence[int] = (32, 128),
) -> list[ComputeSample]:
    """One sample per size of each kind of work, so every compute term is exercised."""
    return [
        *measure_matmul(matmul_sizes),
        *measure_attention(attention_lengths),
        *measure_copy(copy_megabytes),
    ]


def calibrate(
    device: GpuSpec,
    matmul_sizes: Sequence[int] = (256, 512, 1024),
    attention_lengths: Sequence[int] = (256, 512, 1024),
    copy_megabytes: Sequence[int] = (32, 128),
    save_to: Path | None = None,
    prior: CostCoefficients | None = None,
) -> CostCoefficients:
    """Measure, fit and optionally save; ``device`` carries the nominal peak and bandwidth."""
    samples = measure_compute(matmul_sizes, attention_lengths, copy_megabytes)
    coefficients = fit_compute(samples, device, prior or CostCoefficients())
    if save_to is not None:
        save_calibration(coefficients, save_to)
    return coefficients


# The cost model's intra-node link: ``find_link`` prices two devices on one node with it.
# Ranks on one CPU machine talk over loopback TCP, so that is the slot its fit belongs in.
LOOPBACK_SLOT = LinkKind.NVLINK
COLLECTIVE_BYTES = tuple(4**k * 2**10 for k in range(1, 8))  # 4 KiB .. 16 MiB per rank


def describe_fit(ratios: Sequence[float]) -> str:
    """Median and worst ``|predicted / measured - 1|``: how far the fitted model is off."""
    errors = np.abs(np.asarray(ratios) - 1.0)
    return f"fit error: median {np.median(errors):.0%}, worst {errors.max():.0%}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m modelfleet.scheduling.calibration",
        description="Fit the cost model's compute and loopback-link terms on this machine.",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    # Defaults are a 2-core AVX2 machine: 2 cores x 32 FP32 FLOP/cycle (two 256-bit FMA
    # pipes) x 3 GHz, and one DDR4-3200 channel. Efficiencies are relative to these.
    parser.add_argument("--tflops", type=float, default=0.192, help="nominal peak, TFLOPS")
    parser.add_argument("--mem-gbps", type=float, default=25.6, help="nominal memory GB/s")
    args = parser.parse_args(argv)
    device = GpuSpec("cpu", tflops=args.tflops, memory_gib=0.0, hbm_gbps=args.mem_gbps)

    compute = measure_compute()
    coefficients = fit_compute(compute, device, CostCoefficients())
    print(
        f"compute ({device.tflops} TFLOPS, {device.hbm_gbps} GB/s nominal): "
        f"mfu_linear={coefficients.mfu_linear:.3g} "
        f"mfu_attention={coefficients.mfu_attention:.3g} "
        f"hbm_efficiency={coefficients.hbm_efficiency:.3g} "
        f"overhead_s={coefficients.overhead_s:.3g}"
    )
    compute_ratios = [compute_seconds(s.work, device, coefficients) / s.seconds for s in compute]
    print(f"  {describe_fit(compute_ratios)} over {len(compute)} kernels")

    timings = measure_collectives(COLLECTIVE_BYTES)
    link = fit_collectives(LOOPBACK_SLOT, timings)
    print(
        f"link ({link.kind.value} slot, gloo over 127.0.0.1, 2 ranks): "
        f"latency_s={link.latency_s:.3g} gbps={link.gbps:.3g}"
    )
    link_ratios = []
    for timing in timings:
        ratio = predict(timing, link) / timing.seconds
        link_ratios.append(ratio)
        print(
            f"  {timing.collective.value:<10} {timing.nbytes:>9} B  "
            f"measured {timing.seconds * 1e6:9.1f} us  predicted/measured {ratio:.2f}"
        )
    print(f"  {describe_fit(link_ratios)} over {len(timings)} collectives")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_calibration(replace_link(coefficients, link), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
