"""Kubernetes Events about the operator's resources, posted from any thread.

kopf's ``kopf.event`` works only inside a kopf handler, but resources are also
reconciled by the resync loop and by watches of their children (``controllers.resync``),
so every path posts through this one function instead. Events are best effort: a
failure to post one is logged and never fails the reconcile that wanted it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

COMPONENT = "modelfleet"
log = logging.getLogger(__name__)


def render_event(
    body: Mapping[str, Any], type: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about ``body`` (a custom resource as the API server returns it)."""
    meta = body["metadata"]
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post_event(
    api: client.ApiClient, body: Mapping[str, Any], type: str, reason: str, message: str
) -> None:
    """Post one Event about ``body``; log, do not raise, when the API server refuses it."""
    event = render_event(body, type, reason, message, datetime.now(UTC))
    try:
        events = client.CoreV1Api(api)
        events.create_namespaced_event(event["metadata"]["namespace"], cast(Any, event))
    except ApiException as error:
        log.warning("could not post event %s %s: %s", type, reason, error.reason)
