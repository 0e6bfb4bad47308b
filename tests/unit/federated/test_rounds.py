"""A federated round's aggregation, the global delta's factorisation, the run's checkpoints
and the job settings file, checked against closed forms and brute force in numpy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.federated.aggregation import LoraFactors, Matrix
from modelfleet.federated.checkpoint import (
    CHECKPOINTS,
    DELTA_FILE,
    KEEP_CHECKPOINTS,
    LATEST,
    STATE_FILE,
    RoundReport,
    RunResult,
    RunState,
    load_latest,
    read_latest_state,
    read_result,
    save_round,
    write_result,
)
from modelfleet.federated.job import (
    ClientSettings,
    CompressionSettings,
    JobSettings,
    Method,
    PrivacySettings,
)
from modelfleet.federated.rounds import Contribution, Delta, add_delta, aggregate_round, factorise

ALPHA = 16.0
SHAPES = {"q_proj": (24, 20), "v_proj": (12, 20)}
RANKS = (4, 8, 16)
WEIGHTS = (100.0, 300.0, 600.0)


def job_settings(
    ranks: Sequence[int] = RANKS,
    method: Method = Method.FLORA,
    privacy: PrivacySettings | None = None,
    compression: CompressionSettings | None = None,
    client_fraction: float = 1.0,
) -> JobSettings:
    """A job with one client per rank, named c0, c1, ..."""
    return JobSettings(
        base_model="qwen-tiny",
        alpha=ALPHA,
        dropout=0.05,
        target_modules=tuple(SHAPES),
        clients=tuple(
            ClientSettings(name=f"c{k}", rank=rank, weight=WEIGHTS[k % len(WEIGHTS)])
            for k, rank in enumerate(ranks)
        ),
        rounds=3,
        local_steps=5,
        method=method,
        min_clients=1,
        client_fraction=client_fraction,
        privacy=privacy,
        compression=compression,
    )


def factor_uploads(job: JobSettings, seed: int = 0) -> list[Contribution]:
    """Every client's trained factors at its own rank."""
    rng = np.random.default_rng(seed)
    return [
        Contribution(
            client=c.name,
            weight=c.weight,
            factors={
                layer: LoraFactors(
                    a=rng.normal(size=(c.rank, d_in)), b=rng.normal(size=(d_out, c.rank))
                )
                for layer, (d_out, d_in) in SHAPES.items()
            },
        )
        for c in job.clients
    ]


def dense_uploads(
    job: JobSettings, shapes: dict[str, tuple[int, int]] = SHAPES, scale: float = 1.0, seed: int = 0
) -> list[Contribution]:
    """Every client's dense update, as a compressed upload decodes to."""
    rng = np.random.default_rng(seed)
    return [
        Contribution(
            client=c.name,
            weight=c.weight,
            dense={layer: scale * rng.normal(size=shape) for layer, shape in shapes.items()},
        )
        for c in job.clients
    ]


def layer_factors(contributions: Sequence[Contribution], layer: str) -> list[LoraFactors]:
    """Each client's uploaded factors of ``layer``."""
    factors = [c.factors[layer] for c in contributions if c.factors is not None]
    assert len(factors) == len(contributions)
    return factors


def dense_update(contribution: Contribution) -> Delta:
    """A client's uploaded dense update."""
    assert contribution.dense is not None
    return {layer: np.asarray(value) for layer, value in contribution.dense.items()}


def joint_norm(update: Delta) -> float:
    """The L2 norm of all layers flattened into one vector."""
    return float(np.linalg.norm(np.concatenate([value.ravel() for value in update.values()])))


def shares(contributions: Sequence[Contribution]) -> list[float]:
    total = sum(c.weight for c in contributions)
    return [c.weight / total for c in contributions]


def relative_error(x: Matrix, reference: Matrix) -> float:
    return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


def aggregate(job: JobSettings, contributions: Sequence[Contribution], seed: int = 0) -> Delta:
    return aggregate_round(job, contributions, np.random.default_rng(seed)).delta


# --- aggregate_round without privacy ---------------------------------------------------


def test_flora_of_mixed_rank_factors_is_the_weighted_sum_of_scaled_products() -> None:
    job = job_settings()
    uploads = factor_uploads(job)

    delta = aggregate(job, uploads)

    assert delta.keys() == SHAPES.keys()
    for layer in SHAPES:
        reference = sum(
            p * (ALPHA / f.rank) * f.b @ f.a
            for p, f in zip(shares(uploads), layer_factors(uploads, layer), strict=True)
        )
        assert relative_error(delta[layer], np.asarray(reference)) < 1e-10


