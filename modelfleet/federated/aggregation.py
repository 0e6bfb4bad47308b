"""Combine clients' LoRA adapters into one global update: FedAvg for equal ranks, FLoRA
stacking for mixed ranks (FedJob ``spec.aggregation.method``).

Convention (PEFT's): a client's adapter for one target layer is a pair ``A`` (r x d_in)
and ``B`` (d_out x r), and the layer's weight changes by ``scale * B @ A`` with
``scale = alpha / r`` (``lora_alpha / r``, PEFT's default, not rsLoRA's ``alpha / sqrt(r)``).
A client's whole adapter maps layer names to such pairs. Each reporting client carries a
data weight (``spec.clients[].weight``, e.g. its sample count); its share ``p_k`` is that
weight over the reporting clients' total.

FedAvg (the FedIT baseline) averages the A's and the B's separately, weighted by ``p_k``,
which is what Flower's FedAvg does to the arrays. The product of averages is not the
average of products, so FedAvg is inexact even at one rank, and meaningless across ranks:
:func:`fedavg` refuses mixed ranks.

FLoRA (Wang et al. 2024, "FLoRA: Federated Fine-Tuning Large Language Models with
Heterogeneous Low-Rank Adaptations") stacks instead: the A's on top of one another and
the ``p_k * scale_k``-weighted B's side by side, so that
``B_stacked @ A_stacked == sum_k p_k * scale_k * B_k @ A_k`` exactly, whatever the ranks.

How every client receives the update, whatever its rank (FLoRA's scheme): the global
update is a per-layer pair whose product is the weight delta itself (scale folded in,
rank ``sum_k r_k``). Each client adds that product into its frozen base weights
(:func:`apply_global_update`) and restarts its own LoRA at its own rank with A random and
B zero (:func:`reinitialise`), so every client starts the next round from the same
effective weights and no client has to hold a rank it cannot afford.

Arrays are float64 numpy; anything ``np.asarray`` converts (CPU torch tensors included)
is accepted at the edges. Nothing is mutated in place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LoraFactors:
    """One layer's low-rank pair; its weight delta is ``scale * b @ a``.

    ``a`` is rank x d_in, ``b`` is d_out x rank, both stored as float64 copies so that a
    caller's later writes cannot change an aggregate.
    """

    a: Matrix
    b: Matrix

    def __post_init__(self) -> None:
        a = np.array(self.a, dtype=np.float64)
        b = np.array(self.b, dtype=np.float64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise ValueError(
                f"LoRA factors need A of shape (r, d_in) and B of shape (d_out, r) with the "
                f"same r >= 1; got A {a.shape} and B {b.shape}"
            )
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError("LoRA factors hold NaN or infinite entries; fix the training step")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    @property
    def rank(self) -> int:
        """The inner dimension r."""
        return int(self.a.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in): the shape of the weight this pair adapts."""
        return int(self.b.shape[0]), int(self.a.shape[1])

    def product(self) -> Matrix:
        """``b @ a``, the dense delta before any scale."""
        return self.b @ self.a


Adapter = Mapping[str, LoraFactors]
"""A client's adapter (or a global update): layer name -> factors."""


@dataclass(frozen=True)
class ClientUpdate:
    """What one client reports after local training: its adapter and its data weight."""

    client: str
    adapter: Adapter
    weight: float


def lora_scale(alpha: float, rank: int) -> float:
    """PEFT's LoRA scale ``alpha / r``."""
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha} must be a positive finite number (spec.adapter.alpha)")
    if rank < 1:
        raise ValueError(f"rank={rank} must be at least 1")
    return alpha / rank


