"""Calibrate the cost model's compute terms by timing kernels on this machine's CPU.

Times dense matmuls (linear FLOPs), attention (quadratic FLOPs) and large copies (memory
traffic) at a few sizes, then fits ``CostCoefficients`` with ``costmodel.fit_compute``.
The device's nominal peak and memory bandwidth are inputs: the fit then says what fraction
of them each kind of work achieves, which is what transfers to the planners. The kernels
are numpy's (BLAS on CPU), which keeps torch out of the planners' package.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelfleet.scheduling.costmodel import (
    ComputeSample,
    CostCoefficients,
    Work,
    fit_compute,
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


def calibrate(
    device: GpuSpec,
    matmul_sizes: Sequence[int] = (256, 512, 1024),
    attention_lengths: Sequence[int] = (256, 512, 1024),
    copy_megabytes: Sequence[int] = (32, 128),
    save_to: Path | None = None,
    prior: CostCoefficients | None = None,
) -> CostCoefficients:
    """Measure, fit and optionally save; ``device`` carries the nominal peak and bandwidth."""
    samples = [
        *measure_matmul(matmul_sizes),
        *measure_attention(attention_lengths),
        *measure_copy(copy_megabytes),
    ]
    coefficients = fit_compute(samples, device, prior or CostCoefficients())
    if save_to is not None:
        save_calibration(coefficients, save_to)
    return coefficients
