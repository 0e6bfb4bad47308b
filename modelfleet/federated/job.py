"""What a federated run needs to know of its FedJob, as plain JSON both virtualenvs read.

The operator (main venv, pydantic) turns a FedJob's spec into a :class:`JobSettings` and
writes it as ``job.json`` beside the run; the ServerApp and ClientApps (Flower's venv) read
it back. Keeping it a small frozen dataclass means Flower's processes never import the API
models or the operator, and the file is the whole contract between the two sides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"


class Method(StrEnum):
    """``spec.aggregation.method``."""

    FLORA = "FLoRA"
    FEDAVG = "FedAvg"


@dataclass(frozen=True)
class ClientSettings:
    """One site's part in the job. Its data's location is not here: only the site's own
    SuperNode is told it (see :mod:`modelfleet.federated.local_federation`)."""

    name: str
    rank: int
    weight: float


@dataclass(frozen=True)
class PrivacySettings:
    """User-level DP: clip each client's update, noise the sum (``spec.privacy``)."""

    clip_norm: float
    noise_multiplier: float
    target_epsilon: float
    target_delta: float


@dataclass(frozen=True)
class CompressionSettings:
    """Top-k sparsity and value width of each upload (``spec.compression``)."""

    sparsity: float
    quantization: str


@dataclass(frozen=True)
class JobSettings:
    """Everything the server and the clients of one FedJob run from."""

    base_model: str
    """A zoo model name."""
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    clients: tuple[ClientSettings, ...]
    rounds: int
    local_steps: int
    method: Method
    min_clients: int
    client_fraction: float
    privacy: PrivacySettings | None = None
    compression: CompressionSettings | None = None
    batch_size: int = 16
    learning_rate: float = 0.003
    round_timeout_seconds: float = 300.0
    """A client that has not replied by then is dropped from the round."""
    secure: bool = False
    """Clients share a frozen A and upload masked B's, so the server sees only their sum."""
    eval_examples: int = 40
    seed: int = 0

    def client(self, name: str) -> ClientSettings:
        """The settings of client ``name``; an unknown name is a node misconfiguration."""
        for client in self.clients:
            if client.name == name:
                return client
        raise ValueError(
            f"node config names client {name!r}, which is none of {[c.name for c in self.clients]}"
        )

    @property
    def uploads_dense(self) -> bool:
        """Whether clients upload their dense update (compressed) rather than A and B:
        top-k and error feedback need coordinates that mean the same every round."""
        return self.compression is not None

    def to_json(self) -> str:
        """The settings as JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def digest(self) -> str:
        """A short hash: a checkpoint of other settings is not resumed."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> JobSettings:
        """Parse what :meth:`to_json` wrote."""
        fields: dict[str, Any] = json.loads(text)
        privacy = fields.pop("privacy")
        compression = fields.pop("compression")
        return cls(
            **{
                **fields,
                "target_modules": tuple(fields["target_modules"]),
                "clients": tuple(ClientSettings(**c) for c in fields["clients"]),
                "method": Method(fields["method"]),
            },
            privacy=PrivacySettings(**privacy) if privacy else None,
            compression=CompressionSettings(**compression) if compression else None,
        )


def read_job(work_dir: Path) -> JobSettings:
    """The settings a run's launcher left in ``work_dir``."""
    return JobSettings.from_json((work_dir / JOB_FILE).read_text())
