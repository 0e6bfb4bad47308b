"""FedAvg and FLoRA aggregation of LoRA adapters, checked against closed forms in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.federated.aggregation import (
    ClientUpdate,
    LoraFactors,
    Matrix,
    apply_global_update,
    effective_weights,
    fedavg,
    flora_stack,
    lora_scale,
    normalise_weights,
    reinitialise,
)

ALPHA = 16.0
SHAPES = {"q_proj": (32, 24), "v_proj": (16, 24)}


def trained_adapter(
    rng: np.random.Generator, rank: int, shapes: dict[str, tuple[int, int]]
) -> dict[str, LoraFactors]:
    """An adapter after local training: both factors non-zero."""
    return {
        layer: LoraFactors(a=rng.normal(size=(rank, d_in)), b=rng.normal(size=(d_out, rank)))
        for layer, (d_out, d_in) in shapes.items()
    }


def clients(ranks: list[int], weights: list[float], seed: int = 0) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(client=f"c{k}", adapter=trained_adapter(rng, r, SHAPES), weight=w)
        for k, (r, w) in enumerate(zip(ranks, weights, strict=True))
    ]


def closed_form(updates: list[ClientUpdate], layer: str) -> Matrix:
    """sum_k p_k * (alpha / r_k) * B_k @ A_k, straight from the definition."""
    total = sum(u.weight for u in updates)
    return sum(
        (u.weight / total)
        * (ALPHA / u.adapter[layer].rank)
        * u.adapter[layer].b
        @ u.adapter[layer].a
        for u in updates
    )


def relative_error(x: Matrix, reference: Matrix) -> float:
    return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


def naive_padded_average(updates: list[ClientUpdate], layer: str) -> Matrix:
    """What averaging mismatched factors gives: A's and scaled B's zero-padded to the
    largest rank and averaged separately, then multiplied."""
    r_max = max(u.adapter[layer].rank for u in updates)
    shares = normalise_weights([u.weight for u in updates])
    a_avg, b_avg = 0.0, 0.0
    for p, u in zip(shares, updates, strict=True):
        f = u.adapter[layer]
        a_avg = a_avg + p * np.pad(f.a, ((0, r_max - f.rank), (0, 0)))
        b_avg = b_avg + p * lora_scale(ALPHA, f.rank) * np.pad(f.b, ((0, 0), (0, r_max - f.rank)))
    return np.asarray(b_avg @ a_avg)


def test_flora_stack_is_exact_where_naive_padded_averaging_is_not() -> None:
    updates = clients([4, 8, 16], [100.0, 300.0, 600.0])
    stacked = flora_stack(updates, ALPHA)
    for layer in SHAPES:
        exact = closed_form(updates, layer)
        assert stacked[layer].rank == 4 + 8 + 16
        assert relative_error(stacked[layer].product(), exact) < 1e-10
        assert relative_error(naive_padded_average(updates, layer), exact) > 0.1


@st.composite
def mixed_rank_rounds(draw: st.DrawFn) -> list[ClientUpdate]:
    d_out, d_in = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    ranks = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    weights = draw(st.lists(st.floats(1e-3, 1e6), min_size=len(ranks), max_size=len(ranks)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    return [
        ClientUpdate(f"c{k}", trained_adapter(rng, r, {"layer": (d_out, d_in)}), w)
        for k, (r, w) in enumerate(zip(ranks, weights, strict=True))
    ]


@given(mixed_rank_rounds())
@settings(max_examples=200, deadline=None)
def test_flora_stack_is_exact_for_any_shapes_ranks_and_weights(
    updates: list[ClientUpdate],
) -> None:
    stacked = flora_stack(updates, ALPHA)["layer"]
    assert relative_error(stacked.product(), closed_form(updates, "layer")) < 1e-10


@given(
    st.integers(0, 2**32),
    st.integers(1, 8),
    st.lists(st.floats(1e-3, 1e6), min_size=1, max_size=6),
)
@settings(max_examples=100, deadline=None)
def test_fedavg_of_identical_adapters_is_that_adapter(
    seed: int, rank: int, weights: list[float]
) -> None:
    adapter = trained_adapter(np.random.default_rng(seed), rank, SHAPES)
    averaged = fedavg([ClientUpdate(f"c{k}", adapter, w) for k, w in enumerate(weights)])
    for layer, f in adapter.items():
        np.testing.assert_allclose(averaged[layer].a, f.a, rtol=1e-12)
        np.testing.assert_allclose(averaged[layer].b, f.b, rtol=1e-12)


def test_fedavg_weights_each_factor_by_data_share() -> None:
    updates = clients([8, 8], [1.0, 3.0])
    averaged = fedavg(updates)["q_proj"]
    first, second = (u.adapter["q_proj"] for u in updates)
    np.testing.assert_allclose(averaged.a, 0.25 * first.a + 0.75 * second.a, rtol=1e-12)
    np.testing.assert_allclose(averaged.b, 0.25 * first.b + 0.75 * second.b, rtol=1e-12)


def test_fedavg_refuses_mixed_ranks_naming_layer_ranks_and_fix() -> None:
    with pytest.raises(ValueError, match=r"'q_proj' has ranks \{'c0': 4, 'c1': 8\}.*FLoRA"):
        fedavg(clients([4, 8], [1.0, 1.0]))


@given(st.lists(st.floats(1e-3, 1e9), min_size=1, max_size=10), st.floats(1e-3, 1e3))
def test_normalised_weights_sum_to_one_keep_ratios_and_ignore_units(
    weights: list[float], factor: float
) -> None:
    shares = normalise_weights(weights)
    assert math.isclose(float(shares.sum()), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(shares * sum(weights), weights, rtol=1e-12)
    np.testing.assert_allclose(normalise_weights([w * factor for w in weights]), shares, rtol=1e-12)


@pytest.mark.parametrize("weights", [[], [1.0, 0.0], [2.0, -1.0], [1.0, math.nan], [math.inf]])
def test_normalise_weights_refuses_empty_or_non_positive(weights: list[float]) -> None:
    with pytest.raises(ValueError, match=r"weight"):
        normalise_weights(weights)


def test_every_rank_ends_the_round_on_the_same_effective_weights() -> None:
    rng = np.random.default_rng(7)
    base = {layer: rng.normal(size=shape) for layer, shape in SHAPES.items()}
    base["o_proj"] = rng.normal(size=(24, 32))
    updates = clients([4, 8, 16], [2.0, 1.0, 1.0], seed=3)

    new_base = apply_global_update(base, flora_stack(updates, ALPHA))

    for layer in SHAPES:
        expected = base[layer] + closed_form(updates, layer)
        assert relative_error(new_base[layer], expected) < 1e-10
    assert np.array_equal(new_base["o_proj"], base["o_proj"])
    small = {layer: reinitialise(4, shape, seed=11) for layer, shape in SHAPES.items()}
    large = {layer: reinitialise(16, shape, seed=12) for layer, shape in SHAPES.items()}
    small_weights = effective_weights(new_base, small, ALPHA)
    large_weights = effective_weights(new_base, large, ALPHA)
    for layer in new_base:
        assert np.array_equal(small_weights[layer], large_weights[layer])
        assert np.array_equal(small_weights[layer], new_base[layer])


def test_reinitialise_is_deterministic_by_seed_with_b_zero() -> None:
    first = reinitialise(8, (16, 24), seed=5)
    assert np.array_equal(first.a, reinitialise(8, (16, 24), seed=5).a)
    assert not np.array_equal(first.a, reinitialise(8, (16, 24), seed=6).a)
    assert first.a.shape == (8, 24) and first.b.shape == (16, 8)
    assert not first.b.any()


def test_reinitialise_draws_a_from_the_range_peft_uses() -> None:
    """PEFT draws A with torch's kaiming_uniform_(a=sqrt(5)); both reach the same bound."""
    rank, d_in = 64, 100
    peft_a = torch.empty(rank, d_in, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(peft_a, a=math.sqrt(5))
    ours = reinitialise(rank, (8, d_in), seed=0).a
    for peak in (float(peft_a.abs().max()), float(np.abs(ours).max())):
        assert 0.99 / math.sqrt(d_in) < peak <= 1 / math.sqrt(d_in)


def test_apply_global_update_refuses_layers_of_another_base_model() -> None:
    update = {"q_proj": reinitialise(4, (32, 24), seed=0)}
    with pytest.raises(ValueError, match=r"\['q_proj'\].*spec.baseModel"):
        apply_global_update({"k_proj": np.zeros((32, 24))}, update)
    with pytest.raises(ValueError, match=r"'q_proj'.*\(32, 16\).*spec.baseModel"):
        apply_global_update({"q_proj": np.zeros((32, 16))}, update)


def test_aggregation_refuses_clients_adapting_different_layers() -> None:
    first, second = clients([4, 4], [1.0, 1.0])
    partial = ClientUpdate("c1", {"q_proj": second.adapter["q_proj"]}, 1.0)
    with pytest.raises(ValueError, match=r"client 'c1' adapts layers.*targetModules"):
        flora_stack([first, partial], ALPHA)


def test_aggregation_refuses_a_client_reporting_twice() -> None:
    first, _ = clients([4, 4], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\['c0'\] report more than once"):
        fedavg([first, first])


def test_lora_factors_refuse_mismatched_ranks() -> None:
    with pytest.raises(ValueError, match=r"A \(4, 8\) and B \(8, 2\)"):
        LoraFactors(a=np.zeros((4, 8)), b=np.zeros((8, 2)))
