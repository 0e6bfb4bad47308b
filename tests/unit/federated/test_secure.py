"""Secure FLoRA aggregation: exact up to the stated fixed-point bound, uploads that reveal
nothing alone, a clear refusal on dropouts, and exact bytes."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from modelfleet.federated.aggregation import (
    LoraFactors,
    Matrix,
    apply_global_update,
    effective_weights,
)
from modelfleet.federated.secure import (
    MODULUS,
    MissingUploads,
    SecureRound,
    SharedProjection,
    Words,
    aggregate,
    agreed_seeds,
    client_upload,
    delta_error_bound,
    new_exchange_key,
    quantisation_bound,
    upload_bytes,
)

ALPHA = 16.0
NONCE = "round-1"


@cache
def key_of(client: str) -> tuple[bytes, bytes]:
    """Each client's X25519 key pair for the tests' rounds."""
    return new_exchange_key()


PROJECTION = SharedProjection(seed=42, max_rank=16, shapes={"q_proj": (32, 24), "v_proj": (16, 24)})
RANKS = {"alice": 4, "bob": 8, "carol": 16}


def trained_b(rng: np.random.Generator, rank: int) -> dict[str, Matrix]:
    """A client's B's after a round of local training: small and non-zero."""
    return {
        layer: 0.05 * rng.normal(size=(d_out, rank))
        for layer, (d_out, _) in PROJECTION.shapes.items()
    }


def upload(round_: SecureRound, client: str, b: dict[str, Matrix], nonce: str = NONCE) -> Words:
    """The client's masked upload, with seeds agreed by X25519 with every other participant."""
    peers = {p: key_of(p)[1] for p in round_.participants if p != client}
    return client_upload(round_, client, b, agreed_seeds(key_of(client)[0], peers, nonce))


def unmasked_fixed_point(round_: SecureRound, client: str, b: dict[str, Matrix]) -> Words:
    """What the client's upload would be without masks: its weighted, padded B in
    fixed point modulo 2**32."""
    parts = []
    for layer in sorted(b):
        padded = np.zeros((PROJECTION.shapes[layer][0], PROJECTION.max_rank))
        rank = b[layer].shape[1]
        padded[:, :rank] = round_.share(client) * ALPHA / rank * b[layer]
        parts.append(padded.ravel())
    fixed = np.rint(np.concatenate(parts) * 2**round_.fraction_bits).astype(np.int64)
    return (fixed % MODULUS).astype(np.uint32)


def test_masked_sum_equals_the_closed_form_within_the_fixed_point_bound() -> None:
    rng = np.random.default_rng(0)
    round_ = SecureRound(PROJECTION, {"alice": 100.0, "bob": 300.0, "carol": 600.0}, ALPHA)
    bs = {client: trained_b(rng, rank) for client, rank in RANKS.items()}
    base = {layer: rng.normal(size=shape) for layer, shape in PROJECTION.shapes.items()}

    update = aggregate(round_, {c: upload(round_, c, b) for c, b in bs.items()})

    for layer in PROJECTION.shapes:
        # Each client's delta as its own model computes it: frozen A[:r_k], trained B_k.
        closed = sum(
            round_.share(c)
            * (
                effective_weights(
                    base, {layer: LoraFactors(PROJECTION.start(RANKS[c])[layer].a, b[layer])}, ALPHA
                )[layer]
                - base[layer]
            )
            for c, b in bs.items()
        )
        error = float(np.max(np.abs(update[layer].product() - closed)))
        bound = delta_error_bound(round_, layer)
        assert error <= bound < 1e-4 * float(np.max(np.abs(closed)))
        merged = apply_global_update(base, update)[layer]
        assert float(np.max(np.abs(merged - base[layer] - closed))) <= bound
    assert quantisation_bound(round_) == 3 * 2.0**-21


@given(st.integers(0, 2**32), st.lists(st.integers(1, 16), min_size=2, max_size=6))
@settings(max_examples=50, deadline=None)
def test_masks_cancel_for_any_number_of_participants(seed: int, ranks: list[int]) -> None:
    rng = np.random.default_rng(seed)
    weights = {f"c{k}": float(rng.uniform(1, 100)) for k in range(len(ranks))}
    round_ = SecureRound(PROJECTION, weights, ALPHA)
    bs = {f"c{k}": trained_b(rng, r) for k, r in enumerate(ranks)}

    update = aggregate(round_, {c: upload(round_, c, b) for c, b in bs.items()})

    for layer in PROJECTION.shapes:
        exact = np.zeros((PROJECTION.shapes[layer][0], PROJECTION.max_rank))
        for c, b in bs.items():
            rank = b[layer].shape[1]
            exact[:, :rank] += round_.share(c) * ALPHA / rank * b[layer]
        assert float(np.max(np.abs(update[layer].b - exact))) <= quantisation_bound(round_)
        assert np.array_equal(update[layer].a, PROJECTION.a(layer))


