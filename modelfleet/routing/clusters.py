"""Query clusters: learn them from embedded queries, summarise them, route to them.

A query cluster is a group of queries one route serves. A user declares each
cluster by a few example utterances; the router embeds them, keeps the
normalised mean of each cluster's examples as its centroid, and sends a query
to the cluster whose centroid is nearest by cosine. To propose clusters and
their examples from a log of queries, ``learn_clusters`` runs spherical
k-means and ``representatives`` picks the queries nearest each centre.

Everything here is numpy on vectors; the embeddings come from
``modelfleet.routing.embedding`` and nothing here loads a model. Arithmetic is
in float64, so that results do not hinge on float32 rounding of near ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]
"""Embeddings as given: float32 from the encoder, or float64."""


@dataclass(frozen=True, eq=False)
class ClusterIndex:
    """The clusters a router chooses among: names, and one unit centroid per name.

    ``centroids[i]`` belongs to ``names[i]``. The array is made read-only, so an
    index shared between request handlers cannot be changed under them.
    (``eq=False``: comparing arrays element-wise has no single truth value.)
    """

    names: tuple[str, ...]
    centroids: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        """Reject an index whose names and centroids disagree or are not unit vectors."""
        if not self.names:
            raise ValueError("a ClusterIndex needs at least one cluster")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"cluster names repeat: {list(self.names)}")
        if self.centroids.ndim != 2 or self.centroids.shape[0] != len(self.names):
            raise ValueError(
                f"need one centroid row per name: {len(self.names)} names, "
                f"centroids of shape {self.centroids.shape}"
            )
        norms = np.linalg.norm(self.centroids, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-6):
            raise ValueError(f"centroids must have unit length, got norms {norms}")
        self.centroids.setflags(write=False)

    @property
    def dim(self) -> int:
        """Width of the vectors this index compares."""
        return int(self.centroids.shape[1])


def build_index(examples: dict[str, FloatArray]) -> ClusterIndex:
    """An index from each cluster's example embeddings, shape ``[m, d]`` per cluster.

    A centroid is the normalised mean of its examples, each first scaled to unit
    length, so that every example weighs the same whatever its norm. Cluster
    order is the order of ``examples``.
    """
    if not examples:
        raise ValueError("no clusters given")
    dims = {np.asarray(v).shape[-1] for v in examples.values()}
    if len(dims) != 1:
        raise ValueError(f"example embeddings differ in width: {sorted(dims)}")
    rows = []
    for name, vectors in examples.items():
        unit = _unit_rows(np.atleast_2d(np.asarray(vectors, dtype=np.float64)), f"cluster {name!r}")
        if unit.shape[0] == 0:
            raise ValueError(f"cluster {name!r} has no examples")
        mean = unit.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm < 1e-9:
            raise ValueError(f"cluster {name!r}: its examples cancel out, the mean is zero")
        rows.append(mean / norm)
    return ClusterIndex(names=tuple(examples), centroids=np.stack(rows))


def assign(index: ClusterIndex, vectors: FloatArray) -> list[str]:
    """The name of the nearest centroid by cosine for each row of ``vectors`` (``[n, d]``).

    On an exact tie the cluster listed first wins.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != index.dim:
        raise ValueError(f"need vectors of shape [n, {index.dim}], got {x.shape}")
    if x.shape[0] == 0:
        return []
    sims = _unit_rows(x, "vectors") @ index.centroids.T
    return [index.names[i] for i in np.argmax(sims, axis=1)]


