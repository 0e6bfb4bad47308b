"""Secure aggregation for mixed-rank LoRA: the server learns the weighted sum of the
clients' updates and nothing about any one of them (FedJob
``spec.privacy.secureAggregation`` with ``spec.aggregation.method: FLoRA``).

Why FLoRA stacking cannot simply go through SecAgg+: stacking puts each client's factors
into its own zero-padded slot, and the slots are disjoint, so the masked sum of the
padded uploads *is* their concatenation; the server reads every client's A_k and B_k
straight off the sum. Masking protects nothing there.

The exact secure variant used here shares A instead of stacking it. The server announces
a seed; from it every client derives the same frozen random A of the job's maximum rank
``r_max`` per layer (:class:`SharedProjection`, drawn as PEFT draws A). Client k trains
only its B_k (d_out x r_k) against the first r_k rows ``A[:r_k]``, with A frozen as in
FFA-LoRA (Sun et al. 2024), so its delta is ``scale_k * B_k @ A[:r_k]``. Padding B_k with
zero columns to r_max leaves that delta unchanged, and the padded B's of all clients now
share one coordinate system, so a plain sum is meaningful:
``(sum_k p_k * scale_k * pad(B_k)) @ A == sum_k p_k * scale_k * B_k @ A[:r_k]`` exactly.
The global update is the pair (A, summed B) with the scale folded in, which
:func:`modelfleet.federated.aggregation.apply_global_update` adds into every client's
base weights, as for FLoRA; each client then restarts with B zero.

Masking (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning"): each pair of participants shares a seed; both expand it into the
same uniform mask, the one whose name sorts first adds it and the other subtracts it, so
every mask cancels in the sum. Arithmetic is modulo 2**32 on fixed-point integers
(``round(x * 2**fraction_bits)``), where masking is exact and a masked upload is uniform
whatever it hides. Decoding reads the sum as a two's-complement int32 and divides by
``2**fraction_bits``. Each client's rounding is off by at most half a unit, so the
decoded sum of weighted B's is within ``K * 2**-(fraction_bits + 1)`` of the exact one
per entry (K participants), and the delta within that times A's largest column L1 norm
(:func:`quantisation_bound`, :func:`delta_error_bound`). Uploads are range-checked so the
sum cannot wrap.

Limits: no dropouts. If a participant masks and then fails to upload, its pair masks no
longer cancel and the sum cannot be unmasked; :func:`aggregate` refuses, naming the
missing clients. SecAgg+ (Bell et al. 2020), which Flower ships for FedAvg, recovers by
Shamir-sharing each client's seeds and adds self-masks; this module does neither. As with
any sum, a participant in a two-client round can subtract its own update from the result.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from modelfleet.federated.aggregation import (
    LoraFactors,
    Matrix,
    Vector,
    lora_scale,
    normalise_weights,
    reinitialise,
)

MODULUS = 2**32
"""Masked arithmetic is modulo 2**32: one uint32 per entry on the wire."""

FRACTION_BITS = 20
"""Default fixed-point resolution 2**-20 (about 1e-6) per entry; with K clients each may
upload entries up to about 2**11 / K in magnitude."""

Words = npt.NDArray[np.uint32]


class MissingUploads(ValueError):
    """Participants masked but did not upload, so their pair masks cannot be removed."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = sorted(missing)
        super().__init__(
            f"clients {self.missing} were in the masked round but sent no upload; their pair "
            "masks do not cancel, so the sum cannot be unmasked. This secure aggregation "
            "does not recover dropouts (SecAgg+ would, with secret shares): rerun the round "
            "without them"
        )


@dataclass(frozen=True)
class SharedProjection:
    """The frozen A all clients share, per layer, at the job's maximum rank.

    ``shapes`` maps each target layer to the (d_out, d_in) of the weight it adapts. The
    seed is public (announced by the server); secrecy rests on the masks, not on A.
    """

    seed: int
    max_rank: int
    shapes: Mapping[str, tuple[int, int]]

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"projection seed={self.seed} must be non-negative")
        if self.max_rank < 1:
            raise ValueError(f"max_rank={self.max_rank} must be at least 1 (the largest rank)")
        if not self.shapes:
            raise ValueError("a shared projection needs at least one target layer")

    def a(self, layer: str) -> Matrix:
        """The frozen ``r_max x d_in`` A of ``layer``, the same at every client."""
        digest = hashlib.sha256(f"{self.seed}/{layer}".encode()).digest()
        return reinitialise(self.max_rank, self.shapes[layer], int.from_bytes(digest)).a

    def start(self, rank: int) -> dict[str, LoraFactors]:
        """A client's adapter at the start of a round: ``A[:rank]`` (frozen), B zero."""
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"client rank={rank} must lie in [1, max_rank={self.max_rank}]")
        return {
            layer: LoraFactors(a=self.a(layer)[:rank], b=np.zeros((d_out, rank)))
            for layer, (d_out, _) in self.shapes.items()
        }

    @property
    def entries(self) -> int:
        """Entries of one upload: every layer's zero-padded B, d_out x r_max."""
        return sum(d_out * self.max_rank for d_out, _ in self.shapes.values())


