"""One federated round's aggregation, as the ServerApp runs it: pure numpy, no Flower.

The global model is the base plus a dense per-layer delta that grows by one aggregated
update per round. Every client adds the delta into its frozen base weights and trains a
fresh LoRA of its own rank, so ranks may differ and no client holds more than it can afford
(FLoRA's scheme, see :mod:`modelfleet.federated.aggregation`).

What a client uploads depends on the job:

- plain FLoRA or FedAvg: its factors A and B, float32;
- with compression: its dense update ``scale * B @ A``, top-k + quantised with error
  feedback, because the residual a client carries over must sit on coordinates that mean
  the same every round, which fresh factors do not.

With differential privacy each client's dense update is clipped jointly over its layers,
the clipped updates summed, Gaussian noise added and the sum divided by the expected number
of clients (user-level DP-FedAvg). FedAvg's separate averaging of A and B is defined on
factors only, so the API admits compression and DP with FLoRA alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelfleet.federated.aggregation import (
    ClientUpdate,
    LoraFactors,
    fedavg,
    flora_stack,
    lora_scale,
    normalise_weights,
)
from modelfleet.federated.job import JobSettings, Method
from modelfleet.federated.privacy import (
    clip_update,
    expected_clients,
    noisy_mean,
    update_norm,
)

Delta = dict[str, npt.NDArray[np.float64]]
"""A dense weight change per adapted layer, by the layer's module name."""


@dataclass(frozen=True)
class Contribution:
    """One client's upload in one round, decoded."""

    client: str
    weight: float
    factors: Mapping[str, LoraFactors] | None = None
    """A and B per layer, scale not folded in (plain uploads)."""
    dense: Mapping[str, npt.NDArray[np.float64]] | None = None
    """``scale * B @ A`` per layer, as decompressed (compressed uploads)."""

    def delta(self, alpha: float) -> Delta:
        """This client's dense update, whichever form it arrived in."""
        if self.dense is not None:
            return {layer: np.asarray(value, np.float64) for layer, value in self.dense.items()}
        if self.factors is None:
            raise ValueError(f"client {self.client!r} uploaded neither factors nor a dense update")
        return {layer: lora_scale(alpha, f.rank) * f.product() for layer, f in self.factors.items()}


@dataclass(frozen=True)
class RoundUpdate:
    """A round's aggregated delta and what aggregation saw of the clients."""

    delta: Delta
    update_norms: dict[str, float]
    """Each client's update norm before clipping (DP) or as sent."""


def aggregate_round(
    job: JobSettings, contributions: Sequence[Contribution], rng: np.random.Generator
) -> RoundUpdate:
    """The round's global delta from the clients that reported."""
    if not contributions:
        raise ValueError("a round needs at least one client's update")
    deltas = {c.client: c.delta(job.alpha) for c in contributions}
    layers = sorted(deltas[contributions[0].client])
    for name, delta in deltas.items():
        if sorted(delta) != layers:
            raise ValueError(
                f"client {name!r} updates layers {sorted(delta)}, not {layers}; every client "
                "must use spec.adapter.targetModules"
            )
    norms = {name: update_norm(delta) for name, delta in deltas.items()}
    if job.privacy is not None:
        privacy = job.privacy
        clipped = [clip_update(delta, privacy.clip_norm)[0] for delta in deltas.values()]
        total = {layer: np.sum([c[layer] for c in clipped], axis=0) for layer in layers}
        noisy = noisy_mean(
            total, privacy.noise_multiplier, privacy.clip_norm, expected_clients(job), rng
        )
        return RoundUpdate({k: np.asarray(v, np.float64) for k, v in noisy.items()}, norms)
    if job.method is Method.FEDAVG:
        averaged = fedavg([_factor_update(c) for c in contributions])
        rank = next(iter(averaged.values())).rank
        scale = lora_scale(job.alpha, rank)
        return RoundUpdate({layer: scale * f.product() for layer, f in averaged.items()}, norms)
    if all(c.factors is not None for c in contributions):
        stacked = flora_stack([_factor_update(c) for c in contributions], job.alpha)
        return RoundUpdate({layer: f.product() for layer, f in stacked.items()}, norms)
    shares = normalise_weights([c.weight for c in contributions])
    names = [c.client for c in contributions]
    return RoundUpdate(
        {
            layer: sum(p * deltas[name][layer] for p, name in zip(shares, names, strict=True))
            for layer in layers
        },
        norms,
    )


def add_delta(total: Mapping[str, npt.ArrayLike], update: Mapping[str, npt.ArrayLike]) -> Delta:
    """``total + update`` per layer; a layer new to ``total`` starts from zero."""
    result = {layer: np.asarray(value, np.float64) for layer, value in total.items()}
    for layer, value in update.items():
        result[layer] = result.get(layer, 0.0) + np.asarray(value, np.float64)
    return result


def factorise(delta: Mapping[str, npt.ArrayLike]) -> tuple[dict[str, LoraFactors], int]:
    """Exact LoRA factors of a dense delta, for saving it as a PEFT adapter.

    Per layer the thin SVD ``U S Vt`` gives ``B = U S`` and ``A = Vt``, truncated to the
    numerical rank; every layer is zero-padded to the largest such rank ``r`` so one
    ``r`` and ``lora_alpha = r`` (scale 1) describe the whole adapter."""
    if not delta:
        raise ValueError("there is no delta to factorise: no round has completed")
    factored: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = {}
    for layer, value in delta.items():
        matrix = np.asarray(value, np.float64)
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        keep = max(1, int(np.sum(s > s[0] * 1e-7))) if s.size and s[0] > 0 else 1
        factored[layer] = (u[:, :keep] * s[:keep], vt[:keep])
    rank = max(b.shape[1] for b, _ in factored.values())
    return {
        layer: LoraFactors(
            a=np.vstack([a, np.zeros((rank - a.shape[0], a.shape[1]))]),
            b=np.hstack([b, np.zeros((b.shape[0], rank - b.shape[1]))]),
        )
        for layer, (b, a) in factored.items()
    }, rank


def _factor_update(contribution: Contribution) -> ClientUpdate:
    if contribution.factors is None:
        raise ValueError(f"client {contribution.client!r} must upload factors for this method")
    return ClientUpdate(contribution.client, dict(contribution.factors), contribution.weight)
