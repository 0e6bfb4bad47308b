"""Cost model: link pricing by topology, fits recover known coefficients, JSON round trip."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from modelfleet.scheduling.calibration import (
    calibrate,
    measure_attention,
    measure_copy,
    measure_matmul,
)
from modelfleet.scheduling.costmodel import (
    ComputeSample,
    CostCoefficients,
    Link,
    LinkKind,
    LinkSample,
    ModelSpec,
    Work,
    compute_seconds,
    find_link,
    find_slowest_link,
    fit_compute,
    fit_link,
    load_calibration,
    make_link_fn,
    replace_link,
    save_calibration,
    time_sequence,
    time_ulysses,
)
from modelfleet.scheduling.inventory import (
    GPU_SPECS,
    Device,
    GpuSpec,
    describe_node,
    read_inventory,
)

MODEL = ModelSpec(layers=32, hidden=4096, params=7e9, seq_len=8192, global_batch=64)


def cluster_devices() -> tuple[Device, ...]:
    return read_inventory(
        [
            describe_node(
                "a0",
                "NVIDIA-H100-80GB-HBM3",
                2,
                "infiniband",
                "a",
                **{"modelfleet.io/nic-gbps": "200"},
            ),
            describe_node("a1", "NVIDIA-H100-80GB-HBM3", 2, "infiniband", "a"),
            describe_node("b0", "NVIDIA-H100-80GB-HBM3", 2, "roce", "b"),
            describe_node("e0", "NVIDIA-L4", 1, **{"modelfleet.io/nic-gbps": "10"}),
        ]
    ).devices


def test_link_kind_follows_node_island_and_ethernet() -> None:
    a0, a0b, a1, _, b0, _, e0 = cluster_devices()
    coefficients = CostCoefficients()

    assert find_link(a0, a0b, coefficients) == coefficients.nvlink
    island = find_link(a0, a1, coefficients)
    assert (island.kind, island.gbps) == (LinkKind.RDMA, 200.0)
    across = find_link(a1, b0, coefficients)
    assert (across.kind, across.gbps) == (LinkKind.ETHERNET, coefficients.ethernet.gbps)
    assert find_link(a0, e0, coefficients).gbps == 10.0
    slowest = find_slowest_link([a0, a0b, a1, e0], make_link_fn(coefficients))
    assert slowest.kind is LinkKind.ETHERNET
    ideal = make_link_fn(coefficients, all_rdma=True)
    assert ideal(a0, e0) == coefficients.rdma


def test_link_seconds_is_latency_plus_bytes_over_bandwidth() -> None:
    link = Link(LinkKind.RDMA, 1e-5, 400.0)

    assert link.seconds(50e9) == pytest.approx(1e-5 + 1.0)
    assert link.seconds(0.0, messages=3) == pytest.approx(3e-5)


def test_sequence_time_is_quadratic_in_length_and_matches_its_parts() -> None:
    gpu = GPU_SPECS["H100"]
    coefficients = CostCoefficients()
    link = coefficients.nvlink
    poly = time_sequence(MODEL, gpu, 4, link, coefficients)

    for length in (1024.0, 32768.0):
        expected = compute_seconds(MODEL.sequence_work(length, 4), gpu, coefficients) + (
            time_ulysses(MODEL, length, 4, link)
        )
        assert poly(length) == pytest.approx(expected)
    assert poly.c2 > 0 and poly.c1 > 0
    long_share = (poly(65536.0) - poly(32768.0)) / (poly(32768.0) - poly(16384.0))
    assert long_share > 2.0


def test_fit_compute_recovers_known_coefficients() -> None:
    truth = CostCoefficients(
        mfu_linear=0.52, mfu_attention=0.31, hbm_efficiency=0.66, overhead_s=2e-3
    )
    gpu = GPU_SPECS["A100-80GB"]
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(40):
        linear, attention, hbm = 10.0 ** rng.uniform([10, 10, 8], [14.5, 14, 11.5])
        work = Work(float(linear), float(attention), float(hbm))
        noise = 1 + rng.normal(0, 1e-4)
        samples.append(ComputeSample(work, compute_seconds(work, gpu, truth) * noise))

    fitted = fit_compute(samples, gpu, prior=CostCoefficients())

    assert fitted.mfu_linear == pytest.approx(truth.mfu_linear, rel=1e-2)
    assert fitted.mfu_attention == pytest.approx(truth.mfu_attention, rel=1e-2)
    assert fitted.hbm_efficiency == pytest.approx(truth.hbm_efficiency, rel=1e-2)
    assert fitted.overhead_s == pytest.approx(truth.overhead_s, rel=5e-2)


def test_fit_compute_keeps_prior_for_terms_never_measured() -> None:
    truth = CostCoefficients(mfu_linear=0.4)
    gpu = GPU_SPECS["L4"]
    samples = [
        ComputeSample(Work(linear_flops=f), compute_seconds(Work(linear_flops=f), gpu, truth))
        for f in (1e12, 3e12, 9e12)
    ]

    fitted = fit_compute(samples, gpu, prior=CostCoefficients(mfu_attention=0.123))

    assert fitted.mfu_linear == pytest.approx(0.4)
    assert fitted.mfu_attention == 0.123


def test_fit_link_recovers_latency_and_bandwidth() -> None:
    truth = Link(LinkKind.ETHERNET, 4e-5, 25.0)
    samples = [LinkSample(n, truth.seconds(n)) for n in (1e3, 1e5, 1e7, 1e9)]

    fitted = fit_link(LinkKind.ETHERNET, samples)

    assert fitted.latency_s == pytest.approx(truth.latency_s, rel=1e-6)
    assert fitted.gbps == pytest.approx(truth.gbps, rel=1e-9)
    with pytest.raises(ValueError, match="bandwidth"):
        fit_link(LinkKind.RDMA, [LinkSample(1.0, 1.0), LinkSample(2.0, 1.0)])


def test_calibration_round_trips_through_json(tmp_path: Path) -> None:
    calibrated = replace_link(
        CostCoefficients(mfu_linear=0.5, overhead_s=1e-3), Link(LinkKind.RDMA, 2e-6, 123.0)
    )
    path = tmp_path / "calibration.json"

    save_calibration(calibrated, path)

    assert load_calibration(path) == calibrated


CPU = GpuSpec("cpu", tflops=0.1, memory_gib=8.0, hbm_gbps=10.0)
"""Nominal figures only: the fit expresses the measurements as efficiencies relative to them."""


def measure_every_kind() -> list[ComputeSample]:
    """Matmuls, attention and copies, each at sizes whose middle one is held out of fits."""
    return [
        *measure_matmul([256, 512, 768, 1024]),
        *measure_attention([256, 512, 768, 1024]),
        *measure_copy([32, 64, 128]),
    ]


HELD_OUT = (2, 6, 9)
"""The 768 matmul, the 768-token attention and the 64 MiB copy: inside the fitted range."""


@pytest.mark.slow
def test_calibration_on_this_cpu_is_saved_and_usable(tmp_path: Path) -> None:
    path = tmp_path / "cpu.json"

    fitted = calibrate(CPU, save_to=path)

    assert load_calibration(path) == fitted
    assert fitted.mfu_linear > 0 and fitted.mfu_attention > 0 and fitted.hbm_efficiency > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_compute_fit_predicts_held_out_kernels_within_a_factor_of_three() -> None:
    """Fit on this CPU, predict kernels the fit never saw.

    A shared 2-core machine slows single timings several-fold, and only ever slows them, so
    every kernel keeps its fastest of five rounds (each itself a best of five), interleaved
    so that held-out and fitted kernels meet the same load. What remains is the linear
    model's own error across sizes (cache effects make large matmuls more efficient) and
    leftover noise, well inside a factor of three at the median; a broken fit or a unit slip
    between the kinds of work misses by far more.
    """
    rounds = [measure_every_kind() for _ in range(5)]
    fastest = [min(kernel, key=lambda s: s.seconds) for kernel in zip(*rounds, strict=True)]
    fitted = fit_compute(
        [s for i, s in enumerate(fastest) if i not in HELD_OUT], CPU, prior=CostCoefficients()
    )

    ratios = [compute_seconds(fastest[i].work, CPU, fitted) / fastest[i].seconds for i in HELD_OUT]

    assert 1 / 3 < statistics.median(ratios) < 3, ratios
