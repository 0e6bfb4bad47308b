"""DP-FedAvg: joint clipping, Gaussian noise of the right scale, and the RDP accountant
checked against the closed form for the Gaussian mechanism and a brute-force scan."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.federated.job import JobSettings
from modelfleet.federated.launch import job_settings
from modelfleet.federated.privacy import (
    ORDERS,
    Accountant,
    Array,
    add_noise,
    clip_update,
    expected_clients,
    noisy_mean,
    sample_clients,
    update_norm,
)

DELTA = 1e-5
CLOSED_FORM_FACTOR = 1.3
"""The classic RDP-to-DP conversion is looser than Balle et al.'s by at most this factor
for noise multipliers 0.7-5 and 1-1000 rounds (about 1.23 at worst, one round at 5)."""

layers = hnp.arrays(
    st.sampled_from([np.float32, np.float64]),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8),
    elements=st.floats(-1e6, 1e6, width=32),
)
updates = st.dictionaries(st.sampled_from(["q_proj.A", "q_proj.B", "v_proj.A"]), layers)
clip_norms = st.floats(1e-3, 1e3)


def job(client_fraction: float, noise_multiplier: float = 1.0) -> JobSettings:
    """The settings of a four-client DP FedJob."""
    spec = FedJobSpec.model_validate(
        {
            "baseModel": {"uri": "zoo://qwen-tiny"},
            "clients": [{"name": f"c{i}", "datasetUri": f"s3://d{i}"} for i in range(4)],
            "aggregation": {"clientFraction": client_fraction},
            "privacy": {
                "differentialPrivacy": {"enabled": True, "noiseMultiplier": noise_multiplier}
            },
            "output": {"uri": "s3://out"},
        }
    )
    return job_settings(spec)


def classic_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Gaussian mechanism without subsampling: RDP alpha / (2 sigma^2) per round, composed
    over the rounds and converted with eps = rdp + log(1/delta) / (alpha - 1)."""
    return min(
        rounds * alpha / (2 * noise_multiplier**2) + math.log(1 / delta) / (alpha - 1)
        for alpha in ORDERS
    )


@given(updates, clip_norms)
@settings(max_examples=200, deadline=None)
def test_clipping_bounds_the_joint_norm_and_keeps_the_direction(
    update: dict[str, Array], clip_norm: float
) -> None:
    clipped, norm = clip_update(update, clip_norm)

    assert norm == update_norm(update)
    assert update_norm(clipped) <= clip_norm * (1 + 1e-6)
    if norm > clip_norm:
        assert update_norm(clipped) == pytest.approx(clip_norm, rel=1e-5)
    scale = min(1.0, clip_norm / norm) if norm else 1.0
    for name, layer in update.items():
        assert clipped[name].dtype == layer.dtype
        np.testing.assert_allclose(clipped[name], layer * scale, rtol=1e-6, atol=1e-30)


@given(updates, clip_norms)
@settings(max_examples=200, deadline=None)
def test_updates_within_the_bound_are_unchanged(update: dict[str, Array], clip_norm: float) -> None:
    norm = update_norm(update)
    if norm > clip_norm:
        update = {
            name: layer * layer.dtype.type(clip_norm / norm / 2) for name, layer in update.items()
        }

    clipped, _ = clip_update(update, clip_norm)

    assert clipped.keys() == update.keys()
    for name, layer in update.items():
        np.testing.assert_array_equal(clipped[name], layer)