@dataclass(frozen=True)
class SecureRound:
    """What the server announces before a masked round.

    ``weights`` maps each participant to its data weight (``spec.clients[].weight``); the
    set is fixed before masking. ``alpha`` is ``spec.adapter.alpha``.
    """

    projection: SharedProjection
    weights: Mapping[str, float]
    alpha: float
    fraction_bits: int = FRACTION_BITS

    def __post_init__(self) -> None:
        if len(self.weights) < 2:
            raise ValueError(
                f"secure aggregation needs at least 2 participants, got {sorted(self.weights)}"
                "; with one, the sum is that client's update"
            )
        if not 0 <= self.fraction_bits <= 30:
            raise ValueError(f"fraction_bits={self.fraction_bits} must lie in [0, 30]")

    @property
    def participants(self) -> list[str]:
        """Participant names in the order that decides who adds and who subtracts a mask."""
        return sorted(self.weights)

    def share(self, client: str) -> float:
        """Client's ``p_k``, its weight over all participants' total."""
        shares = normalise_weights([self.weights[c] for c in self.participants])
        return float(shares[self.participants.index(client)])

    @property
    def limit(self) -> float:
        """Largest entry magnitude a client may upload so that the sum of K fixed-point
        uploads stays within int32 and cannot wrap modulo 2**32."""
        return math.ldexp(2**31 / len(self.weights) - 1, -self.fraction_bits)


def quantisation_bound(round_: SecureRound) -> float:
    """Largest error per entry of the decoded sum of weighted B's: K half-units."""
    return len(round_.weights) * math.ldexp(0.5, -round_.fraction_bits)


def delta_error_bound(round_: SecureRound, layer: str) -> float:
    """Largest error per entry of the decoded delta ``B_sum @ A`` of ``layer``: each
    entry is a dot product with a column of A, so the B bound times A's largest column
    L1 norm."""
    a = round_.projection.a(layer)
    return quantisation_bound(round_) * float(np.abs(a).sum(axis=0).max())


def new_exchange_key() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair for one masked round, (private, public) as raw bytes: the
    client keeps the private half, the server relays the public half to the other
    participants."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, public


def agreed_seeds(private_key: bytes, peers: Mapping[str, bytes], nonce: str) -> dict[str, int]:
    """The seed this client shares with each peer: a Diffie-Hellman agreement (X25519) of
    its private key with the peer's public one, hashed with the round's ``nonce``. Both
    ends of a pair derive the same seed; the server, which only relays public keys, cannot.
    The keys are fresh every round, so no mask is ever used twice."""
    own = X25519PrivateKey.from_private_bytes(private_key)
    return {
        peer: int.from_bytes(
            hashlib.sha256(
                own.exchange(X25519PublicKey.from_public_bytes(public)) + nonce.encode()
            ).digest()
        )
        for peer, public in peers.items()
    }


def client_upload(
    round_: SecureRound,
    client: str,
    trained_b: Mapping[str, npt.ArrayLike],
    peer_seeds: Mapping[str, int],
) -> Words:
    """One client's masked upload: ``p_k * scale_k * pad(B_k)`` for every layer in sorted
    order, in fixed point, plus the masks it shares with every peer.

    ``trained_b`` maps each layer to the client's trained B (d_out x r_k, r_k <= r_max);
    A is not sent, it is the shared one.
    """
    if client not in round_.weights:
        raise ValueError(f"client {client!r} is not among participants {round_.participants}")
    peers = [p for p in round_.participants if p != client]
    if sorted(peer_seeds) != peers:
        raise ValueError(
            f"client {client!r} has pair seeds for {sorted(peer_seeds)} but the round's other "
            f"participants are {peers}; agree a seed with each of them"
        )
    values = _weighted_padded_b(round_, client, trained_b)
    words = _quantise(values, round_, client)
    for peer, seed in peer_seeds.items():
        mask = _mask(seed, words.size)
        words = (words + mask if client < peer else words + (MODULUS - mask)) % MODULUS
    return words.astype(np.uint32)


