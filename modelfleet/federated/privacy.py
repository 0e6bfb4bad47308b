"""User-level differential privacy for federated rounds (FedJob
``spec.privacy.differentialPrivacy``): DP-FedAvg of McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models".

The unit of privacy is a client: a round must reveal little about whether any one client,
with all of its data, took part. So a client's whole update (every layer together) is
clipped to L2 norm ``clipNorm`` (:func:`clip_update`), which bounds how far one client can
move the sum; the server adds Gaussian noise of standard deviation
``noiseMultiplier * clipNorm`` to the sum of the clipped updates (:func:`add_noise`), which
hides that bounded contribution. Clipping runs on the client, so it also holds when secure
aggregation lets the server see only the sum; the server then trusts clients to clip.

The average is the fixed-denominator estimator of the paper: the noisy sum is divided by
the expected number of clients per round, ``clientFraction * len(clients)``
(:func:`expected_clients`), not by how many reported. Dividing by the reported count would
let the presence of one client change the denominator, and so the sensitivity; the fixed
one keeps it at ``clipNorm / expected_clients`` at the cost of shrinking rounds in which
fewer clients report. Clients count equally here: per-client weights would scale the
sensitivity by the largest weight.

Privacy loss is accounted per round by opacus' Rényi-DP accountant (Mironov 2017; Mironov,
Talwar and Zhang 2019), converted to (ε, δ) with Balle et al. 2020. Each round is one
sampled Gaussian mechanism with sampling rate ``clientFraction``; at 1 it is the plain
Gaussian mechanism. Subsampling amplifies privacy only if every client joins a round
independently with that probability, which :func:`sample_clients` does; picking a fixed
number of clients instead voids the accounting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.rdp import RDPAccountant

from modelfleet.federated.job import JobSettings

Array = npt.NDArray[np.floating[Any]]
Update = Mapping[str, Array]
"""A client's update or a sum of them: layer name to array."""

T = TypeVar("T")

ORDERS: tuple[float, ...] = (
    tuple(1 + x / 100 for x in range(1, 10))
    + tuple(RDPAccountant.DEFAULT_ALPHAS)
    + (80, 96, 128, 192, 256, 512, 1024)
)
"""Rényi orders the (ε, δ) conversion minimises over: opacus' defaults widened at both ends
so that very small noise (best order near 1) and very large noise (best order in the
hundreds) still get a tight bound."""

ROUND_LIMIT = 2**40
"""The most rounds :meth:`Accountant.rounds_within` reports; more than any job runs."""

DP_FIELD = "spec.privacy.differentialPrivacy"


def update_norm(update: Update) -> float:
    """The L2 norm of all of a client's layers taken as one vector: the quantity user-level
    DP bounds, since one client contributes all its layers at once."""
    return math.sqrt(
        sum(float(np.sum(np.square(layer, dtype=np.float64))) for layer in update.values())
    )


def clip_update(update: Update, clip_norm: float) -> tuple[dict[str, Array], float]:
    """Scale a client's update so its joint L2 norm is at most ``clip_norm``.

    Returns the clipped update (each layer in its own dtype; an update already within the
    bound comes back with the same values) and the norm before clipping, which the runtime
    reports so that a clip norm far below typical norms can be noticed.
    """
    if clip_norm <= 0:
        raise ValueError(f"{DP_FIELD}.clipNorm must be > 0, got {clip_norm}")
    for name, layer in update.items():
        if not np.issubdtype(layer.dtype, np.floating):
            raise ValueError(f"update layer {name!r} has dtype {layer.dtype}; send float arrays")
    norm = update_norm(update)
    if not math.isfinite(norm):
        raise ValueError(
            f"update has non-finite values (norm {norm}); the client diverged, lower its "
            f"learning rate or drop it from the round"
        )
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {name: layer * layer.dtype.type(scale) for name, layer in update.items()}, norm


def add_noise(
    sum_update: Update, noise_multiplier: float, clip_norm: float, rng: np.random.Generator
) -> dict[str, Array]:
    """The sum of clipped updates plus independent N(0, (noise_multiplier * clip_norm)^2)
    noise on every entry: the Gaussian mechanism for a sum whose sensitivity to one client
    is ``clip_norm``."""
    std = noise_multiplier * clip_norm
    return {
        name: (layer + rng.normal(0.0, std, size=layer.shape)).astype(layer.dtype)
        for name, layer in sum_update.items()
    }


def expected_clients(job: JobSettings) -> float:
    """The fixed denominator of the private average: clients expected per round."""
    return job.client_fraction * len(job.clients)


def noisy_mean(
    sum_update: Update,
    noise_multiplier: float,
    clip_norm: float,
    clients: float,
    rng: np.random.Generator,
) -> dict[str, Array]:
    """The round's private average: noise the sum of clipped updates, then divide by the
    fixed ``clients`` (:func:`expected_clients`), whoever reported."""
    if clients <= 0:
        raise ValueError(f"expected clients per round must be > 0, got {clients}")
    noisy = add_noise(sum_update, noise_multiplier, clip_norm, rng)
    return {name: (layer / clients).astype(layer.dtype) for name, layer in noisy.items()}