def learn_clusters(
    vectors: FloatArray,
    k: int,
    seed: int,
    *,
    restarts: int = 10,
    max_iter: int = 100,
) -> npt.NDArray[np.int64]:
    """Cluster the rows of ``vectors`` into ``k`` groups by cosine; a label per row.

    Spherical k-means: rows are scaled to unit length, seeded by k-means++
    (a point is drawn with probability proportional to its distance
    ``1 - cos`` to the nearest centre chosen so far, which is the squared
    Euclidean distance between unit vectors up to a factor 2), then refined by
    Lloyd iterations whose centres are normalised means, then polished by
    Hartigan moves: single points are moved whenever that lowers the inertia,
    counting how the move shifts both centres, which Lloyd ignores and so stops
    one move short of better partitions. Both stop at local optima, so
    ``restarts`` seedings are run and the labelling with the lowest inertia
    (``spherical_inertia``) kept. The same ``seed`` gives the same
    labels. Labels are renumbered in order of first appearance, so that
    ``labels[0] == 0`` and equal partitions give equal arrays.
    """
    x = _unit_rows(np.asarray(vectors, dtype=np.float64), "vectors")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of vectors ({n}), got {k}")
    if restarts < 1 or max_iter < 1:
        raise ValueError("restarts and max_iter must be at least 1")
    distinct = np.unique(x, axis=0).shape[0]
    if distinct < k:
        raise ValueError(f"only {distinct} distinct directions among the vectors, fewer than k={k}")
    rng = np.random.default_rng(seed)
    best_labels: npt.NDArray[np.int64] | None = None
    best_inertia = np.inf
    for _ in range(restarts):
        labels = _hartigan(x, _lloyd(x, _kmeans_pp(x, k, rng), max_iter), k, max_iter)
        inertia = spherical_inertia(x, labels)
        if inertia < best_inertia - 1e-12:
            best_labels, best_inertia = labels, inertia
    assert best_labels is not None
    return _first_appearance(best_labels)


def spherical_inertia(vectors: FloatArray, labels: npt.NDArray[np.integer[Any]]) -> float:
    """Sum over rows of ``1 - cos(row, its cluster's normalised mean)``: what k-means minimises."""
    x = _unit_rows(np.asarray(vectors, dtype=np.float64), "vectors")
    lab = np.asarray(labels, dtype=np.int64)
    centroids = _centroids(x, lab, int(lab.max()) + 1)
    return float(np.sum(1.0 - np.einsum("ij,ij->i", x, centroids[lab])))


def representatives(
    vectors: FloatArray, labels: npt.NDArray[np.integer[Any]], per_cluster: int
) -> dict[int, list[int]]:
    """For each label, the indices of up to ``per_cluster`` rows nearest its centroid.

    These are the cluster's most typical queries, the ones to offer a user as
    the cluster's example utterances. Nearest first; an exact tie goes to the
    lower index. Keys are the labels present, ascending.
    """
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be at least 1, got {per_cluster}")
    x = _unit_rows(np.asarray(vectors, dtype=np.float64), "vectors")
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (x.shape[0],):
        raise ValueError(f"need one label per vector: {x.shape[0]} vectors, labels {lab.shape}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative")
    out: dict[int, list[int]] = {}
    for label in np.unique(lab):
        members = np.flatnonzero(lab == label)
        centre = x[members].mean(axis=0)
        sims = x[members] @ (centre / np.linalg.norm(centre))
        nearest = members[np.argsort(-sims, kind="stable")[:per_cluster]]
        out[int(label)] = [int(i) for i in nearest]
    return out


