"""Submit a Serve application safely from many threads, then wait for it apart.

Building an application (``Deployment.options``, ``bind`` and ``serve.run``) pickles
its request router by value, and Ray toggles that pickling mode process-wide: two
applications built at once on two threads (a pool and its router, rolled out together)
fail with "... is not registered for pickle by value". Building and submission are
therefore serialised behind one lock and kept short (no waiting under the lock); waiting
for the replicas happens outside it, so one slow rollout never holds up another. Reading
Serve's state (status, handles, a handle's first call) rebuilds deployment configs and
toggles the same pickling mode, so those calls take the lock too (:func:`applications`,
:func:`call_app`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve import Application, RunTarget
from ray.serve.handle import DeploymentResponse
from ray.serve.schema import ApplicationStatus

POLL_S = 0.2
_SERVE_CLIENT = threading.RLock()


class DeployFailedError(RuntimeError):
    """Serve could not deploy the application; the message is Serve's own."""


class RolloutCancelledError(RuntimeError):
    """The rollout was called off (its resource is being deleted) before it ran."""


def run_application(
    build: Callable[[], Application],
    name: str,
    route_prefix: str,
    cancelled: threading.Event | None = None,
) -> None:
    """Build the application, deploy it as ``name`` and return once it runs (or raise why
    it cannot, or :class:`RolloutCancelledError` once ``cancelled`` is set)."""
    with _SERVE_CLIENT:
        serve.run_many(
            [RunTarget(target=build(), name=name, route_prefix=route_prefix)],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )
    wait_until_running(name, cancelled or threading.Event())


def await_response(response: DeploymentResponse[Any], cancelled: threading.Event | None) -> Any:
    """The result of a call to a running application (a change applied in place, which
    waits for new replicas when it scales up), given up once ``cancelled`` is set."""
    while True:
        try:
            return response.result(timeout_s=POLL_S)
        except TimeoutError:
            if cancelled is not None and cancelled.is_set():
                response.cancel()  # type: ignore[no-untyped-call]
                raise RolloutCancelledError("the change was called off") from None


def applications() -> dict[str, Any]:
    """Serve's status of every application, read under the client lock."""
    with _SERVE_CLIENT:
        return dict(serve.status().applications)


def call_app(name: str, method: str, *args: Any) -> DeploymentResponse[Any]:
    """Start a call of ``method`` on application ``name``'s ingress under the client lock;
    wait for its result outside it."""
    with _SERVE_CLIENT:
        response = getattr(serve.get_app_handle(name), method).remote(*args)
    if not isinstance(response, DeploymentResponse):
        raise TypeError(f"{method} is not a unary call, got {type(response).__name__}")
    return response


def is_running(name: str) -> bool:
    """Whether the application runs, so that a change can be applied to it in place (a
    call to an application still deploying would wait for replicas that may never come)."""
    status = applications().get(name)
    return status is not None and status.status == ApplicationStatus.RUNNING


def wait_until_running(name: str, cancelled: threading.Event) -> None:
    """Poll the application's status until it runs; a failed deployment raises, and so do
    a cancellation and the application's disappearance (deleted meanwhile), so a rollout
    that cannot get its replicas never waits past its resource's deletion."""
    seen = False
    while not cancelled.is_set():
        status = applications().get(name)
        if status is None and seen:
            raise RolloutCancelledError(f"{name} was deleted while it was deploying")
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise DeployFailedError(status.message)
        seen = seen or status is not None
        cancelled.wait(POLL_S)
    raise RolloutCancelledError(f"the rollout of {name} was called off")
