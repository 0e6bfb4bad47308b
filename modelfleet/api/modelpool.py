"""ModelPool: LLM replicas on Ray Serve behind one OpenAI-compatible endpoint."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from modelfleet.api.auth import Auth, require_auth
from modelfleet.api.common import (
    CPU_TYPE,
    ApiModel,
    BaseStatus,
    GpuType,
    Money,
    Name,
    StatusModel,
    Uri,
    list_map,
    require_unique,
)
from modelfleet.api.pods import Pod


class Engine(StrEnum):
    VLLM = "VLLM"
    TORCH = "Torch"


class AdapterRef(ApiModel):
    """A LoRA adapter served on top of its base model, chosen per request by name."""

    name: Name = Field(description="The model id clients pass as 'model' to use the adapter.")
    uri: Uri = Field(
        description="A PEFT directory (adapter_config.json, adapter_model.safetensors)."
    )


class ServedModel(ApiModel):
    """One model every replica of the pool serves."""

    name: Name = Field(description="The model id clients pass as 'model'.")
    uri: Uri
    credentials_secret: Name | None = Field(
        default=None,
        description="A Secret in the pool's namespace for s3:// and hf:// URIs; keys "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, "
        "AWS_ENDPOINT_URL, HF_TOKEN.",
    )
    adapters: list[AdapterRef] = Field(
        default_factory=list,
        max_length=16,
        description="LoRA adapters of this model, batched together on its replicas.",
        json_schema_extra=list_map("name"),
    )
    engine: Engine = Field(
        default=Engine.TORCH, description="VLLM on GPUs, Torch on CPU. Default: Torch."
    )
    max_model_len: int = Field(
        default=2048, ge=16, le=1_048_576, description="Prompt + output tokens. Default: 2048."
    )
    tensor_parallel: int = Field(default=1, ge=1, le=16, description="GPUs per replica.")


class GpuOffer(ApiModel):
    """A GPU type the pool may use, with what it costs and how many can be had."""

    gpu_type: GpuType
    price_per_hour: Money = Field(
        description='Cost of one GPU (of one replica with gpuType cpu) for an hour, e.g. "3.50".'
    )
    available: int = Field(default=8, ge=0, le=100000, description="At most this many. Default: 8.")


class Slo(ApiModel):
    """Latency objectives the autoscaler and the dispatcher keep."""

    ttft_p95_ms: float = Field(
        default=1000, gt=0, le=600_000, description="Time to first token, p95, ms."
    )
    tpot_p95_ms: float = Field(
        default=100, gt=0, le=60_000, description="Time per output token, p95, ms."
    )


class AutoscalingPolicy(StrEnum):
    NONE = "None"
    SLO_COST = "SloCost"


class Autoscaling(ApiModel):
    """How the replica count follows load, SLOs and cost."""

    policy: AutoscalingPolicy = Field(
        default=AutoscalingPolicy.NONE,
        description="SloCost picks replica counts and GPU types that meet the SLOs at least "
        "cost, within [minReplicas, maxReplicas]; None keeps spec.replicas. Default: None.",
    )
    min_replicas: int = Field(default=1, ge=0, le=10000, description="Default: 1.")
    max_replicas: int = Field(default=4, ge=1, le=10000, description="Default: 4.")
    budget_per_hour: Money | None = Field(
        default=None, description='Never spend more than this per hour, e.g. "20". Unset: no cap.'
    )
    scale_to_zero: bool = Field(default=False, description="Allow 0 replicas when idle.")
    scale_down_delay_seconds: int = Field(
        default=300, ge=0, le=86400, description="Quiet time before scaling down. Default: 300."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"spec.autoscaling.minReplicas={self.min_replicas} exceeds "
                f"maxReplicas={self.max_replicas}"
            )
        if self.min_replicas == 0 and not self.scale_to_zero:
            raise ValueError("spec.autoscaling.minReplicas=0 needs scaleToZero: true")
        if self.budget_per_hour is not None and self.budget_per_hour == 0:
            raise ValueError(
                'spec.autoscaling.budgetPerHour must be more than "0"; leave it out for no cap'
            )
        return self


class MigrationPolicy(StrEnum):
    LOAD_BALANCE = "LoadBalance"
    DEFRAGMENT = "Defragment"
    PRIORITY = "Priority"


class Migration(ApiModel):
    """Live migration of running requests between replicas (after Llumnix)."""

    enabled: bool = Field(default=True, description="Default: true.")
    policy: MigrationPolicy = Field(
        default=MigrationPolicy.LOAD_BALANCE,
        description="LoadBalance, Defragment or Priority. Default: LoadBalance.",
    )
    max_concurrent: int = Field(
        default=2, ge=1, le=64, description="Migrations in flight per replica. Default: 2."
    )


class ModelPoolSpec(ApiModel):
    """The desired serving pool."""

    models: list[ServedModel] = Field(
        min_length=1,
        max_length=16,
        description="Models served, 1 to 16.",
        json_schema_extra=list_map("name"),
    )
    replicas: int = Field(
        default=1, ge=0, le=10000, description="Desired replicas (the scale subresource)."
    )
    gpu_types: list[GpuOffer] = Field(
        default_factory=lambda: [GpuOffer(gpu_type=CPU_TYPE, price_per_hour=Decimal(0))],
        min_length=1,
        max_length=16,
        description="GPU types the pool may use, with price and availability. Default: cpu.",
        json_schema_extra=list_map("gpuType"),
    )
    slo: Slo = Field(default_factory=Slo)
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling,
        description="Not supported yet: only the default is accepted; set replicas instead.",
    )
    migration: Migration = Field(default_factory=Migration)
    auth: Auth = Field(description="API keys callers must present, or mode None.")
    pod: Pod = None

    _require_auth = model_validator(mode="before")(require_auth)

    @model_validator(mode="after")
    def _check_names(self) -> Self:
        served = [m.name for m in self.models] + [a.name for m in self.models for a in m.adapters]
        if len(set(served)) != len(served):
            raise ValueError(
                f"spec.models: names (of models and their adapters) must be unique; got {served}"
            )
        require_unique("spec.gpuTypes", "gpuType", [g.gpu_type for g in self.gpu_types])
        if sum(g.available for g in self.gpu_types) == 0:
            raise ValueError("spec.gpuTypes: at least one type needs available > 0")
        refuse_autoscaling(self.autoscaling)
        return self


def refuse_autoscaling(autoscaling: Autoscaling) -> None:
    """Refuse an ``autoscaling`` that asks for anything but the default: no autoscaler runs
    yet, so its policy and bounds would be accepted and silently ignored."""
    changed = [
        info.alias or name
        for name, info in Autoscaling.model_fields.items()
        if getattr(autoscaling, name) != info.get_default(call_default_factory=True)
    ]
    if changed:
        raise ValueError(
            f"spec.autoscaling ({', '.join(changed)}): autoscaling is not supported yet; "
            "leave spec.autoscaling out and set spec.replicas (kubectl scale works, and so "
            "does an HPA or KEDA on the scale subresource)"
        )


class ReplicaCount(StatusModel):
    """Ready replicas of one model on one GPU type."""

    gpu_type: str = Field(max_length=63, description="GPU product.")
    model: str = Field(default="", max_length=63, description="Served model name.")
    replicas: int = Field(ge=0, description="Ready replicas.")


class ModelPoolStatus(BaseStatus):
    """What the operator observed of the pool."""

    replicas: int = Field(default=0, ge=0, description="Ready replicas (the scale subresource).")
    replicas_by_gpu_type: list[ReplicaCount] = Field(
        default_factory=list, max_length=256, description="Ready replicas by model and GPU type."
    )
    endpoint: str = Field(default="", max_length=2048, description="OpenAI-compatible base URL.")
    slo_attainment: float | None = Field(
        default=None, ge=0, le=1, description="Share of recent requests within both SLOs."
    )
    cost_per_hour: Money = Field(
        default=Decimal(0), description="What the ready replicas cost per hour now."
    )
    migrations: int = Field(
        default=0, ge=0, description="Live request migrations the running pool has performed."
    )
    workload: str = Field(default="", max_length=253, description="Name of the child workload.")
    selector: str = Field(
        default="",
        max_length=1024,
        description="Label selector of the pool's pods (the scale subresource's "
        "labelSelectorPath), for HorizontalPodAutoscalers and KEDA.",
    )
