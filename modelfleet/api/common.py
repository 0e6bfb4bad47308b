"""Building blocks shared by every kind: naming rules, conditions, base models.

Constraints are expressed as pydantic field constraints on purpose: the CRD
generator turns them into OpenAPI bounds, so the API server (which is 1.20 and
has no CEL) enforces the same limits the webhook and the controllers do.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_serializer
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


class ApiModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields rejected.

    Rejecting unknown fields matters because the 1.20 API server silently prunes
    them: without this a typo in a manifest would be dropped without a word.
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
        default_factory=list, max_length=8, description="Ready, Progressing and Degraded."
    )


class Artifact(StatusModel):
    """Something a job produced, e.g. a merged model or an adapter."""

    name: str = Field(max_length=253, description="What the artifact is, e.g. adapter.")
    uri: str = Field(max_length=2048, description="Where it was written.")


class GpuRequest(ApiModel):
    """A number of GPUs of one type."""

    gpu_type: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        description="GPU product, e.g. H100, A100-80GB, L4; 'cpu' runs without a GPU."
    )
    count: int = Field(default=1, ge=0, le=4096, description="How many GPUs. Default: 1.")