def test_clipping_refuses_what_it_cannot_bound() -> None:
    with pytest.raises(ValueError, match="clipNorm must be > 0"):
        clip_update({"a": np.ones(3)}, 0.0)
    with pytest.raises(ValueError, match="layer 'a' has dtype int64"):
        clip_update({"a": np.ones(3, dtype=np.int64)}, 1.0)
    with pytest.raises(ValueError, match="non-finite values"):
        clip_update({"a": np.array([1.0, np.nan])}, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_has_standard_deviation_noise_multiplier_times_clip_norm(dtype: type) -> None:
    zeros: dict[str, Array] = {
        "a": np.zeros((300, 400), dtype=dtype),
        "b": np.zeros(100_000, dtype=dtype),
    }

    noisy = add_noise(zeros, noise_multiplier=1.5, clip_norm=0.4, rng=np.random.default_rng(7))

    for name, layer in noisy.items():
        assert layer.dtype == dtype and layer.shape == zeros[name].shape
        # The sample std of n normals is off by about std / sqrt(2n): 0.2 % here, 2 % allowed.
        assert float(np.std(layer)) == pytest.approx(0.6, rel=0.02)
        assert abs(float(np.mean(layer))) < 5 * 0.6 / math.sqrt(layer.size)
    assert not np.array_equal(noisy["a"].ravel()[:1000], noisy["b"][:1000])


def test_noisy_mean_divides_by_the_expected_not_the_reported_clients() -> None:
    spec = job(client_fraction=0.5)
    total = {"a": np.array([2.0, -4.0])}

    mean = noisy_mean(total, 0.0, 1.0, expected_clients(spec), np.random.default_rng(0))

    assert expected_clients(spec) == 2.0
    np.testing.assert_array_equal(mean["a"], [1.0, -2.0])


def test_sampling_takes_each_client_with_the_client_fraction() -> None:
    clients = list(range(20_000))
    rng = np.random.default_rng(3)

    assert sample_clients(clients, 1.0, rng) == clients
    share = len(sample_clients(clients, 0.1, rng)) / len(clients)
    assert share == pytest.approx(0.1, abs=5 * math.sqrt(0.1 * 0.9 / len(clients)))


@pytest.mark.parametrize("noise_multiplier", [0.7, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("rounds", [1, 10, 100, 1000])
def test_accountant_matches_the_closed_form_of_the_gaussian_mechanism(
    noise_multiplier: float, rounds: int
) -> None:
    epsilon = Accountant(noise_multiplier, sample_rate=1.0, rounds=rounds).epsilon(DELTA)
    closed = classic_epsilon(noise_multiplier, rounds, DELTA)

    assert epsilon <= closed
    assert closed <= CLOSED_FORM_FACTOR * epsilon


@pytest.mark.parametrize("sample_rate", [0.05, 1.0])
def test_epsilon_grows_with_rounds_and_falls_with_noise(sample_rate: float) -> None:
    by_rounds = [Accountant(1.0, sample_rate, t).epsilon(DELTA) for t in range(0, 40)]
    by_noise = [Accountant(s, sample_rate, 20).epsilon(DELTA) for s in (0.6, 0.8, 1, 2, 4, 8)]

    assert by_rounds[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(by_rounds))
    assert all(a > b for a, b in itertools.pairwise(by_noise))


def test_subsampling_amplifies_privacy() -> None:
    assert Accountant(1.0, 0.1, 50).epsilon(DELTA) < Accountant(1.0, 1.0, 50).epsilon(DELTA) / 3


@pytest.mark.parametrize(
    ("noise_multiplier", "sample_rate", "target"),
    [(1.0, 0.1, 8.0), (1.0, 1.0, 8.0), (2.0, 1.0, 8.0), (1.2, 0.05, 3.0), (0.7, 1.0, 1.0)],
)
def test_rounds_within_is_the_largest_count_under_the_target(
    noise_multiplier: float, sample_rate: float, target: float
) -> None:
    accountant = Accountant(noise_multiplier, sample_rate)
    scan = 0
    while accountant.epsilon_after(scan + 1, DELTA) <= target:
        scan += 1

    within = accountant.rounds_within(target, DELTA)

    assert within == scan
    for rounds in range(within + 2):
        at = Accountant(noise_multiplier, sample_rate, rounds)
        assert at.would_exceed(target, DELTA) == (rounds >= within)


def test_the_job_stops_before_the_round_that_would_exceed_the_target() -> None:
    accountant = Accountant.for_job(job(client_fraction=0.5, noise_multiplier=1.1))
    while not accountant.would_exceed(8.0, DELTA):
        accountant = accountant.after_round()

    assert accountant.epsilon(DELTA) <= 8.0 < accountant.after_round().epsilon(DELTA)
    assert accountant.rounds == accountant.rounds_within(8.0, DELTA) > 0


@given(
    st.floats(0.05, 100),
    st.floats(1e-4, 1.0),
    st.integers(0, 10**6),
)
@settings(max_examples=50, deadline=None)
def test_state_round_trips_through_its_dict(
    noise_multiplier: float, sample_rate: float, rounds: int
) -> None:
    accountant = Accountant(noise_multiplier, sample_rate, rounds)

    restored = Accountant.from_dict(json.loads(json.dumps(accountant.to_dict())))

    assert restored == accountant


def test_damaged_state_and_settings_without_privacy_are_refused() -> None:
    state = Accountant(1.0, 0.5, 3).to_dict()
    with pytest.raises(ValueError, match="'rounds' must be an integer, got None"):
        Accountant.from_dict({k: v for k, v in state.items() if k != "rounds"})
    with pytest.raises(ValueError, match=r"'rounds' must be an integer, got 3\.5"):
        Accountant.from_dict({**state, "rounds": 3.5})
    with pytest.raises(ValueError, match="'sampleRate' must be a number, got True"):
        Accountant.from_dict({**state, "sampleRate": True})
    with pytest.raises(ValueError, match="noiseMultiplier must be > 0"):
        Accountant.for_job(job(client_fraction=1.0, noise_multiplier=0.0))
    with pytest.raises(ValueError, match="clientFraction must be in"):
        Accountant(1.0, 0.0)
    with pytest.raises(ValueError, match="targetDelta must be in"):
        Accountant(1.0, 1.0, 1).epsilon(0.0)