def _unit_rows(x: npt.NDArray[np.float64], what: str) -> npt.NDArray[np.float64]:
    """``x`` (``[n, d]``) with each row scaled to length 1; a zero row has no direction."""
    if x.ndim != 2:
        raise ValueError(f"{what}: need a 2-D array [n, d], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: contains NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0.0):
        raise ValueError(f"{what}: a zero vector has no cosine to anything")
    unit: npt.NDArray[np.float64] = x / norms
    return unit


def _centroids(
    x: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.float64]:
    """Normalised mean of each label's rows; a label with no rows (or a zero mean) gets zeros."""
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    centroids: npt.NDArray[np.float64] = np.divide(
        sums, norms, out=np.zeros_like(sums), where=norms > 0
    )
    return centroids


def _kmeans_pp(
    x: npt.NDArray[np.float64], k: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """k starting centres drawn from the rows of ``x`` by k-means++ on cosine distance."""
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    distance = 1.0 - x @ x[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(distance, 0.0, None)
        weights[chosen] = 0.0
        total = weights.sum()
        if total <= 0.0:
            # Every remaining point coincides with a centre: any unused one will do.
            pick = int(rng.choice(np.setdiff1d(np.arange(n), chosen)))
        else:
            pick = int(rng.choice(n, p=weights / total))
        chosen.append(pick)
        distance = np.minimum(distance, 1.0 - x @ x[pick])
    return x[chosen].copy()


def _lloyd(
    x: npt.NDArray[np.float64], centroids: npt.NDArray[np.float64], max_iter: int
) -> npt.NDArray[np.int64]:
    """Alternate nearest-centre assignment and re-centring until the labels stop changing."""
    k = centroids.shape[0]
    labels: npt.NDArray[np.int64] | None = None
    for _ in range(max_iter):
        sims = x @ centroids.T
        new = np.argmax(sims, axis=1).astype(np.int64)
        _refill_empty(new, sims, k)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centroids = _centroids(x, labels, k)
    assert labels is not None
    return labels


def _hartigan(
    x: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], k: int, max_passes: int
) -> npt.NDArray[np.int64]:
    """Move single points between clusters while that lowers the inertia; a new array.

    With unit rows, a cluster's summed cosine to its normalised mean is the
    length of its row sum ``S``, so the inertia is ``n - sum |S_c|`` and moving
    ``x`` from ``a`` to ``b`` gains ``|S_b + x| - |S_b| - (|S_a| - |S_a - x|)``,
    exact and cheap to evaluate for every ``b``. No cluster is emptied.
    """
    labels = labels.copy()
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=k)
    for _ in range(max_passes):
        moved = False
        for i in _move_candidates(x, labels, sums):
            a = int(labels[i])
            if counts[a] == 1:
                continue
            gain = _move_gains(x[i : i + 1], labels[i : i + 1], sums)[0]
            b = int(np.argmax(gain))
            if gain[b] > 1e-12:
                sums[a] -= x[i]
                sums[b] += x[i]
                counts[a] -= 1
                counts[b] += 1
                labels[i] = b
                moved = True
        if not moved:
            break
    return labels


def _move_gains(
    x: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], sums: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``[n, k]``: how much ``sum |S_c|`` grows if each row of ``x`` moves to each cluster."""
    lengths = np.linalg.norm(sums, axis=1)
    joined = np.sqrt(np.maximum(lengths**2 + 2.0 * (x @ sums.T) + 1.0, 0.0))
    own = sums[labels]
    left = lengths[labels] - np.linalg.norm(own - x, axis=1)
    gain: npt.NDArray[np.float64] = joined - lengths - left[:, None]
    gain[np.arange(x.shape[0]), labels] = 0.0
    return gain


def _move_candidates(
    x: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], sums: npt.NDArray[np.float64]
) -> list[int]:
    """Rows some single move would improve as the clusters stand, checked all at once.

    Each is re-checked against the sums as they are when its turn comes, since
    earlier moves change them; a row that only becomes movable then waits for
    the next pass.
    """
    return [int(i) for i in np.flatnonzero(_move_gains(x, labels, sums).max(axis=1) > 1e-12)]


def _refill_empty(labels: npt.NDArray[np.int64], sims: npt.NDArray[np.float64], k: int) -> None:
    """Give each empty cluster the point worst served by its own centre, in place.

    Only points of clusters with more than one member are moved, so no cluster
    is emptied to fill another; this keeps exactly ``k`` clusters.
    """
    for empty in np.setdiff1d(np.arange(k), labels):
        counts = np.bincount(labels, minlength=k)
        own = sims[np.arange(labels.size), labels]
        movable = counts[labels] > 1
        candidates = np.flatnonzero(movable)
        worst = candidates[np.argmin(own[candidates])]
        labels[worst] = empty


def _first_appearance(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Renumber labels 0, 1, 2, ... in the order each first occurs."""
    values, first = np.unique(labels, return_index=True)
    rank = np.empty(values.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(values.size)
    return rank[np.searchsorted(values, labels)]
