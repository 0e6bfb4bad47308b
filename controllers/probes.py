"""The /metrics and /healthz endpoint, and the peering objects replicas share."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence

from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controllers.stalls import health_report

GROUP, VERSION = "kopf.dev", "v1"
GLOB_CHARACTERS = frozenset("*?[!")


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(_: web.Request) -> web.Response:
    """Answering proves the event loop is alive; a 503 says a handler has stalled, so the
    kubelet restarts an operator whose worker threads are stuck."""
    healthy, text = health_report()
    return web.Response(text=text, status=200 if healthy else 503)


async def serve_probes(addr: str, port: int) -> web.AppRunner:
    """Serve /metrics and /healthz on one port, on kopf's event loop, until cleaned up."""
    app = web.Application()
    app.add_routes([web.get("/metrics", _metrics), web.get("/healthz", _healthz)])
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, addr, port).start()
    return runner


def ensure_peering(api: client.ApiClient, name: str, namespaces: Sequence[str] = ()) -> None:
    """Create the peering objects replicas coordinate through, where missing.

    kopf creates none: it pauses until they exist. Watching the whole cluster it
    uses one ClusterKopfPeering; watching ``namespaces`` it uses a KopfPeering in
    each of them, so these must be exact names (no object can be made for a pattern)
    of namespaces that exist.
    """
    patterns = [namespace for namespace in namespaces if GLOB_CHARACTERS & set(namespace)]
    if patterns:
        raise ValueError(
            f"namespace patterns {patterns} cannot have a KopfPeering each: "
            "name the watched namespaces exactly, or run standalone"
        )
    objects = client.CustomObjectsApi(api)
    scopes: list[str | None] = [*namespaces] or [None]
    for namespace in scopes:
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}}
        try:
            if namespace:
                objects.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "kopfpeerings", body
                )
            else:
                objects.create_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", body)
        except ApiException as error:
            if error.status != 409:
                raise


def auto_priority(pod_name: str | None = None) -> int:
    """A peering priority in [0, 2**31) that depends only on the pod's name.

    kopf pauses every replica whose priority equals another live one's, so the
    replicas of a Deployment need distinct priorities without being told apart by
    hand; their pod names differ. The name is ``pod_name``, else $POD_NAME (the
    downward API), else the hostname (a pod's hostname is its name). A hash, unlike
    Python's ``hash``, is the same in every process, so a restarted container keeps
    its priority.
    """
    name = pod_name or os.environ.get("POD_NAME") or socket.gethostname()
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:4], "big") & (2**31 - 1)
