"""FederatedLora: a Flower strategy for LoRA clients of any rank, with DP and compression.

Flower's strategy interface holds the round logic: ``configure_train`` samples the clients
and sends them the global delta, ``aggregate_train`` decodes their uploads and aggregates
them by the job's method (:func:`modelfleet.federated.rounds.aggregate_round`),
``configure_evaluate``/``aggregate_evaluate`` score the new global model on every client's
held-out data. The ServerApp drives these itself rather than through ``Strategy.start``,
because a FedJob resumes from a checkpoint, ends when the privacy budget would be exceeded,
and fails a round that cannot reach ``minClients``, none of which ``start`` does.

The global arrays are the cumulative dense delta over the base model's adapted layers; a
client of any rank merges it into its base and trains a fresh LoRA of its own rank.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from modelfleet.federated.aggregation import LoraFactors
from modelfleet.federated.checkpoint import RoundReport
from modelfleet.federated.client_training import masked_round
from modelfleet.federated.compression import decode
from modelfleet.federated.job import JobSettings
from modelfleet.federated.privacy import sample_clients
from modelfleet.federated.rounds import Contribution, Delta, add_delta, aggregate_round
from modelfleet.federated.secure import aggregate as unmask

CONFIG = "config"
ARRAYS = "arrays"
METRICS = "metrics"
UPLOAD = "upload"
"""Content keys of the messages both sides exchange."""
CLIENT_KEY = "client"
ROUND_KEY = "server-round"
JOB_KEY = "job"
PUBLIC_KEY = "public-key"
PEERS_KEY = "peers"
NONCE_KEY = "nonce"
WORDS_KEY = "words"
"""Secure rounds: a client's X25519 public key, the participants' keys the server relays,
the attempt's nonce, and a masked upload."""
A_KEY = ".a"
B_KEY = ".b"
SHAPE_KEY = ".shape"
MAX_SAMPLE_DRAWS = 100
SECURE_ATTEMPTS = 3
"""Masked attempts of one round: each drops who failed the one before."""
"""Poisson draws tried for a round before giving up on reaching ``minClients``."""


class RoundFailed(RuntimeError):
    """A round that cannot close; ``reason`` is the condition reason status shows."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RoundOutcome:
    """One round's aggregate and who was in it."""

    clients: tuple[str, ...]
    dropped: tuple[str, ...]
    bytes_sent: int
    uncompressed_bytes: int
    train_loss: float


def delta_to_record(delta: Mapping[str, np.ndarray]) -> ArrayRecord:
    """A delta as Flower arrays (float32 on the wire)."""
    return ArrayRecord(
        {layer: torch.as_tensor(np.asarray(v, np.float32)) for layer, v in delta.items()}
    )


def record_to_delta(record: ArrayRecord) -> Delta:
    """Flower arrays back to a float64 delta."""
    return {layer: t.double().numpy() for layer, t in record.to_torch_state_dict().items()}


def decode_contribution(job: JobSettings, reply: Message) -> tuple[Contribution, int, int, float]:
    """One training reply as a contribution, its wire and float32 bytes, and its loss."""
    metrics = reply.content[METRICS]
    name = str(reply.content[CONFIG][CLIENT_KEY])
    weight = job.client(name).weight
    upload = reply.content[UPLOAD]
    if job.uploads_dense:
        dense = {}
        sent = 0
        for key, payload in upload.items():
            if key.endswith(SHAPE_KEY):
                continue
            shape = tuple(int(d) for d in upload[f"{key}{SHAPE_KEY}"])
            dense[key] = decode(bytes(payload), shape).astype(np.float64)
            sent += len(payload)
        contribution = Contribution(name, weight, dense=dense)
    else:
        arrays = record_to_delta(upload)
        layers = sorted({key[: -len(A_KEY)] for key in arrays if key.endswith(A_KEY)})
        factors = {
            layer: LoraFactors(a=arrays[f"{layer}{A_KEY}"], b=arrays[f"{layer}{B_KEY}"])
            for layer in layers
        }
        sent = sum(4 * value.size for value in arrays.values())
        contribution = Contribution(name, weight, factors=factors)
    return contribution, sent, int(metrics["float32-bytes"]), float(metrics["loss"])