def test_fedavg_at_one_rank_multiplies_the_averaged_factors() -> None:
    job = job_settings(ranks=(8, 8, 8), method=Method.FEDAVG)
    uploads = factor_uploads(job)

    delta = aggregate(job, uploads)

    p = shares(uploads)
    for layer in SHAPES:
        factors = layer_factors(uploads, layer)
        b_mean = sum(pk * f.b for pk, f in zip(p, factors, strict=True))
        a_mean = sum(pk * f.a for pk, f in zip(p, factors, strict=True))
        reference = (ALPHA / 8) * np.asarray(b_mean) @ np.asarray(a_mean)
        assert relative_error(delta[layer], reference) < 1e-10


def test_fedavg_refuses_mixed_ranks_and_points_at_flora() -> None:
    job = job_settings(method=Method.FEDAVG)

    with pytest.raises(ValueError, match="FLoRA"):
        aggregate(job, factor_uploads(job))


def test_fedavg_refuses_dense_uploads() -> None:
    job = job_settings(ranks=(8, 8), method=Method.FEDAVG)

    with pytest.raises(ValueError, match="must upload factors"):
        aggregate(job, dense_uploads(job))


def test_flora_of_dense_uploads_is_their_weighted_sum() -> None:
    job = job_settings(compression=CompressionSettings(sparsity=0.9, quantization="int8"))
    uploads = dense_uploads(job)

    delta = aggregate(job, uploads)

    for layer in SHAPES:
        reference = sum(
            p * dense_update(u)[layer] for p, u in zip(shares(uploads), uploads, strict=True)
        )
        np.testing.assert_allclose(delta[layer], reference, rtol=1e-12, atol=1e-12)


def test_norms_are_those_of_each_clients_scaled_update() -> None:
    job = job_settings()
    uploads = factor_uploads(job)

    norms = aggregate_round(job, uploads, np.random.default_rng(0)).update_norms

    assert norms.keys() == {c.name for c in job.clients}
    for u in uploads:
        assert u.factors is not None
        scaled = {layer: (ALPHA / f.rank) * f.b @ f.a for layer, f in u.factors.items()}
        assert norms[u.client] == pytest.approx(joint_norm(scaled), rel=1e-12)


def test_a_round_needs_an_update_and_each_update_needs_content() -> None:
    job = job_settings()

    with pytest.raises(ValueError, match="at least one"):
        aggregate(job, [])
    with pytest.raises(ValueError, match="neither factors nor a dense update"):
        aggregate(job, [Contribution(client="c0", weight=1.0)])


# --- aggregate_round with privacy -------------------------------------------------------

CLIP_NORM = 0.5


def private_job(noise_multiplier: float, clients: int = 4, fraction: float = 0.5) -> JobSettings:
    """A DP job of ``clients`` clients expecting ``fraction`` of them per round."""
    privacy = PrivacySettings(
        clip_norm=CLIP_NORM,
        noise_multiplier=noise_multiplier,
        target_epsilon=8.0,
        target_delta=1e-5,
    )
    return job_settings(ranks=(8,) * clients, privacy=privacy, client_fraction=fraction)


def clipped_sum(uploads: Sequence[Contribution]) -> Delta:
    """Each client's dense update scaled to joint norm at most CLIP_NORM, summed."""
    total: Delta = {}
    for u in uploads:
        update = dense_update(u)
        factor = min(1.0, CLIP_NORM / joint_norm(update))
        for layer, value in update.items():
            total[layer] = total.get(layer, 0.0) + factor * value
    return total


def test_private_round_is_the_clipped_sum_over_the_expected_clients() -> None:
    job = private_job(noise_multiplier=1e-12)
    first, *others = dense_uploads(job, scale=0.05)[:3]
    within = {layer: 0.01 * value for layer, value in dense_update(first).items()}
    uploads = [dataclasses.replace(first, dense=within), *others]

    result = aggregate_round(job, uploads, np.random.default_rng(0))

    expected_clients = 0.5 * 4
    reference = clipped_sum(uploads)
    for layer in SHAPES:
        np.testing.assert_allclose(
            result.delta[layer], reference[layer] / expected_clients, rtol=1e-8, atol=1e-10
        )
    for u in uploads:
        assert result.update_norms[u.client] == pytest.approx(
            joint_norm(dense_update(u)), rel=1e-12
        )
    assert any(norm > CLIP_NORM for norm in result.update_norms.values())
    assert any(norm < CLIP_NORM for norm in result.update_norms.values())


