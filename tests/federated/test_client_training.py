"""How a client of any rank receives FLoRA's update: the whole dense delta, added into its
frozen base weights, whatever its own LoRA rank; then it trains a fresh LoRA of its own rank
on top. Checked on a real zoo model."""

from __future__ import annotations

import numpy as np

from modelfleet.federated.aggregation import LoraFactors
from modelfleet.federated.client_training import load_with_delta, train_round
from modelfleet.federated.job import ClientSettings, JobSettings, Method
from modelfleet.federated.partition import draw_examples
from modelfleet.federated.rounds import Contribution, aggregate_round
from modelfleet.zoo.cache import load_model
from modelfleet.zoo.skills import Split

BASE_MODEL = "qwen-tiny"
LAYER = "model.layers.0.self_attn.q_proj"


def test_a_client_of_rank_4_gets_the_whole_rank_20_update_and_trains_its_own_rank() -> None:
    base, _ = load_model(BASE_MODEL)
    weight = base.get_submodule(LAYER).weight.detach().double().numpy()
    out_features, in_features = weight.shape
    rng = np.random.default_rng(0)
    job = JobSettings(
        base_model=BASE_MODEL,
        alpha=16.0,
        dropout=0.0,
        target_modules=("q_proj",),
        clients=(ClientSettings("small", 4, 1.0), ClientSettings("large", 16, 3.0)),
        rounds=1,
        local_steps=2,
        method=Method.FLORA,
        min_clients=2,
        client_fraction=1.0,
        batch_size=4,
    )
    contributions = [
        Contribution(
            client.name,
            client.weight,
            factors={
                LAYER: LoraFactors(
                    a=rng.normal(size=(client.rank, in_features)),
                    b=rng.normal(size=(out_features, client.rank)) * 1e-2,
                )
            },
        )
        for client in job.clients
    ]
    delta = aggregate_round(job, contributions, rng).delta
    assert np.linalg.matrix_rank(delta[LAYER]) == 20

    merged, _ = load_with_delta(BASE_MODEL, delta)
    received = merged.get_submodule(LAYER).weight.detach().double().numpy()
    np.testing.assert_allclose(received, weight + delta[LAYER], atol=1e-6)

    examples = draw_examples({"sorting": 1.0}, Split.TRAIN, 0, 8)
    factors, loss = train_round(job, job.clients[0], delta, examples, 1)
    assert np.isfinite(loss)
    assert factors[LAYER].a.shape == (4, in_features)
    assert factors[LAYER].b.shape == (out_features, 4)