def uniformity_p_value(words: Words, bins: int = 16) -> float:
    """Chi-square p-value that the words' top bits are uniform over ``bins`` values."""
    top = words.astype(np.uint64) * bins // MODULUS
    return float(stats.chisquare(np.bincount(top, minlength=bins)).pvalue)


def test_one_masked_upload_is_uniform_whatever_b_it_hides() -> None:
    rng = np.random.default_rng(1)
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    zero = {layer: np.zeros((d_out, 4)) for layer, (d_out, _) in PROJECTION.shapes.items()}
    for b in (trained_b(rng, 4), zero):
        assert uniformity_p_value(upload(round_, "alice", b)) > 1e-3


def test_one_entry_is_uniform_over_mask_seeds_for_two_different_b() -> None:
    rng = np.random.default_rng(2)
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    first, second = trained_b(rng, 8), trained_b(rng, 8)
    nonces = [f"round-{i}" for i in range(3000)]
    entries = [
        np.array([upload(round_, "bob", b, nonce)[0] for nonce in nonces], dtype=np.uint32)
        for b in (first, second)
    ]
    counts = [np.bincount(e.astype(np.uint64) * 16 // MODULUS, minlength=16) for e in entries]
    assert all(uniformity_p_value(e) > 1e-3 for e in entries)
    assert stats.chi2_contingency(np.array(counts)).pvalue > 1e-3


def test_an_upload_differs_from_the_clients_b_everywhere() -> None:
    rng = np.random.default_rng(3)
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    b = trained_b(rng, 16)
    masked = upload(round_, "carol", b)
    assert masked.dtype == np.uint32
    assert np.all(masked != unmasked_fixed_point(round_, "carol", b))


def test_a_dropout_after_masking_is_refused_naming_the_missing_client() -> None:
    rng = np.random.default_rng(4)
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    uploads = {c: upload(round_, c, trained_b(rng, r)) for c, r in RANKS.items() if c != "bob"}
    with pytest.raises(MissingUploads, match=r"\['bob'\].*cannot be unmasked") as refused:
        aggregate(round_, uploads)
    assert refused.value.missing == ["bob"]


def test_upload_bytes_are_four_per_padded_b_entry() -> None:
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    sent = upload(round_, "alice", trained_b(np.random.default_rng(5), 4))
    assert upload_bytes(PROJECTION) == (32 + 16) * 16 * 4 == sent.nbytes


def test_shared_a_is_the_same_everywhere_and_start_slices_it() -> None:
    again = SharedProjection(seed=42, max_rank=16, shapes=dict(PROJECTION.shapes))
    assert np.array_equal(PROJECTION.a("q_proj"), again.a("q_proj"))
    assert not np.array_equal(PROJECTION.a("q_proj"), PROJECTION.a("v_proj"))
    start = PROJECTION.start(4)["q_proj"]
    assert np.array_equal(start.a, PROJECTION.a("q_proj")[:4]) and not start.b.any()


def test_an_entry_past_the_fixed_point_range_is_refused_naming_the_client() -> None:
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    huge = {layer: np.full((d_out, 4), 1e6) for layer, (d_out, _) in PROJECTION.shapes.items()}
    with pytest.raises(ValueError, match=r"client 'alice'.*fixed-point range.*fraction_bits"):
        upload(round_, "alice", huge)


def test_a_round_needs_two_participants_and_matching_pair_seeds() -> None:
    with pytest.raises(ValueError, match=r"at least 2 participants"):
        SecureRound(PROJECTION, {"alice": 1.0}, ALPHA)
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    b = trained_b(np.random.default_rng(6), 4)
    with pytest.raises(ValueError, match=r"pair seeds for \['bob'\].*\['bob', 'carol'\]"):
        client_upload(round_, "alice", b, {"bob": 1})


def test_b_of_a_rank_above_the_maximum_is_refused() -> None:
    round_ = SecureRound(PROJECTION, dict.fromkeys(RANKS, 1.0), ALPHA)
    with pytest.raises(ValueError, match=r"'alice' layer 'q_proj'.*max_rank=16"):
        upload(round_, "alice", trained_b(np.random.default_rng(7), 32))


def test_both_ends_of_a_pair_agree_a_seed_the_relay_cannot_and_each_nonce_a_new_one() -> None:
    alice, bob, eve = key_of("alice"), key_of("bob"), new_exchange_key()
    assert agreed_seeds(alice[0], {"bob": bob[1]}, NONCE) == {
        "bob": agreed_seeds(bob[0], {"alice": alice[1]}, NONCE)["alice"]
    }
    relayed = agreed_seeds(eve[0], {"alice": alice[1], "bob": bob[1]}, NONCE)
    assert agreed_seeds(alice[0], {"bob": bob[1]}, NONCE)["bob"] not in relayed.values()
    assert agreed_seeds(alice[0], {"bob": bob[1]}, "round-2") != agreed_seeds(
        alice[0], {"bob": bob[1]}, NONCE
    )
