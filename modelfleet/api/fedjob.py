"""FedJob: federated LoRA fine-tuning across sites with heterogeneous clients."""

from __future__ import annotations

from enum import StrEnum
from math import floor
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from modelfleet.api.common import (
    CPU_TYPE,
    ApiModel,
    Artifact,
    BaseStatus,
    GpuRequest,
    LabelMap,
    Name,
    Uri,
    list_map,
)
from modelfleet.api.pods import Pod


class ModelFamily(StrEnum):
    LLAMA = "Llama"
    MISTRAL = "Mistral"
    QWEN = "Qwen"
    GPT2 = "GPT2"
    TINY = "Tiny"


class BaseModelRef(ApiModel):
    """The frozen model every client adapts."""

    uri: Uri
    family: ModelFamily | None = Field(
        default=None,
        description="Architecture family: Llama, Mistral, Qwen, GPT2 or Tiny. When set, a "
        "model of another family is refused before the job starts. Default: unset.",
    )


ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[\w.]+$")]


class Adapter(ApiModel):
    """The LoRA adapter trained on every client."""

    rank: int = Field(default=8, ge=1, le=256, description="Default LoRA rank. Default: 8.")
    alpha: float = Field(default=16.0, gt=0, le=4096, description="LoRA scaling. Default: 16.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout. Default: 0.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        max_length=32,
        description="Module names that get adapters. Default: [q_proj, v_proj].",
    )


class FedClient(ApiModel):
    """One participant: its data stays at its site; only adapter updates leave it."""

    name: Name
    dataset_uri: Uri
    rank: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="This client's LoRA rank; defaults to spec.adapter.rank. "
        "Ranks may differ per client with aggregation.method FLoRA.",
    )
    weight: float = Field(
        default=1.0, gt=0, le=1e9, description="Aggregation weight, e.g. sample count. Default: 1."
    )
    resources: GpuRequest = Field(
        default_factory=lambda: GpuRequest(gpu_type=CPU_TYPE, count=0),
        description="GPUs this client trains on, all on one node. Default: cpu, 0.",
    )
    site: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Site or cluster the client runs at."
    )
    node_selector: LabelMap = Field(
        default_factory=dict, description="Node labels the client's workers must match."
    )


class AggregationMethod(StrEnum):
    FLORA = "FLoRA"
    FEDAVG = "FedAvg"


class Aggregation(ApiModel):
    """How the server combines client updates into the global adapter each round."""

    method: AggregationMethod = Field(
        default=AggregationMethod.FLORA,
        description="FLoRA stacks adapters (exact, mixes ranks); FedAvg averages A and B "
        "separately (the FedIT baseline; needs equal ranks). Default: FLoRA.",
    )
    min_clients: int = Field(
        default=1, ge=1, le=10000, description="Updates needed to close a round. Default: 1."
    )
    client_fraction: float = Field(
        default=1.0, gt=0, le=1, description="Share of clients sampled per round. Default: 1."
    )
    round_timeout_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="A sampled client that has not replied this long after a round's start "
        "is dropped from the round. Default: 300.",
    )


class DifferentialPrivacy(ApiModel):
    """Client-side (ε, δ)-differential privacy on updates (DP-SGD style clipping + noise)."""

    enabled: bool = Field(default=False, description="Clip and noise client updates.")
    clip_norm: float = Field(default=1.0, gt=0, le=1e6, description="Per-update L2 clip.")
    noise_multiplier: float = Field(
        default=1.0, ge=0, le=1e3, description="Gaussian noise std / clip norm. Default: 1."
    )
    target_epsilon: float = Field(
        default=8.0, gt=0, le=1e4, description="Stop before the budget epsilon is exceeded."
    )
    target_delta: float = Field(default=1e-5, gt=0, lt=1, description="The delta of (ε, δ)-DP.")


class Privacy(ApiModel):
    """What protects client data beyond keeping it at the client."""

    differential_privacy: DifferentialPrivacy = Field(default_factory=DifferentialPrivacy)
    secure_aggregation: bool = Field(
        default=False,
        description="Mask updates so the server sees only their weighted sum: clients share "
        "one frozen random A of the largest rank and train B only. Needs method FLoRA, "
        "minClients of at least 2, and no differentialPrivacy or compression. Default: false.",
    )


class Quantization(StrEnum):
    NONE = "None"
    INT8 = "Int8"
    TERNARY = "Ternary"


