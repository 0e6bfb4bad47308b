"""The RoutingPolicy runtime: a Ray Serve application with an OpenAI-compatible endpoint.

KubeRay's RayService (and the local backend) import ``modelfleet.routing.app:build`` with
a :class:`~modelfleet.routing.router.RouterConfig` in wire form. One ingress replica
holds the :class:`~modelfleet.routing.router.Router`, so decisions, telemetry and what
feedback taught it live in one place; :func:`deploy` applies a changed policy or new
target endpoints to the running router in place, keeping what it learned.
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
from modelfleet.routing.embedding import QueryEncoder
from modelfleet.routing.router import Router, RouterConfig

api = FastAPI(title="modelfleet RoutingPolicy")


@api.exception_handler(ApiError)
async def _api_error(_: Request, error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class RouterIngress:
    """The Serve shell around a :class:`Router`: routes and handle methods only."""

    def __init__(self) -> None:
        self._router: Router | None = None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's ``user_config`` hook: the first config starts the router, later ones
        change it in place."""
        if self._router is None:
            self._router = Router(config, QueryEncoder)
        else:
            self._router.configure(config)

    async def __del__(self) -> None:
        if self._router is not None:
            await self._router.close()

    def _core(self) -> Router:
        if self._router is None:
            raise ApiError(503, "the router is starting", headers={"Retry-After": "1"})
        return self._router

    @api.get("/v1/models")
    def list_models(self, request: Request) -> dict[str, Any]:
        """``GET /v1/models``: the policy's name and its targets."""
        router = self._core()
        router.admit(request.headers.get("authorization"))
        return router.list_models()

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions``, routed."""
        return await self._complete(request, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``, routed."""
        return await self._complete(request, chat=True)

    async def _complete(self, request: Request, chat: bool) -> Response:
        router = self._core()
        credentials = request.headers.get("authorization")
        caller = router.admit(credentials)
        return await router.complete(await request.body(), chat, caller, credentials)

    @api.post("/v1/feedback")
    async def feedback(self, request: Request) -> dict[str, Any]:
        """``POST /v1/feedback``: whether an answer (by response id) was correct."""
        router = self._core()
        router.admit(request.headers.get("authorization"))
        return router.feedback(await request.body())

    @api.get("/metrics")
    def metrics(self) -> Response:
        """Requests and tokens per key id for charge-back (Prometheus text format)."""
        return PlainTextResponse(self._core().metrics(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/router/status")
    def status(self) -> dict[str, Any]:
        """Decisions, observed quality and cost, per-target telemetry, learned profiles."""
        return self._core().status()


def build(args: dict[str, Any]) -> Application:
    """The Serve application for a router config in wire form (the RayService import path).

    Raises ``ValueError`` (pydantic's included) for an invalid config.
    """
    RouterConfig.model_validate(args)
    return cast(Deployment, RouterIngress).options(user_config=args).bind()


def deploy(
    config: dict[str, Any],
    name: str,
    route_prefix: str = "/",
    cancelled: threading.Event | None = None,
) -> None:
    """Deploy the router ``name`` on the connected Ray, or update the running one in place;
    setting ``cancelled`` ends the wait for it to run."""
    if is_running(name):
        await_response(call_app(name, "reconfigure", config), cancelled)
        return
    run_application(lambda: build(config), name, route_prefix, cancelled)


def app_status(name: str, route_prefix: str = "/") -> dict[str, Any]:
    """The router's endpoint path and ready replicas in the shape the backend reads."""
    status: dict[str, Any] = call_app(name, "status").result()
    return {
        "endpoint": route_prefix.rstrip("/") + status["endpoint"],
        "readyReplicas": 1,
        "migrations": 0,
        "models": {},
    }