def normalise_weights(weights: Sequence[float]) -> Vector:
    """Each reporting client's share ``p_k = w_k / sum(w)``; the shares sum to 1."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError("aggregation needs at least one reporting client's weight")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(
            f"client weights {w.tolist()} must be positive finite numbers "
            "(spec.clients[].weight, e.g. sample counts)"
        )
    return w / float(w.sum())


def fedavg(updates: Sequence[ClientUpdate]) -> dict[str, LoraFactors]:
    """The ``p_k``-weighted mean of the A's and, separately, of the B's, per layer.

    The result has the clients' common rank and their common scale. Refuses layers whose
    clients differ in rank: averaging zero-padded factors of different ranks mixes
    unrelated directions (use FLoRA).
    """
    shares = _shares(updates)
    result = {}
    for layer in _common_layers(updates):
        ranks = {u.client: u.adapter[layer].rank for u in updates}
        if len(set(ranks.values())) > 1:
            raise ValueError(
                f"FedAvg needs one rank per layer, but layer {layer!r} has ranks {ranks}; "
                "use spec.aggregation.method: FLoRA or give every client the same rank"
            )
        factors = [u.adapter[layer] for u in updates]
        result[layer] = LoraFactors(
            a=np.tensordot(shares, np.stack([f.a for f in factors]), axes=1),
            b=np.tensordot(shares, np.stack([f.b for f in factors]), axes=1),
        )
    return result


def flora_stack(updates: Sequence[ClientUpdate], alpha: float) -> dict[str, LoraFactors]:
    """FLoRA's global update: per layer, A's stacked vertically and ``p_k * scale_k * B_k``
    side by side, so the pair's product is exactly ``sum_k p_k * scale_k * B_k @ A_k``.

    The returned pairs have the scale folded in (their product is the delta itself) and
    rank ``sum_k r_k``; hand them to :func:`apply_global_update`.
    """
    shares = _shares(updates)
    result = {}
    for layer in _common_layers(updates):
        factors = [u.adapter[layer] for u in updates]
        result[layer] = LoraFactors(
            a=np.vstack([f.a for f in factors]),
            b=np.hstack(
                [p * lora_scale(alpha, f.rank) * f.b for p, f in zip(shares, factors, strict=True)]
            ),
        )
    return result


def apply_global_update(
    base_weights: Mapping[str, npt.ArrayLike], update: Adapter
) -> dict[str, Matrix]:
    """New base weights: ``base + b @ a`` for every layer of a scale-folded update.

    Layers the update does not touch are passed through. The update's layers must all be
    in the base with the shape they adapt, else the client is on another base model.
    """
    result = {name: np.asarray(w, dtype=np.float64) for name, w in base_weights.items()}
    missing = sorted(set(update) - set(result))
    if missing:
        raise ValueError(
            f"the update adapts layers {missing} that the base weights lack; "
            "every client must load spec.baseModel"
        )
    for layer, factors in update.items():
        if result[layer].shape != factors.shape:
            raise ValueError(
                f"layer {layer!r}: base weight has shape {result[layer].shape} but the update "
                f"is {factors.shape}; every client must load spec.baseModel"
            )
        result[layer] = result[layer] + factors.product()
    return result


def effective_weights(
    base_weights: Mapping[str, npt.ArrayLike], adapter: Adapter, alpha: float
) -> dict[str, Matrix]:
    """The weights a client's model computes with: base plus its scaled adapter (what
    PEFT's ``merge_and_unload`` produces)."""
    folded = {
        layer: LoraFactors(a=f.a, b=lora_scale(alpha, f.rank) * f.b) for layer, f in adapter.items()
    }
    return apply_global_update(base_weights, folded)


def reinitialise(rank: int, shape: tuple[int, int], seed: int) -> LoraFactors:
    """A fresh LoRA pair for a (d_out, d_in) layer: A as PEFT draws it, B zero.

    PEFT initialises A with Kaiming-uniform (a = sqrt(5)), i.e. uniform on
    ``[-1/sqrt(d_in), 1/sqrt(d_in)]``; B zero makes the fresh adapter's delta zero, so
    restarting leaves the effective weights unchanged. The same seed gives the same pair.
    """
    d_out, d_in = shape
    if rank < 1 or d_out < 1 or d_in < 1:
        raise ValueError(f"rank={rank} and layer shape {shape} must all be at least 1")
    bound = 1.0 / math.sqrt(d_in)
    a = np.random.default_rng(seed).uniform(-bound, bound, size=(rank, d_in))
    return LoraFactors(a=a, b=np.zeros((d_out, rank)))


def _shares(updates: Sequence[ClientUpdate]) -> Vector:
    """The reporting clients' ``p_k``, refusing a client that reports twice."""
    names = [u.client for u in updates]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"clients {twice} report more than once in one round")
    return normalise_weights([u.weight for u in updates])


def _common_layers(updates: Sequence[ClientUpdate]) -> list[str]:
    """The layers every client adapts, checked to be the same set with the same shapes."""
    first = updates[0]
    layers = sorted(first.adapter)
    for u in updates[1:]:
        if sorted(u.adapter) != layers:
            raise ValueError(
                f"client {u.client!r} adapts layers {sorted(u.adapter)} but client "
                f"{first.client!r} adapts {layers}; every client must use "
                "spec.adapter.targetModules"
            )
        for layer in layers:
            if u.adapter[layer].shape != first.adapter[layer].shape:
                raise ValueError(
                    f"layer {layer!r} is {u.adapter[layer].shape} at client {u.client!r} but "
                    f"{first.adapter[layer].shape} at {first.client!r}; every client must "
                    "load spec.baseModel"
                )
    return layers
