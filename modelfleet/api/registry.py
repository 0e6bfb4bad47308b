"""The four kinds, with what the CRD generator and the controllers need of each."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelfleet.api.common import GROUP, VERSION, ApiModel, BaseStatus
from modelfleet.api.fedjob import FedJobSpec, FedJobStatus
from modelfleet.api.fusionjob import FusionJobSpec, FusionJobStatus
from modelfleet.api.modelpool import ModelPoolSpec, ModelPoolStatus
from modelfleet.api.routingpolicy import RoutingPolicySpec, RoutingPolicyStatus

CATEGORY = "modelfleet"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


READY_COLUMNS = (
    PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status', description="Ready"),
    PrinterColumn(
        "Reason", '.status.conditions[?(@.type=="Ready")].reason', description="Why (not) ready"
    ),
)
AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[ApiModel]
    status_model: type[BaseStatus]
    columns: tuple[PrinterColumn, ...]
    scale: bool = False
    description: str = ""
    group: str = field(default=GROUP)
    version: str = field(default=VERSION)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        kind="FedJob",
        plural="fedjobs",
        short_names=("fj",),
        spec_model=FedJobSpec,
        status_model=FedJobStatus,
        columns=(
            *READY_COLUMNS,
            PrinterColumn("Round", ".status.round", "integer", "Rounds completed"),
            PrinterColumn("Rounds", ".spec.rounds", "integer", "Rounds planned"),
            PrinterColumn("Method", ".spec.aggregation.method", priority=1),
            AGE_COLUMN,
        ),
        description="Federated LoRA fine-tuning across sites with heterogeneous clients.",
    ),
    KindInfo(
        kind="FusionJob",
        plural="fusionjobs",
        short_names=("fuj",),
        spec_model=FusionJobSpec,
        status_model=FusionJobStatus,
        columns=(
            *READY_COLUMNS,
            PrinterColumn("Method", ".spec.method"),
            PrinterColumn("Progress", ".status.progress", "number", "Share of work done"),
            AGE_COLUMN,
        ),
        description="Fuses several heterogeneous source LLMs into one target model.",
    ),
    KindInfo(
        kind="ModelPool",
        plural="modelpools",
        short_names=("mp",),
        spec_model=ModelPoolSpec,
        status_model=ModelPoolStatus,
        columns=(
            *READY_COLUMNS,
            PrinterColumn("Replicas", ".status.replicas", "integer", "Ready replicas"),
            PrinterColumn("Desired", ".spec.replicas", "integer", "Desired replicas"),
            PrinterColumn("Cost/h", ".status.costPerHour", "string", "Cost per hour now"),
            PrinterColumn("Endpoint", ".status.endpoint", priority=1),
            PrinterColumn("Migrations", ".status.migrations", "integer", priority=1),
            AGE_COLUMN,
        ),
        scale=True,
        description="LLM replicas on Ray Serve behind one OpenAI-compatible endpoint.",
    ),
    KindInfo(
        kind="RoutingPolicy",
        plural="routingpolicies",
        short_names=("rp",),
        spec_model=RoutingPolicySpec,
        status_model=RoutingPolicyStatus,
        columns=(
            *READY_COLUMNS,
            PrinterColumn("Strategy", ".spec.strategy"),
            PrinterColumn("Targets", ".status.readyTargets", "integer", "Targets ready"),
            AGE_COLUMN,
        ),
        description="Routes each request to the model that meets quality at least cost.",
    ),
)


def kind_by_name(kind: str) -> KindInfo:
    """Look a kind up by its Kind, plural or short name."""
    for info in KINDS:
        if kind in (info.kind, info.plural, info.singular, *info.short_names):
            return info
    raise KeyError(f"unknown kind {kind!r}; known: {[k.kind for k in KINDS]}")
