"""The /metrics and /healthz endpoint, and the peering object two replicas share."""

from __future__ import annotations

from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(_: web.Request) -> web.Response:
    """Answering at all proves the operator's event loop is alive."""
    return web.Response(text="ok")


async def serve_probes(addr: str, port: int) -> web.AppRunner:
    """Serve /metrics and /healthz on one port, on kopf's event loop, until cleaned up."""
    app = web.Application()
    app.add_routes([web.get("/metrics", _metrics), web.get("/healthz", _healthz)])
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, addr, port).start()
    return runner


def ensure_peering(api: client.ApiClient, name: str) -> None:
    """Create the cluster-wide peering object replicas coordinate through, if missing."""
    body = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": name},
    }
    try:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", body
        )
    except ApiException as error:
        if error.status != 409:
            raise