class Compression(ApiModel):
    """How updates are shrunk before they travel (after ComPEFT)."""

    sparsity: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of update entries dropped. Default: 0."
    )
    quantization: Quantization = Field(
        default=Quantization.NONE, description="None, Int8 or Ternary. Default: None."
    )

    @property
    def enabled(self) -> bool:
        """Whether updates are compressed at all (the defaults send them whole)."""
        return self.sparsity > 0 or self.quantization is not Quantization.NONE


class Output(ApiModel):
    """Where the job writes what it produces."""

    uri: Uri


class FedJobSpec(ApiModel):
    """The desired federated fine-tuning run."""

    base_model: BaseModelRef
    adapter: Adapter = Field(default_factory=Adapter)
    clients: list[FedClient] = Field(
        min_length=1,
        max_length=1000,
        description="The participants, 1 to 1000.",
        json_schema_extra=list_map("name"),
    )
    rounds: int = Field(default=10, ge=1, le=10000, description="Federated rounds. Default: 10.")
    local_steps: int = Field(
        default=50, ge=1, le=100000, description="Optimiser steps per client per round."
    )
    aggregation: Aggregation = Field(default_factory=Aggregation)
    privacy: Privacy = Field(default_factory=Privacy)
    compression: Compression = Field(default_factory=Compression)
    output: Output = Field(description="Where the aggregated adapter is written.")
    pod: Pod = None

    @model_validator(mode="after")
    def _check_clients(self) -> Self:
        names = [client.name for client in self.clients]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"spec.clients: names must be unique; repeated: {duplicates}")
        if self.privacy.secure_aggregation:
            self._check_secure_aggregation()
        if self.aggregation.method is AggregationMethod.FEDAVG:
            if self.compression.enabled or self.privacy.differential_privacy.enabled:
                raise ValueError(
                    "spec.aggregation.method: FedAvg averages the factors A and B, while "
                    "spec.compression and spec.privacy.differentialPrivacy act on each "
                    "client's dense update; use method: FLoRA with them"
                )
            odd = [c.name for c in self.clients if self.client_rank(c) != self.adapter.rank]
            if odd:
                raise ValueError(
                    f"spec.aggregation.method: FedAvg averages LoRA A and B separately and "
                    f"cannot mix ranks, but clients {odd} differ from spec.adapter.rank="
                    f"{self.adapter.rank}; use method: FLoRA or give every client the same rank"
                )
        per_round = max(1, floor(self.aggregation.client_fraction * len(self.clients)))
        if self.aggregation.min_clients > per_round:
            raise ValueError(
                f"spec.aggregation.minClients={self.aggregation.min_clients} exceeds the "
                f"{per_round} client(s) sampled per round (clientFraction "
                f"{self.aggregation.client_fraction} of {len(self.clients)} clients); lower "
                f"minClients or raise clientFraction"
            )
        return self

    def _check_secure_aggregation(self) -> None:
        """Masked sums need the shared-A FLoRA variant and at least two updates; clipping
        and top-k act on each client's own update, which the server no longer sees."""
        conflicts = [
            (self.aggregation.method is AggregationMethod.FEDAVG, "aggregation.method: FedAvg"),
            (self.privacy.differential_privacy.enabled, "privacy.differentialPrivacy.enabled"),
            (self.compression.enabled, "compression"),
        ]
        named = [field for conflicting, field in conflicts if conflicting]
        if named:
            raise ValueError(
                f"spec.privacy.secureAggregation: not supported with spec.{', spec.'.join(named)}"
                "; secure aggregation runs with method FLoRA, without differential privacy "
                "or compression (turn those off, or set secureAggregation false)"
            )
        if self.aggregation.min_clients < 2:
            raise ValueError(
                "spec.privacy.secureAggregation: a masked sum of one update is that client's "
                "update; set spec.aggregation.minClients to at least 2"
            )

    def client_rank(self, client: FedClient) -> int:
        """The LoRA rank a client trains with (its own, else the job default)."""
        return client.rank if client.rank is not None else self.adapter.rank


class FedJobStatus(BaseStatus):
    """What the operator observed of the run."""

    round: int = Field(default=0, ge=0, description="Rounds completed.")
    clients_reporting: int = Field(default=0, ge=0, description="Updates in the last round.")
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=32, description="Latest metrics, e.g. evalLoss."
    )
    epsilon_spent: float = Field(default=0.0, ge=0, description="Privacy budget used so far.")
    bytes_sent: int = Field(default=0, ge=0, description="Update bytes sent by all clients.")
    artifacts: list[Artifact] = Field(
        default_factory=list, max_length=64, description="What the job has produced."
    )
    workload: str = Field(default="", max_length=253, description="Name of the child workload.")
