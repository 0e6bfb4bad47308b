"""The ClientApp: one site trains its own LoRA on its own data and uploads only the update.

A SuperNode's node config names the client and its dataset directory; the dataset's path
is never sent anywhere, and the job the server sends carries no client's dataset. With
compression the client keeps its error-feedback residual in the node's Flower context, so it
survives between rounds of the run. With secure aggregation it first sends a fresh public
key (a query message), trains B against the shared frozen A, and uploads B masked so the
server learns only the participants' sum.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from modelfleet.federated.aggregation import LoraFactors
from modelfleet.federated.client_training import (
    evaluate_delta,
    float32_bytes,
    mask_update,
    shared_projection,
    train_round,
)
from modelfleet.federated.compression import ErrorFeedback
from modelfleet.federated.datasets import read_split
from modelfleet.federated.flower_app.strategy import (
    A_KEY,
    ARRAYS,
    B_KEY,
    CLIENT_KEY,
    CONFIG,
    JOB_KEY,
    METRICS,
    NONCE_KEY,
    PEERS_KEY,
    PUBLIC_KEY,
    ROUND_KEY,
    SHAPE_KEY,
    UPLOAD,
    WORDS_KEY,
    delta_to_record,
    record_to_delta,
)
from modelfleet.federated.job import ClientSettings, JobSettings
from modelfleet.federated.rounds import Contribution
from modelfleet.federated.secure import new_exchange_key
from modelfleet.zoo.skills import Split

EXCHANGE_KEY = "exchange-key"
PRIVATE_KEY = "private"
"""The node-state record holding this round's X25519 private key."""
CLIENT_THREADS = 1
"""Torch threads per client: the SuperNodes of a local federation share one machine."""
RESIDUALS = "residuals"
"""The node-state record holding the error-feedback residual."""

app = ClientApp()


def _settings(msg: Message, context: Context) -> tuple[JobSettings, ClientSettings, Path]:
    """The job, this client's settings and its own dataset directory."""
    torch.set_num_threads(CLIENT_THREADS)
    job = JobSettings.from_json(str(msg.content[CONFIG][JOB_KEY]))
    name = str(context.node_config[CLIENT_KEY])
    return job, job.client(name), Path(str(context.node_config["dataset"]))


def _reply(
    msg: Message,
    client: str,
    metrics: dict[str, float | int],
    upload: ArrayRecord | ConfigRecord | None,
) -> Message:
    content = RecordDict(
        {METRICS: MetricRecord(metrics), CONFIG: ConfigRecord({CLIENT_KEY: client})}
    )
    if upload is not None:
        content[UPLOAD] = upload
    return Message(content=content, reply_to=msg)


def _compress(job: JobSettings, contribution: Contribution, context: Context) -> ConfigRecord:
    """The dense update top-k + quantised, carrying the residual of earlier rounds."""
    assert job.compression is not None
    feedback = ErrorFeedback(job.compression)
    if RESIDUALS in context.state:
        feedback.restore(record_to_delta(context.state[RESIDUALS]))
    upload: dict[str, bytes | list[int]] = {}
    for layer, value in contribution.delta(job.alpha).items():
        upload[layer] = feedback.compress(layer, value)
        upload[f"{layer}{SHAPE_KEY}"] = list(value.shape)
    context.state[RESIDUALS] = delta_to_record(feedback.residuals())
    return ConfigRecord(upload)


@app.query()
def exchange_keys(msg: Message, context: Context) -> Message:
    """A secure round's first step: a fresh X25519 key pair, the private half kept in the
    node's state for the training message that follows, the public half sent."""
    _, client, _ = _settings(msg, context)
    private, public = new_exchange_key()
    context.state[EXCHANGE_KEY] = ConfigRecord({PRIVATE_KEY: private})
    return _reply(msg, client.name, {}, ConfigRecord({PUBLIC_KEY: public}))


def _mask(
    job: JobSettings,
    client: ClientSettings,
    factors: Mapping[str, LoraFactors],
    msg: Message,
    context: Context,
) -> ConfigRecord:
    """This client's B's, masked with the seeds it agrees with the participants whose
    public keys the server relayed."""
    config = msg.content[CONFIG]
    keys = {name: bytes.fromhex(key) for name, key in json.loads(str(config[PEERS_KEY])).items()}
    private = bytes(context.state[EXCHANGE_KEY][PRIVATE_KEY])
    words = mask_update(job, client.name, factors, keys, private, str(config[NONCE_KEY]))
    return ConfigRecord({WORDS_KEY: words.tobytes()})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Merge the global delta, train this client's LoRA, upload its update."""
    job, client, dataset = _settings(msg, context)
    round_number = int(msg.content[CONFIG][ROUND_KEY])
    delta = record_to_delta(msg.content[ARRAYS])
    shared = shared_projection(job) if job.secure else None
    factors, loss = train_round(
        job, client, delta, read_split(dataset, Split.TRAIN), round_number, shared
    )
    contribution = Contribution(client.name, client.weight, factors=factors)
    upload: ArrayRecord | ConfigRecord
    if job.secure:
        upload = _mask(job, client, factors, msg, context)
    elif job.uploads_dense:
        upload = _compress(job, contribution, context)
    else:
        arrays = {}
        for layer, pair in factors.items():
            arrays[f"{layer}{A_KEY}"] = pair.a
            arrays[f"{layer}{B_KEY}"] = pair.b
        upload = delta_to_record(arrays)
    metrics = {"loss": loss, "float32-bytes": float32_bytes(factors)}
    return _reply(msg, client.name, metrics, upload)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global model on this client's held-out split."""
    job, client, dataset = _settings(msg, context)
    examples = read_split(dataset, Split.HELDOUT)[: job.eval_examples]
    loss, accuracy = evaluate_delta(job.base_model, record_to_delta(msg.content[ARRAYS]), examples)
    metrics = {"loss": loss, "accuracy": accuracy, "num-examples": len(examples)}
    return _reply(msg, client.name, metrics, None)
