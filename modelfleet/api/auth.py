"""Who may call a ModelPool's or RoutingPolicy's endpoint, and how much.

Every endpoint either checks OpenAI-style bearer keys kept in a Secret or says
explicitly that it serves anyone: there is no silent default, because an endpoint left
open by omission is the mistake that costs most.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import Field, StringConstraints, model_validator

from modelfleet.api.common import ApiModel, Name

SecretKeyName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$"),
    Field(description="A data entry of the keys Secret: the key's id in metrics and limits."),
]
AUTH_REQUIRED = (
    "spec.auth is required: name a Secret of API keys, e.g. "
    "auth: {mode: ApiKey, secretName: my-keys} (one key per data entry, created with "
    "kubectl create secret generic my-keys --from-literal=team-a=$(openssl rand -hex 24)), "
    "or serve anyone who can reach the endpoint with auth: {mode: None}"
)


class AuthMode(StrEnum):
    API_KEY = "ApiKey"
    NONE = "None"


class KeyLimits(ApiModel):
    """Limits and priority of one key, overriding the defaults of ``spec.auth``."""

    name: SecretKeyName
    requests_per_minute: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Requests per minute for this key."
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Prompt + completion tokens per minute."
    )
    priority: int | None = Field(
        default=None,
        ge=-100,
        le=100,
        description="Dispatch priority of this key's requests; a request may ask for less, "
        "never more. Unset: the request's own priority.",
    )


class Auth(ApiModel):
    """Bearer keys from a Secret, with per-key token-bucket limits, or no checks at all."""

    mode: AuthMode = Field(
        description="ApiKey: requests need 'Authorization: Bearer <key>' with a key of "
        "secretName. None: anyone who can reach the endpoint may call it."
    )
    secret_name: Name | None = Field(
        default=None,
        description="With mode ApiKey: a Secret in the same namespace, one key per data entry "
        "(the entry's name is the key's id). Rotating it takes effect without a restart.",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Default limit of every key; over it, 429 with Retry-After. Unset: none.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Default prompt + completion tokens per minute of every key. Unset: none.",
    )
    keys: list[KeyLimits] = Field(
        default_factory=list,
        max_length=256,
        description="Per-key limits and priority, by data entry name.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _check_mode(self) -> Self:
        if self.mode is AuthMode.API_KEY and self.secret_name is None:
            raise ValueError("spec.auth.secretName is required with mode ApiKey")
        if self.mode is AuthMode.NONE:
            extra = [
                field
                for field, value in (
                    ("secretName", self.secret_name),
                    ("requestsPerMinute", self.requests_per_minute),
                    ("tokensPerMinute", self.tokens_per_minute),
                    ("keys", self.keys or None),
                )
                if value is not None
            ]
            if extra:
                raise ValueError(
                    f"spec.auth.{extra[0]} needs mode ApiKey: limits and keys apply per key, "
                    "and mode None checks none"
                )
        names = [key.name for key in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"spec.auth.keys: names must be unique; got {names}")
        return self

    def limits_of(self, key_id: str) -> KeyLimits:
        """The effective limits of one key: its own entry over the defaults (limits are
        at least 1 when set, so ``or`` falls back only where the entry sets none)."""
        own = next((key for key in self.keys if key.name == key_id), KeyLimits(name=key_id))
        return KeyLimits(
            name=key_id,
            requests_per_minute=own.requests_per_minute or self.requests_per_minute,
            tokens_per_minute=own.tokens_per_minute or self.tokens_per_minute,
            priority=own.priority,
        )


def require_auth(data: Any) -> Any:
    """A ``mode="before"`` check that a spec names its ``auth``, with the fix spelled out
    (pydantic's own message would only say the field is required)."""
    if isinstance(data, dict) and "auth" not in data:
        raise ValueError(AUTH_REQUIRED)
    return data