class FederatedLora(Strategy):  # type: ignore[misc]  # flwr is typed only in its own venv
    """FLoRA or FedAvg over LoRA clients, with the job's privacy and compression."""

    def __init__(self, job: JobSettings) -> None:
        self.job = job
        self.rng = np.random.default_rng(job.seed)
        self.asked: list[int] = []
        self.outcome: RoundOutcome | None = None
        self._arrays = ArrayRecord()

    def summary(self) -> None:
        """Flower logs this at start; the job's settings are in ``job.json``."""

    def sample(self, nodes: Sequence[int]) -> list[int]:
        """This round's nodes: all of them, or a Poisson sample of ``clientFraction``
        redrawn until it holds ``minClients`` (the accountant's sampling rate)."""
        if self.job.client_fraction >= 1:
            return list(nodes)
        for _ in range(MAX_SAMPLE_DRAWS):
            chosen = sample_clients(list(nodes), self.job.client_fraction, self.rng)
            if len(chosen) >= self.job.min_clients:
                return chosen
        raise RoundFailed(
            "ClientsMissing",
            f"a clientFraction of {self.job.client_fraction} of {len(nodes)} connected clients "
            f"never sampled minClients={self.job.min_clients}; raise clientFraction",
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The global delta and the job to each sampled node."""
        self._arrays = arrays
        self.asked = self.sample(sorted(grid.get_node_ids()))
        return self._messages(MessageType.TRAIN, server_round, arrays, config, self.asked)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies that arrived; fail the round below ``minClients``."""
        good = [reply for reply in replies if not reply.has_error()]
        decoded = [decode_contribution(self.job, reply) for reply in good]
        contributions = [item[0] for item in decoded]
        reported = {c.client for c in contributions}
        missing = tuple(sorted(c.name for c in self.job.clients if c.name not in reported))
        if len(contributions) < self.job.min_clients:
            raise RoundFailed(
                "ClientsMissing",
                f"round {server_round} got updates from {len(contributions)} client(s), fewer "
                f"than minClients={self.job.min_clients}; missing: {', '.join(missing)} (failed, "
                f"stalled past {self.job.round_timeout_seconds:.0f}s, or not connected)",
            )
        update = aggregate_round(self.job, contributions, self.rng)
        weights = np.array([c.weight for c in contributions])
        losses = np.array([item[3] for item in decoded])
        self.outcome = RoundOutcome(
            clients=tuple(sorted(reported)),
            dropped=missing if len(self.asked) >= len(self.job.clients) else (),
            bytes_sent=sum(item[1] for item in decoded),
            uncompressed_bytes=sum(item[2] for item in decoded),
            train_loss=float(np.sum(weights * losses) / np.sum(weights)),
        )
        cumulative = add_delta(record_to_delta(self._arrays), update.delta)
        metrics = MetricRecord({"loss": self.outcome.train_loss, "clients": len(contributions)})
        return delta_to_record(cumulative), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The new global delta to every connected node, to score on its held-out data."""
        nodes = sorted(grid.get_node_ids())
        return self._messages(MessageType.EVALUATE, server_round, arrays, config, nodes)

    def _messages(
        self,
        message_type: str,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: Sequence[int],
    ) -> list[Message]:
        """One message of ``message_type`` per node: the global delta, the round, the job."""
        content = ConfigRecord({**config, ROUND_KEY: server_round, JOB_KEY: self.job.to_json()})
        return [
            Message(
                content=RecordDict({ARRAYS: arrays, CONFIG: content}),
                dst_node_id=node,
                message_type=message_type,
            )
            for node in nodes
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted held-out loss and accuracy over the clients that replied."""
        metrics = [reply.content[METRICS] for reply in replies if not reply.has_error()]
        if not metrics:
            return None
        counts = np.array([float(m["num-examples"]) for m in metrics])
        return MetricRecord(
            {
                key: float(
                    np.sum(counts * np.array([float(m[key]) for m in metrics])) / counts.sum()
                )
                for key in ("loss", "accuracy")
            }
        )

    def train_masked(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """A secure round: the sampled clients send fresh X25519 public keys, the server
        relays them, each client trains B against the shared A and uploads it masked with
        the seeds it agreed with every other participant, and the server decodes only the
        sum. A participant missing after masking leaves masks that cannot cancel, so the
        round is masked again, with fresh keys, without it (up to ``SECURE_ATTEMPTS``)."""
        timeout = self.job.round_timeout_seconds
        needed = max(2, self.job.min_clients)
        nodes = self.sample(sorted(grid.get_node_ids()))
        sampled_all = len(nodes) >= len(self.job.clients)
        asked: set[str] = set()
        present: set[str] = set()
        for attempt in range(1, SECURE_ATTEMPTS + 1):
            query = self._messages(
                MessageType.QUERY, server_round, ArrayRecord(), ConfigRecord(), nodes
            )
            keys = {
                str(reply.content[CONFIG][CLIENT_KEY]): (
                    reply.metadata.src_node_id,
                    bytes(reply.content[UPLOAD][PUBLIC_KEY]),
                )
                for reply in grid.send_and_receive(query, timeout=timeout)
                if not reply.has_error()
            }
            asked |= set(keys)
            present = set(keys)
            if len(keys) < needed:
                break
            config = ConfigRecord(
                {
                    PEERS_KEY: json.dumps({name: key.hex() for name, (_, key) in keys.items()}),
                    NONCE_KEY: f"{server_round}/{attempt}",
                }
            )
            nodes = [node for node, _ in keys.values()]
            train = self._messages(MessageType.TRAIN, server_round, arrays, config, nodes)
            uploads = {
                str(reply.content[CONFIG][CLIENT_KEY]): reply
                for reply in grid.send_and_receive(train, timeout=timeout)
                if not reply.has_error()
            }
            if set(uploads) == set(keys):
                everyone = {c.name for c in self.job.clients}
                sampled = everyone if sampled_all else asked
                return self._unmask(arrays, uploads, tuple(sorted(sampled - set(keys))))
            present = set(uploads)
            nodes = [node for name, (node, _) in keys.items() if name in uploads]
        missing = sorted(c.name for c in self.job.clients if c.name not in present)
        raise RoundFailed(
            "ClientsMissing",
            f"round {server_round}: a masked sum needs {needed} participants that all upload; "
            f"missing: {', '.join(missing)} (failed, stalled past {timeout:.0f}s, or not "
            f"connected) after {attempt} attempt(s)",
        )

    def _unmask(
        self, arrays: ArrayRecord, uploads: Mapping[str, Message], dropped: tuple[str, ...]
    ) -> ArrayRecord:
        """The new cumulative delta from a complete set of masked uploads."""
        masked = masked_round(self.job, uploads)
        words = {
            name: np.frombuffer(bytes(reply.content[UPLOAD][WORDS_KEY]), np.uint32)
            for name, reply in uploads.items()
        }
        update = {layer: f.product() for layer, f in unmask(masked, words).items()}
        metrics = {name: reply.content[METRICS] for name, reply in uploads.items()}
        weights = np.array([masked.weights[name] for name in metrics])
        losses = np.array([float(m["loss"]) for m in metrics.values()])
        self.outcome = RoundOutcome(
            clients=tuple(sorted(uploads)),
            dropped=dropped,
            bytes_sent=sum(w.nbytes for w in words.values()),
            uncompressed_bytes=sum(int(m["float32-bytes"]) for m in metrics.values()),
            train_loss=float(np.sum(weights * losses) / np.sum(weights)),
        )
        return delta_to_record(add_delta(record_to_delta(arrays), update))

    def run_round(
        self, grid: Grid, server_round: int, cumulative: Delta, epsilon: float
    ) -> tuple[Delta, RoundReport]:
        """Train, aggregate and evaluate one round; the new cumulative delta and its report."""
        started = time.monotonic()
        timeout = self.job.round_timeout_seconds
        arrays = delta_to_record(cumulative)
        if self.job.secure:
            aggregated: ArrayRecord | None = self.train_masked(grid, server_round, arrays)
        else:
            replies = grid.send_and_receive(
                self.configure_train(server_round, arrays, ConfigRecord(), grid), timeout=timeout
            )
            aggregated, _ = self.aggregate_train(server_round, replies)
        assert aggregated is not None and self.outcome is not None
        evaluated = self.aggregate_evaluate(
            server_round,
            grid.send_and_receive(
                self.configure_evaluate(server_round, aggregated, ConfigRecord(), grid),
                timeout=timeout,
            ),
        )
        outcome = self.outcome
        report = RoundReport(
            round=server_round,
            clients=outcome.clients,
            dropped=outcome.dropped,
            bytes_sent=outcome.bytes_sent,
            uncompressed_bytes=outcome.uncompressed_bytes,
            epsilon=epsilon,
            train_loss=outcome.train_loss,
            eval_loss=float(evaluated["loss"]) if evaluated else float("nan"),
            eval_accuracy=float(evaluated["accuracy"]) if evaluated else float("nan"),
            seconds=time.monotonic() - started,
        )
        return record_to_delta(aggregated), report
