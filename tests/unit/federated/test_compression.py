"""Update compression: exact byte counts, bounded round-trip error, error feedback."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelfleet.api.fedjob import Compression, Quantization
from modelfleet.federated.compression import (
    HEADER,
    VALUE_BITS,
    ErrorFeedback,
    decode,
    encode,
    encoded_size,
    index_bits,
    kept_count,
)

updates = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=14),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
)
compressions = st.builds(
    Compression, sparsity=st.floats(0, 0.999), quantization=st.sampled_from(list(Quantization))
)


def kth_largest_magnitude(x: npt.NDArray[np.float32], k: int) -> float:
    """Magnitudes above this are surely kept, below it surely dropped (ties go either way)."""
    return float(np.sort(np.abs(x.ravel()))[::-1][k - 1]) if k else math.inf


@settings(deadline=None)
@given(updates, compressions)
def test_encoded_size_is_the_payload_length(x: npt.NDArray[np.float32], c: Compression) -> None:
    k = kept_count(x.size, c.sparsity)
    assert len(encode(x, c)) == encoded_size(x.size, k, VALUE_BITS[c.quantization])


@settings(deadline=None)
@given(updates, compressions)
def test_round_trip_error_is_half_a_step_on_kept_entries(
    x: npt.NDArray[np.float32], c: Compression
) -> None:
    """Kept: within half a step, plus float32 rounding of the decoded value (2^-24 relative,
    2^-150 absolute); dropped: zero. The step is max|x| / L rounded up to a float32: within
    2^-22 relative or two subnormal steps of it."""
    payload = encode(x, c)
    y = decode(payload, x.shape)
    step = HEADER.unpack_from(payload)[3]
    k = kept_count(x.size, c.sparsity)
    threshold = kth_largest_magnitude(x, k)
    kept, dropped = np.abs(x) > threshold, np.abs(x) < threshold
    error = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert np.all(error[kept] <= step / 2 + 2**-24 * np.abs(y[kept]).astype(np.float64) + 2**-150)
    assert np.all(y[dropped] == 0)
    assert np.count_nonzero(y) <= k
    if c.quantization is not Quantization.NONE and x.size:
        levels = 2 ** (VALUE_BITS[c.quantization] - 1) - 1
        peak = float(np.max(np.abs(x)))
        assert peak <= step * levels <= peak * (1 + 2**-22) + levels * 2**-148


@settings(deadline=None)
@given(updates)
def test_no_compression_is_exact_and_costs_four_bytes_an_entry(
    x: npt.NDArray[np.float32],
) -> None:
    payload = encode(x, Compression())
    assert np.array_equal(decode(payload, x.shape).view(np.uint32), x.view(np.uint32))
    assert len(payload) == 4 * x.size + HEADER.size


@given(st.integers(2, 2**32 - 1), st.data())
def test_positions_cost_at_most_two_bits_over_log2_n_over_k(n: int, data: st.DataObject) -> None:
    """Elias-Fano: at most 2 + ceil(log2(n/k)) bits per kept entry."""
    k = data.draw(st.integers(1, n - 1))
    ceil_log2 = (-(-n // k) - 1).bit_length()
    assert index_bits(n, k) <= k * (2 + ceil_log2)


def test_sparsity_is_the_decimal_share_dropped() -> None:
    assert kept_count(100, 0.29) == 71
    assert kept_count(100_000, 0.9) == 10_000
    assert kept_count(7, 0.0) == 7


def test_sparsity_0_9_int8_is_24_times_smaller_than_float32() -> None:
    """k = 10^4 of n = 10^5: positions 3k + k + (n-1 >> 3) + 1 = 52,500 bits (l = 3), values
    8k = 80,000 bits, so 16,563 bytes + 13 of header = 16,576; 400,000 / 16,576 = 24.13.
    Ternary values take 2k bits instead: 9,076 bytes, 44.07x."""
    x = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    int8 = encode(x, Compression(sparsity=0.9, quantization=Quantization.INT8))
    ternary = encode(x, Compression(sparsity=0.9, quantization=Quantization.TERNARY))
    assert len(int8) == 16_576
    assert x.nbytes / len(int8) > 24
    assert x.nbytes / len(ternary) > 44


def run_rounds(
    g: npt.NDArray[np.float64], c: Compression, rounds: int, feedback: bool
) -> tuple[list[float], ErrorFeedback]:
    """Send the same update every round; the distance of the running sum of what arrived
    from rounds * g after each round."""
    client = ErrorFeedback(c)
    sent = np.zeros_like(g)
    distances = []
    for t in range(1, rounds + 1):
        payload = client.compress("layer", g) if feedback else encode(g, c)
        sent += decode(payload, g.shape)
        distances.append(float(np.linalg.norm(sent - t * g)))
    return distances, client


@pytest.mark.parametrize(
    ("sparsity", "quantization"),
    [(0.9, "Int8"), (0.9, "Ternary"), (0.9, "None"), (0.5, "Ternary"), (0.0, "Int8")],
)
def test_error_feedback_delivers_a_constant_update(sparsity: float, quantization: str) -> None:
    """sum sent after T rounds = T g - residual, and the residual stays below
    rho / (1 - rho) |g|, rho = sqrt(1 - 1/n) (loosened to 1/(2n) for float32 rounding),
    so the average sent converges to g at rate 1/T."""
    n, rounds = 50, 400
    g = np.random.default_rng(1).normal(size=n)
    c = Compression(sparsity=sparsity, quantization=quantization)
    distances, client = run_rounds(g, c, rounds, feedback=True)
    rho = math.sqrt(1 - 1 / (2 * n))
    assert max(distances) <= rho / (1 - rho) * np.linalg.norm(g)
    assert distances[-1] == pytest.approx(client.residual_norm(), rel=1e-9, abs=1e-9)
    assert distances[-1] / rounds < 0.02 * np.linalg.norm(g)


def test_without_feedback_dropped_entries_never_arrive() -> None:
    n, rounds = 50, 400
    g = np.random.default_rng(1).normal(size=n)
    c = Compression(sparsity=0.9, quantization=Quantization.INT8)
    once = decode(encode(g, c), g.shape)
    without, _ = run_rounds(g, c, rounds, feedback=False)
    with_feedback, _ = run_rounds(g, c, rounds, feedback=True)
    assert np.count_nonzero(once) == 5
    assert without[-1] == pytest.approx(rounds * np.linalg.norm(once - g), rel=1e-6)
    assert without[-1] > 50 * with_feedback[-1]


def test_residuals_are_kept_per_layer() -> None:
    rng = np.random.default_rng(2)
    updates = {"q_proj": rng.normal(size=(4, 8)), "v_proj": rng.normal(size=(8, 4))}
    client = ErrorFeedback(Compression(sparsity=0.75, quantization=Quantization.TERNARY))
    owed = 0.0
    for layer, update in updates.items():
        owed += float(np.sum((update - decode(client.compress(layer, update), update.shape)) ** 2))
    assert client.residual_norm() == pytest.approx(math.sqrt(owed))
    with pytest.raises(ValueError, match="'q_proj': update shape \\(32,\\)"):
        client.compress("q_proj", np.zeros(32))


def test_bad_input_is_refused_with_the_reason() -> None:
    c = Compression(sparsity=0.5, quantization=Quantization.INT8)
    payload = encode(np.arange(10.0), c)
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode(np.array([1.0, np.nan]), c)
    with pytest.raises(ValueError, match="payload holds 10 entries but shape \\(3, 3\\)"):
        decode(payload, (3, 3))
    with pytest.raises(ValueError, match="need"):
        decode(payload[:-1], (10,))
    with pytest.raises(ValueError, match="value width 7 bits"):
        decode(bytes([7]) + payload[1:], (10,))
    with pytest.raises(ValueError, match="fewer than the 13-byte header"):
        decode(b"\x08", (10,))
