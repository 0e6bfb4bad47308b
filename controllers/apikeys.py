"""Local backend: rewrite a service's API key files as soon as their Secret changes.

On a cluster the kubelet refreshes a mounted Secret; locally the operator writes the
files (``modelfleet.backends.key_files``), so it follows the Secrets those files came
from and rotation or revocation reaches the endpoints within a second, not at the
next resync. Imported by ``operator/main.py`` for the local backend only.
"""

from __future__ import annotations

import base64
from typing import Any

import kopf

from controllers.context import current
from modelfleet.backends.local import LocalBackend


@kopf.on.event("", "v1", "secrets")
def sync_api_keys(type: str, body: kopf.Body, **_: Any) -> None:
    """Write the Secret's keys where local services read them, if any service does; a
    deleted Secret leaves no valid key."""
    backend = current().backend
    if not isinstance(backend, LocalBackend):
        return
    meta = body["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    if not backend.serve.uses_keys(namespace, name):
        return
    data = {} if type == "DELETED" else dict(body.get("data") or {})
    decoded = {key: base64.b64decode(value).decode() for key, value in data.items()}
    backend.serve.sync_keys(namespace, name, decoded)
