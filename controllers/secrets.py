"""Read the Secrets a spec names (model credentials, API keys), decoded."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controllers.context import current
from modelfleet.core.workload import Blocked


def secret_reader(api: client.ApiClient) -> Callable[[str, str], Mapping[str, str] | None]:
    """``(namespace, name) -> decoded data`` of a Secret, ``None`` when it does not exist.

    Values are read when a workload is deployed and handed to the code that fetches its
    artifacts; they are never logged, put in status, or passed on to Ray.
    """
    core = client.CoreV1Api(api)

    def read(namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}

    return read


AUTH_SECRET_NOT_FOUND = "AuthSecretNotFound"
AUTH_SECRET_EMPTY = "AuthSecretEmpty"


def check_auth_secret(
    read: Callable[[str, str], Mapping[str, str] | None], namespace: str, secret: str
) -> Blocked | None:
    """Why the API keys Secret of ``spec.auth`` cannot serve (``None`` if it can, or if
    the spec checks no keys): the endpoint would otherwise refuse every caller silently."""
    if not secret:
        return None
    data = read(namespace, secret)
    if data is None:
        return Blocked(
            AUTH_SECRET_NOT_FOUND,
            f"spec.auth.secretName: Secret {secret!r} does not exist in namespace "
            f"{namespace!r}; create it with one API key per data entry (kubectl create secret "
            f"generic {secret} -n {namespace} --from-literal=<key-id>=<key>) or set "
            f"auth.mode: None",
        )
    if not any(value.strip() for value in data.values()):
        return Blocked(
            AUTH_SECRET_EMPTY,
            f"spec.auth.secretName: Secret {secret!r} in namespace {namespace!r} holds no "
            f"key; add one per data entry (the entry's name is the key's id)",
        )
    return None


def auth_secret_blocked(namespace: str, secret: str) -> Blocked | None:
    """:func:`check_auth_secret` against the operator's API server."""
    return check_auth_secret(secret_reader(current().api), namespace, secret)
