"""Read the Secrets a spec names (model credentials), decoded, for the backends."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping

from kubernetes import client
from kubernetes.client.exceptions import ApiException


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
