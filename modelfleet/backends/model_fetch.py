"""Fetch a pool's models onto this machine before the local backend deploys it.

On the local backend the operator, Ray and every replica share one machine and one
artifact cache, so the operator materializes each model and adapter once, with the
credentials Secret the spec names, and deploys the pool with ``file://`` URIs of the
local copies. Credentials therefore never travel through Ray's deployment config, and a
model that is missing or unreadable fails here, naming the URI and the cause, before a
replica is started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modelfleet.artifacts.credentials import credential_env
from modelfleet.artifacts.errors import ArtifactError, ArtifactKind
from modelfleet.artifacts.fetch import materialize

SecretReader = Callable[[str, str], Mapping[str, str] | None]
"""``(namespace, name) -> the Secret's decoded data``, ``None`` when it does not exist."""

BUILTIN_SCHEME = "builtin://"


def localize_models(
    config: dict[str, Any], namespace: str, read_secret: SecretReader | None
) -> dict[str, Any]:
    """``config`` (a ModelPool spec on the wire) with every model and adapter URI replaced
    by the ``file://`` URI of its local copy; builtin models stay as they are.

    Raises :class:`ArtifactError` for an artifact that cannot be fetched or a credentials
    Secret that is missing or malformed, ``ValueError`` for a malformed URI.
    """
    models = []
    for index, model in enumerate(config.get("models", [])):
        credentials = _credentials(model, namespace, read_secret)
        field = f"spec.models[{index}]"
        localized = {**model, "uri": _local_uri(model["uri"], f"{field}.uri", "model", credentials)}
        localized["adapters"] = [
            {
                **adapter,
                "uri": _local_uri(
                    adapter["uri"], f"{field}.adapters[{j}].uri", "adapter", credentials
                ),
            }
            for j, adapter in enumerate(model.get("adapters", []))
        ]
        models.append(localized)
    return {**config, "models": models}


def _local_uri(
    uri: str, field: str, kind: ArtifactKind, credentials: Mapping[str, str] | None
) -> str:
    if uri.startswith(BUILTIN_SCHEME):
        return uri
    return f"file://{materialize(uri, field, kind, credentials=credentials)}"


def _credentials(
    model: Mapping[str, Any], namespace: str, read_secret: SecretReader | None
) -> Mapping[str, str] | None:
    """The env-style credentials of the model's ``credentialsSecret``, if it names one."""
    name = model.get("credentialsSecret")
    if name is None:
        return None
    data = None if read_secret is None else read_secret(namespace, name)
    if data is None:
        cause = f"its credentialsSecret {name!r} does not exist in namespace {namespace!r}"
        raise ArtifactError(model["uri"], cause)
    try:
        return credential_env(data, name)
    except ValueError as error:
        raise ArtifactError(model["uri"], str(error)) from error