def sample_clients(
    clients: Sequence[T], client_fraction: float, rng: np.random.Generator
) -> list[T]:
    """Poisson sampling: each client joins the round independently with probability
    ``client_fraction``, the sampling the accountant's amplification assumes. The round may
    get fewer or more clients than ``client_fraction * len(clients)``."""
    joins = rng.random(len(clients)) < client_fraction
    return [client for client, chosen in zip(clients, joins, strict=True) if chosen]


@lru_cache(maxsize=64)
def _round_rdp(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """Rényi DP of one round at every order in :data:`ORDERS` (composition adds them)."""
    rdp = opacus_rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(ORDERS)
    )
    return tuple(float(value) for value in rdp)


@dataclass(frozen=True)
class Accountant:
    """The privacy spent by the rounds completed so far.

    Every round uses the same mechanism, so the state is its two parameters and the round
    count; ε is recomputed from them. Checkpoint :meth:`to_dict` with each completed round
    and resume with :meth:`from_dict`, so a restart neither forgets nor double-counts a
    round.
    """

    noise_multiplier: float
    sample_rate: float
    rounds: int = 0

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(
                f"{DP_FIELD}.noiseMultiplier must be > 0 for a finite ε, got "
                f"{self.noise_multiplier}; raise it or disable differentialPrivacy"
            )
        if not 0 < self.sample_rate <= 1:
            raise ValueError(
                f"spec.aggregation.clientFraction must be in (0, 1], got {self.sample_rate}"
            )
        if self.rounds < 0:
            raise ValueError(f"accountant rounds must be >= 0, got {self.rounds}")

    @classmethod
    def for_job(cls, job: JobSettings) -> Accountant:
        """A fresh accountant for a job's noise multiplier and client fraction."""
        if job.privacy is None:
            raise ValueError(f"{DP_FIELD} is not enabled: the job spends no privacy budget")
        return cls(noise_multiplier=job.privacy.noise_multiplier, sample_rate=job.client_fraction)

    def after_round(self) -> Accountant:
        """The accountant once one more round has completed."""
        return Accountant(self.noise_multiplier, self.sample_rate, self.rounds + 1)

    def epsilon(self, delta: float) -> float:
        """ε of (ε, δ)-DP spent by the rounds so far."""
        return self.epsilon_after(self.rounds, delta)

    def epsilon_after(self, rounds: int, delta: float) -> float:
        """ε of (ε, δ)-DP after ``rounds`` rounds of this mechanism; 0 for none."""
        if not 0 < delta < 1:
            raise ValueError(f"{DP_FIELD}.targetDelta must be in (0, 1), got {delta}")
        if rounds == 0:
            return 0.0
        rdp = np.asarray(_round_rdp(self.noise_multiplier, self.sample_rate)) * rounds
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
        return float(eps)

    def would_exceed(self, target_epsilon: float, delta: float) -> bool:
        """Whether running one more round would take ε past ``target_epsilon``: the job stops
        before such a round, never after it."""
        return self.epsilon_after(self.rounds + 1, delta) > target_epsilon

    def rounds_within(self, target_epsilon: float, delta: float) -> int:
        """The most rounds, in total, whose ε stays at or below ``target_epsilon`` (capped
        at :data:`ROUND_LIMIT`). ε only grows with rounds, so a doubling search followed by
        bisection finds it."""
        low, high = 0, 1
        while high < ROUND_LIMIT and self.epsilon_after(high, delta) <= target_epsilon:
            low, high = high, high * 2
        if high >= ROUND_LIMIT and self.epsilon_after(ROUND_LIMIT, delta) <= target_epsilon:
            return ROUND_LIMIT
        while high - low > 1:
            middle = (low + high) // 2
            if self.epsilon_after(middle, delta) <= target_epsilon:
                low = middle
            else:
                high = middle
        return low

    def to_dict(self) -> dict[str, float | int]:
        """The checkpointed state."""
        return {
            "noiseMultiplier": self.noise_multiplier,
            "sampleRate": self.sample_rate,
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, object]) -> Accountant:
        """Restore a checkpointed accountant, naming any missing or malformed key."""
        return cls(
            noise_multiplier=_number(state, "noiseMultiplier"),
            sample_rate=_number(state, "sampleRate"),
            rounds=int(_number(state, "rounds", integral=True)),
        )


def _number(state: Mapping[str, object], key: str, integral: bool = False) -> float:
    """A numeric field of a checkpointed accountant state, or a ValueError naming it."""
    value = state.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, float) and not integral:
        return value
    wanted = "an integer" if integral else "a number"
    raise ValueError(
        f"accountant checkpoint field {key!r} must be {wanted}, got {value!r}; the "
        f"checkpoint is damaged, restore it or restart the job from round 0"
    )
