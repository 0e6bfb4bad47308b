"""How a platform team shapes the Ray pods of a kind on the KubeRay backend.

``spec.pod`` adds to what the operator plans, never replaces it: tolerations join the
GPU taint's, an affinity keeps the GPU node affinity, and resources override cpu and
memory only (GPUs stay planned by the operator). Nothing here reaches a security
context, so the pods keep the restricted Pod Security Standard. The local backend
cannot apply any of it and says so in a Warning event.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Self

from kubernetes.client import V1Affinity
from kubernetes.utils import parse_quantity
from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator

from modelfleet.api.common import ApiModel, Name

QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

Quantity = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=QUANTITY),
    Field(description="A Kubernetes quantity, e.g. 500m or 2 (cpu), 512Mi or 8Gi (memory)."),
]


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A core/v1 Toleration of a node taint."""

    key: Annotated[str, StringConstraints(max_length=316, pattern=LABEL_KEY)] | None = Field(
        default=None,
        description="The taint key, e.g. dedicated. Unset: every key (needs operator Exists).",
    )
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL,
        description="Equal: the taint's value must be value. Exists: any value. Default: Equal.",
    )
    value: Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)] | None = Field(
        default=None, description="The taint value to match with operator Equal."
    )
    effect: TaintEffect | None = Field(
        default=None,
        description="NoSchedule, PreferNoSchedule or NoExecute. Unset: every effect.",
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="With effect NoExecute: seconds the pod stays after the taint appears "
        "(at most a year). Unset: for good.",
    )

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        """The API server's own rules, checked up front: KubeRay would accept the child
        and only its pods would be refused."""
        if self.key is None and self.operator is not TolerationOperator.EXISTS:
            raise ValueError("a toleration without key needs operator Exists (it tolerates all)")
        if self.operator is TolerationOperator.EXISTS and self.value:
            raise ValueError("value must be unset with operator Exists; use operator Equal")
        if self.toleration_seconds is not None and self.effect is not TaintEffect.NO_EXECUTE:
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class ComputeQuantities(ApiModel):
    """Amounts of cpu and memory; GPUs are the operator's to plan."""

    cpu: Quantity | None = Field(default=None, description="CPU, e.g. 500m or 4.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 512Mi or 16Gi.")


class PodResources(ApiModel):
    """Requests and limits of the Ray containers (head and workers), over the operator's
    default requests of 1 cpu and 2Gi memory."""

    requests: ComputeQuantities = Field(
        default_factory=ComputeQuantities, description="What the scheduler reserves."
    )
    limits: ComputeQuantities = Field(
        default_factory=ComputeQuantities,
        description="The most a container may use. A limit set without its request drops "
        "the operator's default request, so Kubernetes requests the limit.",
    )

    @model_validator(mode="after")
    def _check_requests_fit_limits(self) -> Self:
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if request is not None and limit is not None and _amount(request) > _amount(limit):
                raise ValueError(
                    f"spec.pod.resources.requests.{name}={request} exceeds "
                    f"limits.{name}={limit}; lower the request or raise the limit"
                )
        return self


def _amount(quantity: str) -> Decimal:
    """A quantity's value, to compare requests with limits."""
    return Decimal(parse_quantity(quantity))  # type: ignore[no-untyped-call]


class PodOverrides(ApiModel):
    """Additions to the Ray pods the KubeRay backend renders (head, workers, and a job's
    submitter): scheduling, identity, image pulls, cpu and memory, credentials."""

    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Taints the pods tolerate, besides the GPU taint the operator tolerates.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 Affinity. Its required node affinity is combined with the "
        "operator's GPU node affinity (each nodeSelectorTerm also gets the GPU's match "
        "expressions); podAffinity, podAntiAffinity and preferred terms pass through.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    service_account_name: Name | None = Field(
        default=None, description="The ServiceAccount the pods run as. Unset: default."
    )
    image_pull_secrets: list[Name] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets of registry credentials to pull the runtime image with.",
    )
    resources: PodResources = Field(
        default_factory=PodResources, description="cpu and memory of the Ray containers."
    )
    credentials_secret: Name | None = Field(
        default=None,
        description="A Secret whose keys become environment variables of the Ray "
        "containers, e.g. HF_TOKEN or AWS_ACCESS_KEY_ID for model hubs and object stores.",
    )

    @field_validator("affinity")
    @classmethod
    def _check_affinity(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Check the affinity against core/v1 (the CRD keeps it as an open object) and
        return it in its wire form, so a typo is refused here rather than by KubeRay."""
        if value is None:
            return None
        try:
            affinity = V1Affinity.model_validate(value)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
                for item in error.errors(include_url=False)
            )
            raise ValueError(f"not a core/v1 Affinity: {problems}") from None
        wire: dict[str, Any] = affinity.model_dump(mode="json", by_alias=True, exclude_none=True)
        return wire


Pod = Annotated[
    PodOverrides | None,
    Field(
        description="Overrides of the Ray pods on the kuberay backend: tolerations, affinity, "
        "serviceAccountName, imagePullSecrets, cpu/memory resources, credentialsSecret. "
        "The local backend ignores them (with a Warning event)."
    ),
]
"""The ``pod`` field every kind's spec carries."""