def test_a_client_beyond_the_clip_norm_is_scaled_to_exactly_the_clip_norm() -> None:
    job = private_job(noise_multiplier=1e-12, clients=1, fraction=1.0)
    uploads = dense_uploads(job, scale=10.0)

    result = aggregate_round(job, uploads, np.random.default_rng(0))

    assert result.update_norms["c0"] > 100 * CLIP_NORM
    assert joint_norm(result.delta) == pytest.approx(CLIP_NORM, rel=1e-9)


def test_private_noise_has_std_noise_multiplier_times_clip_norm_over_expected_clients() -> None:
    shapes = {"big": (256, 256)}
    job = private_job(noise_multiplier=1.3)
    uploads = dense_uploads(job, shapes=shapes, scale=0.01)[:3]

    noisy = aggregate(job, uploads, seed=11)

    noise = noisy["big"] - clipped_sum(uploads)["big"] / 2.0
    # The sample std of 65536 normals is off by about 0.3 %; 10 % allowed.
    assert float(np.std(noise)) == pytest.approx(1.3 * CLIP_NORM / 2.0, rel=0.1)


# --- add_delta --------------------------------------------------------------------------


def test_add_delta_sums_shared_layers_and_keeps_the_rest() -> None:
    total = {"a": np.ones((2, 3)), "only_total": np.full((2, 2), 5.0)}
    update = {"a": np.arange(6.0).reshape(2, 3), "only_update": np.full(4, -1.0)}

    result = add_delta(total, update)

    assert result.keys() == {"a", "only_total", "only_update"}
    np.testing.assert_array_equal(result["a"], 1.0 + np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(result["only_total"], np.full((2, 2), 5.0))
    np.testing.assert_array_equal(result["only_update"], np.full(4, -1.0))
    np.testing.assert_array_equal(total["a"], np.ones((2, 3)))


# --- factorise --------------------------------------------------------------------------


def matrix_of_rank(rng: np.random.Generator, shape: tuple[int, int], rank: int) -> Matrix:
    """A (d_out, d_in) matrix of exactly ``rank`` with singular values in [1, 10], so its
    numerical rank is unambiguous."""
    d_out, d_in = shape
    u, _ = np.linalg.qr(rng.normal(size=(d_out, rank)))
    v, _ = np.linalg.qr(rng.normal(size=(d_in, rank)))
    return np.asarray((u * rng.uniform(1.0, 10.0, size=rank)) @ v.T)


def check_factorisation(delta: Delta, expected_rank: int) -> None:
    factors, rank = factorise(delta)

    assert rank == expected_rank
    assert factors.keys() == delta.keys()
    for layer, matrix in delta.items():
        f = factors[layer]
        assert f.rank == rank and f.shape == matrix.shape
        assert relative_error(f.product(), matrix) < 1e-6


def test_factorise_reconstructs_low_and_full_rank_layers_at_one_rank() -> None:
    rng = np.random.default_rng(3)
    delta = {
        "low": matrix_of_rank(rng, (40, 30), 3),
        "full": rng.normal(size=(12, 10)),
        "wide": matrix_of_rank(rng, (8, 50), 5),
    }

    check_factorisation(delta, expected_rank=10)


@st.composite
def layers_of_known_rank(draw: st.DrawFn) -> tuple[Delta, int]:
    """One to three layers of random shapes, each of a drawn rank, and the largest rank."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    delta: Delta = {}
    ranks = []
    for k in range(draw(st.integers(1, 3))):
        shape = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
        rank = draw(st.integers(1, min(shape)))
        delta[f"layer{k}"] = matrix_of_rank(rng, shape, rank)
        ranks.append(rank)
    return delta, max(ranks)


@given(layers_of_known_rank())
@settings(max_examples=60, deadline=None)
def test_factorise_rank_is_the_largest_numerical_rank(case: tuple[Delta, int]) -> None:
    delta, rank = case

    check_factorisation(delta, expected_rank=rank)
    assert rank == max(np.linalg.matrix_rank(m) for m in delta.values())


# --- checkpoint -------------------------------------------------------------------------


def run_state(round_: int) -> RunState:
    """The state after ``round_`` rounds, one report per round."""
    return RunState(
        job_digest="0123456789abcdef",
        round=round_,
        accountant={"noiseMultiplier": 1.1, "sampleRate": 0.5, "rounds": round_},
        reports=tuple(
            RoundReport(
                round=r,
                clients=("c0", "c1"),
                dropped=("c2",),
                bytes_sent=1000 * r,
                uncompressed_bytes=4000 * r,
                epsilon=0.5 * r,
                train_loss=2.0 / r,
                eval_loss=2.5 / r,
                eval_accuracy=0.1 * r,
                seconds=3.25,
            )
            for r in range(1, round_ + 1)
        ),
    )


def round_delta(round_: int) -> Delta:
    rng = np.random.default_rng(round_)
    return {layer: rng.normal(size=shape) for layer, shape in SHAPES.items()}


def save_rounds(work_dir: Path, last: int) -> None:
    for r in range(1, last + 1):
        save_round(work_dir, run_state(r), round_delta(r))


def assert_loaded_round(work_dir: Path, round_: int) -> None:
    loaded = load_latest(work_dir)
    assert loaded is not None
    state, delta = loaded
    assert state == run_state(round_)
    assert read_latest_state(work_dir) == state
    assert delta.keys() == SHAPES.keys()
    for layer, value in round_delta(round_).items():
        assert delta[layer].dtype == np.float64
        np.testing.assert_array_equal(delta[layer], value.astype(np.float32))


def test_nothing_is_loaded_before_the_first_round(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None
    assert read_latest_state(tmp_path) is None


def test_a_saved_round_loads_back_with_its_reports_and_delta(tmp_path: Path) -> None:
    save_round(tmp_path, run_state(1), round_delta(1))

    assert_loaded_round(tmp_path, 1)
    assert read_latest_state(tmp_path) == run_state(1)
    assert run_state(3).bytes_sent == 6000


def test_latest_names_the_newest_and_old_rounds_are_removed(tmp_path: Path) -> None:
    save_rounds(tmp_path, 5)

    root = tmp_path / CHECKPOINTS
    assert (root / LATEST).read_text().strip() == "round-0005"
    kept = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert kept == [f"round-{r:04d}" for r in range(6 - KEEP_CHECKPOINTS, 6)]
    assert_loaded_round(tmp_path, 5)


def test_a_round_interrupted_while_staging_leaves_the_previous_one(tmp_path: Path) -> None:
    save_rounds(tmp_path, 4)
    staging = tmp_path / CHECKPOINTS / ".round-0005.tmp"
    staging.mkdir()
    (staging / STATE_FILE).write_text('{"round": 5, "job_dig')
    (staging / DELTA_FILE).write_bytes(b"\x00" * 7)

    assert_loaded_round(tmp_path, 4)

    save_round(tmp_path, run_state(5), round_delta(5))
    assert not staging.exists()
    assert_loaded_round(tmp_path, 5)


def test_a_restarted_run_keeps_its_first_round_beside_an_older_runs_rounds(
    tmp_path: Path,
) -> None:
    save_rounds(tmp_path, 5)
    restarted = dataclasses.replace(run_state(1), job_digest="fedcba9876543210")

    save_round(tmp_path, restarted, round_delta(1))

    assert read_latest_state(tmp_path) == restarted


def test_the_result_is_written_once(tmp_path: Path) -> None:
    assert read_result(tmp_path) is None
    first = RunResult(phase="Succeeded", reason="RoundsCompleted", message="3 rounds")

    write_result(tmp_path, first)
    write_result(tmp_path, RunResult(phase="Failed", reason="Late", message="too late"))

    assert read_result(tmp_path) == first


# --- JobSettings ------------------------------------------------------------------------

PRIVACY = PrivacySettings(
    clip_norm=1.0, noise_multiplier=0.8, target_epsilon=4.0, target_delta=1e-6
)
COMPRESSION = CompressionSettings(sparsity=0.95, quantization="int4")


@pytest.mark.parametrize(
    ("privacy", "compression"),
    [(None, None), (PRIVACY, None), (None, COMPRESSION), (PRIVACY, COMPRESSION)],
)
def test_settings_survive_json(
    privacy: PrivacySettings | None, compression: CompressionSettings | None
) -> None:
    job = job_settings(privacy=privacy, compression=compression)

    parsed = JobSettings.from_json(job.to_json())

    assert parsed == job
    assert parsed.method is job.method
    assert parsed.uploads_dense == (compression is not None)
    assert parsed.digest() == job.digest()


@pytest.mark.parametrize(
    "change",
    [
        {"alpha": 32.0},
        {"rounds": 4},
        {"method": Method.FEDAVG},
        {"privacy": PRIVACY},
        {"compression": COMPRESSION},
        {"clients": (ClientSettings(name="c0", rank=4, weight=2.0),)},
        {"seed": 1},
    ],
)
def test_digest_changes_with_any_field(change: dict[str, object]) -> None:
    job = job_settings()

    changed = dataclasses.replace(job, **change)  # type: ignore[arg-type]

    assert changed.digest() != job.digest()
    assert len(job.digest()) == 16


def test_an_unknown_client_name_lists_the_known_ones() -> None:
    job = job_settings()

    assert job.client("c1") == job.clients[1]
    with pytest.raises(ValueError, match=r"'nope'.*\['c0', 'c1', 'c2'\]"):
        job.client("nope")