def aggregate(round_: SecureRound, uploads: Mapping[str, Words]) -> dict[str, LoraFactors]:
    """The global update from all participants' masked uploads: per layer, the shared A
    and the decoded sum of weighted B's, with the scale folded in.

    Refuses (:class:`MissingUploads`) unless every participant uploaded.
    """
    missing = sorted(set(round_.participants) - set(uploads))
    if missing:
        raise MissingUploads(missing)
    strangers = sorted(set(uploads) - set(round_.participants))
    if strangers:
        raise ValueError(f"uploads from {strangers}, who are not participants of this round")
    size = round_.projection.entries
    wrong = {c: u.size for c, u in uploads.items() if u.shape != (size,)}
    if wrong:
        raise ValueError(f"uploads of clients {wrong} (entries) differ from the round's {size}")
    total = np.sum(np.stack(list(uploads.values())).astype(np.uint64), axis=0) % MODULUS
    signed = total.astype(np.uint32).view(np.int32).astype(np.float64)
    values = np.ldexp(signed, -round_.fraction_bits)
    return {
        layer: LoraFactors(a=round_.projection.a(layer), b=b)
        for layer, b in _split(round_.projection, values).items()
    }


def upload_bytes(projection: SharedProjection) -> int:
    """Bytes one client uploads per round: one uint32 per entry of its padded B's.

    The server's broadcast of the summed B's has the same size (A is rebuilt from the
    seed), so a client's traffic per round is twice this.
    """
    return projection.entries * np.dtype(np.uint32).itemsize


def _weighted_padded_b(
    round_: SecureRound, client: str, trained_b: Mapping[str, npt.ArrayLike]
) -> Vector:
    """``p_k * scale_k * B_k`` per layer, zero-padded to r_max and flattened in layer order."""
    projection = round_.projection
    if sorted(trained_b) != sorted(projection.shapes):
        raise ValueError(
            f"client {client!r} sends layers {sorted(trained_b)} but the round adapts "
            f"{sorted(projection.shapes)}; every client must use spec.adapter.targetModules"
        )
    share = round_.share(client)
    parts = []
    for layer in sorted(projection.shapes):
        b = np.asarray(trained_b[layer], dtype=np.float64)
        d_out = projection.shapes[layer][0]
        if b.ndim != 2 or b.shape[0] != d_out or not 1 <= b.shape[1] <= projection.max_rank:
            raise ValueError(
                f"client {client!r} layer {layer!r}: B has shape {b.shape}, expected "
                f"({d_out}, r) with 1 <= r <= max_rank={projection.max_rank}"
            )
        padded = np.zeros((d_out, projection.max_rank))
        padded[:, : b.shape[1]] = share * lora_scale(round_.alpha, b.shape[1]) * b
        parts.append(padded.ravel())
    return np.concatenate(parts)


def _quantise(values: Vector, round_: SecureRound, client: str) -> npt.NDArray[np.uint64]:
    """Fixed-point integers modulo 2**32 (two's complement for negatives), range-checked."""
    peak = float(np.max(np.abs(values)))
    if not math.isfinite(peak):
        raise ValueError(f"client {client!r}: B holds NaN or infinite entries")
    if peak > round_.limit:
        raise ValueError(
            f"client {client!r}: weighted B entry {peak:.6g} exceeds the fixed-point range "
            f"+-{round_.limit:.6g} ({round_.fraction_bits} fraction bits, "
            f"{len(round_.weights)} clients); lower fraction_bits or clip B"
        )
    fixed = np.rint(np.ldexp(values, round_.fraction_bits)).astype(np.int64)
    return (fixed % MODULUS).astype(np.uint64)


def _mask(seed: int, size: int) -> npt.NDArray[np.uint64]:
    """The uniform mask modulo 2**32 that a pair's shared seed expands to."""
    return np.random.default_rng(seed).integers(0, MODULUS, size=size, dtype=np.uint64)


def _split(projection: SharedProjection, values: Vector) -> dict[str, Matrix]:
    """A flat upload back into per-layer d_out x r_max matrices, in sorted layer order."""
    result = {}
    offset = 0
    for layer in sorted(projection.shapes):
        d_out = projection.shapes[layer][0]
        count = d_out * projection.max_rank
        result[layer] = values[offset : offset + count].reshape(d_out, projection.max_rank)
        offset += count
    return result
