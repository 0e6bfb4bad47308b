"""The ModelPool runtime: a Ray Serve application with an OpenAI-compatible endpoint.

KubeRay's RayService (and the local backend) import ``modelfleet.serving.app:build``
with the ModelPoolSpec in its camelCase wire form. One ingress replica serves FastAPI
through a :class:`~modelfleet.serving.frontend.PoolFrontend`, which runs one
:class:`~modelfleet.serving.manager.PoolManager` per served model; the managers place
requests on the engine replica actors, so dispatch, migration and recovery see
individual engines. Those actors are detached: when the ingress crashes or is
redeployed, the next ingress adopts them by name (see the manager), and only the
requests whose connections were in the dead ingress are cut off.

The spec travels as the deployment's ``user_config`` and reaches the ingress through
``reconfigure``; :func:`deploy` applies a new replica count or migration setting to the
running ingress in place (``apply``) rather than redeploying, so streams survive
scaling. Models and serving options are constructor arguments: changing them redeploys.
"""

import threading
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve import Application, Deployment

from modelfleet.core.openai_api import ApiError
from modelfleet.core.serve_deploy import await_response, call_app, is_running, run_application
from modelfleet.serving.catalog import resolve_served_model
from modelfleet.serving.frontend import PoolFrontend, split_args
from modelfleet.serving.manager import MigrationReport

api = FastAPI(title="modelfleet ModelPool")


@api.exception_handler(ApiError)
async def _api_error(_: Request, error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class PoolIngress:
    """The Serve shell around a :class:`PoolFrontend`: routes and handle methods only."""

    def __init__(
        self, models: list[dict[str, Any]], options: dict[str, Any], keys_dir: str
    ) -> None:
        app = serve.get_replica_context().app_name
        self._frontend = PoolFrontend(models, options, app, keys_dir)
        self._frontend.kill_unserved_replicas()

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's ``user_config`` hook: the spec, applied in place."""
        await self._frontend.reconfigure(config)

    async def apply(
        self, spec_wire: dict[str, Any], options: dict[str, Any], keys_dir: str
    ) -> bool:
        """Apply a spec in place; ``False`` when its models, options or keys need a
        redeploy."""
        return await self._frontend.apply(spec_wire, options, keys_dir)

    async def __del__(self) -> None:
        await self._frontend.shutdown()

    @api.get("/v1/models")
    def list_models(self, request: Request) -> dict[str, Any]:
        """``GET /v1/models``."""
        self._frontend.admit(request.headers.get("authorization"))
        return self._frontend.list_models()

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions``."""
        caller = self._frontend.admit(request.headers.get("authorization"))
        return await self._frontend.complete(await request.body(), False, caller)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        caller = self._frontend.admit(request.headers.get("authorization"))
        return await self._frontend.complete(await request.body(), True, caller)

    @api.get("/metrics")
    def metrics(self) -> Response:
        """Requests and tokens per key id for charge-back (Prometheus text format)."""
        return PlainTextResponse(self._frontend.metrics(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/pool/status")
    def status(self) -> dict[str, Any]:
        """Ready replicas, migrations and recoveries per model, and the endpoint path."""
        return self._frontend.status()

    async def migrate(self, request_id: str, target: str | None = None) -> MigrationReport | None:
        """Migrate a running request now (for tests, benchmarks and operators)."""
        return await self._frontend.migrate(request_id, target)

    def locate(self, request_id: str) -> str | None:
        """The replica actor a running request is on."""
        return self._frontend.locate(request_id)


def build(args: dict[str, Any]) -> Application:
    """The Serve application for a ModelPoolSpec in wire form (the RayService import path).

    ``args`` may also hold ``servingOptions`` (see :class:`ServingOptions`). Raises
    ``ValueError`` (pydantic's included) for an invalid spec or an unsupported model URI.
    """
    spec, options, keys_dir = split_args(args)
    for index, model in enumerate(spec.models):
        resolve_served_model(model, index)
    deployment = cast(Deployment, PoolIngress)
    return deployment.options(user_config=spec.to_wire()).bind(
        [model.to_wire() for model in spec.models], options.to_wire(), keys_dir
    )


def deploy(
    spec_wire: dict[str, Any],
    name: str,
    route_prefix: str = "/",
    cancelled: threading.Event | None = None,
) -> None:
    """Deploy or update the pool ``name`` on the connected Ray; idempotent.

    Returns once the application runs. When only the replica count or migration settings
    changed, the running ingress applies them in place (``apply``), so no stream drops;
    otherwise (new pool, new models or options, or one still deploying) the application is
    (re)deployed. Setting ``cancelled`` ends the wait for its replicas.
    """
    spec, options, keys_dir = split_args(spec_wire)
    if is_running(name):
        response = call_app(name, "apply", spec.to_wire(), options.to_wire(), keys_dir)
        if await_response(response, cancelled):
            return
    run_application(lambda: build(spec_wire), name, route_prefix, cancelled)


def app_status(name: str, route_prefix: str = "/") -> dict[str, Any]:
    """The pool's ready replicas, migrations and recoveries, and its endpoint path."""
    status: dict[str, Any] = call_app(name, "status").result()
    status["endpoint"] = route_prefix.rstrip("/") + status["endpoint"]
    return status
