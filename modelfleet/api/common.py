"""Building blocks shared by every kind: naming rules, conditions, base models.

Constraints are expressed as pydantic field constraints on purpose: the CRD
generator turns them into OpenAPI bounds, so the API server (which is 1.20 and
has no CEL) enforces the same limits the webhook and the controllers do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    field_serializer,
)
from pydantic.alias_generators import to_camel

GROUP = "modelfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
URI = r"^[a-z][a-z0-9+.-]*://[^\s]+$"

Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL),
    Field(description="A DNS label: lower-case letters, digits and '-', at most 63 characters."),
]
Uri = Annotated[
    str,
    StringConstraints(min_length=3, max_length=2048, pattern=URI),
    Field(
        description=(
            "A URI with a scheme: file:///dir, pvc://claim/dir, s3://bucket/prefix, "
            "hf://org/model, zoo://name (a model of modelfleet's zoo), or builtin://tiny-llama "
            "(random weights, for tests). See docs/artifacts.md."
        )
    ),
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=253)]
LabelMap = Annotated[dict[str, ShortText], Field(max_length=32)]

MONEY = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,9})?$"
"""An amount of money: a decimal string with at most 12 integer and 9 fractional digits."""


def parse_money(value: object) -> Decimal:
    """Money arrives as a decimal string ("3.50"), never a float: a float cannot hold
    most prices exactly, and sums of them drift. Code may pass a ``Decimal``."""
    text = format(value, "f") if isinstance(value, Decimal) else value
    if isinstance(text, str) and re.fullmatch(MONEY, text):
        return Decimal(text)
    raise ValueError(
        "give money as a quoted decimal string of at most 12 integer and 9 fractional "
        'digits, e.g. "3.50"'
    )


Money = Annotated[
    Decimal,
    BeforeValidator(parse_money),
    PlainSerializer(lambda value: format(value, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": MONEY, "maxLength": 22}),
]
"""Money in any currency, the same one throughout a cluster: a decimal string on the wire
(e.g. "3.50"), a ``Decimal`` in code. See docs/serving.md, "Money"."""


def list_map(*keys: str) -> dict[str, Any]:
    """Schema markers of a list of objects keyed by ``keys``: ``kubectl apply`` and
    server-side apply merge such lists entry by entry, and the API server rejects two
    entries with the same key."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def require_unique(field: str, key: str, keys: Sequence[str]) -> None:
    """Reject a list whose entries repeat a key, naming the list, the key and the repeats
    (the API server rejects them too, but only where the list is marked a map)."""
    repeated = sorted({value for value in keys if keys.count(value) > 1})
    if repeated:
        raise ValueError(f"{field}: each {key} may appear once; repeated: {repeated}")


class ApiModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields rejected.

    Rejecting unknown fields does not catch typos in manifests: the API server prunes
    fields its schema does not know while decoding the request, before admission, so the
    webhook never sees them. What it does catch is a wrong field name in a spec built
    in code (planners, tests, benchmarks) or in a workload's config, where nothing
    prunes. For manifests, ``kubectl apply --validate=strict`` makes the API server
    (>= 1.25) reject unknown fields; see README.md, "Typos in manifests".
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, object]:
        """Serialise as the API server stores it: camelCase, JSON types, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _drop_empty_strings(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [_drop_empty_strings(v) for v in value]
    return value


class StatusModel(ApiModel):
    """Base of status models: tolerant of fields written by newer operators.

    Empty strings are left out on the wire: the 1.20 API server reads an empty
    string in a typed string field as null and rejects the whole status. A
    missing string parses back to its empty default, so nothing is lost.
    """

    model_config = ConfigDict(extra="ignore")

    def to_wire(self) -> dict[str, object]:
        wire = _drop_empty_strings(super().to_wire())
        assert isinstance(wire, dict)
        return wire


class ConditionType(StrEnum):
    """The condition types every kind reports, after Kubernetes API conventions."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUCCEEDED = "Succeeded"
    """Set, True, only on a job that completed; it stays so."""
    FAILED = "Failed"
    """Set, True, only on a job that ended without completing; it stays so."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """One observation of the resource's state (metav1.Condition)."""

    type: ConditionType = Field(description="Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A CamelCase word a program can switch on, e.g. InvalidSpec.",
    )
    message: str = Field(default="", max_length=32768, description="What a person should know.")
    last_transition_time: datetime = Field(description="When status last changed (RFC 3339).")
    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation this condition was computed for."
    )

    @field_serializer("last_transition_time")
    def _format_time(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")


class BaseStatus(StatusModel):
    """Fields every kind's status carries."""

    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation the status was computed for."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Ready, Progressing and Degraded.",
        json_schema_extra=list_map("type"),
    )


class Artifact(StatusModel):
    """Something a job produced, e.g. a merged model or an adapter."""

    name: str = Field(max_length=253, description="What the artifact is, e.g. adapter.")
    uri: str = Field(max_length=2048, description="Where it was written.")


CPU_TYPE = "cpu"
"""The GPU type that means: no GPU."""
GpuType = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63),
    Field(description="GPU product, e.g. H100, A100-80GB, L4; 'cpu' runs without a GPU."),
]


class GpuRequest(ApiModel):
    """A number of GPUs of one type: how every kind asks for GPUs."""

    gpu_type: GpuType
    count: int = Field(
        default=1,
        ge=0,
        le=4096,
        description="How many GPUs; with gpuType cpu, how many CPU workers. Default: 1.",
    )

    @property
    def gpus(self) -> int:
        """The GPUs this asks for: ``count``, but none with gpuType cpu, whose count the
        API server may have defaulted to 1."""
        return 0 if self.gpu_type == CPU_TYPE else self.count
