"""Submit a Serve application safely from many threads, then wait for it apart.

Building an application (``Deployment.options``, ``bind`` and ``serve.run``) pickles
its request router by value, and Ray toggles that pickling mode process-wide: two
applications built at once on two threads (a pool and its router, rolled out together)
fail with "... is not registered for pickle by value". Building and submission are
therefore serialised behind one lock and kept short (no waiting under the lock); waiting
for the replicas happens outside it, so one slow rollout never holds up another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ray import serve
from ray.serve import Application, RunTarget
from ray.serve.schema import ApplicationStatus

POLL_S = 0.2
_SUBMIT = threading.Lock()


class DeployFailedError(RuntimeError):
    """Serve could not deploy the application; the message is Serve's own."""


def run_application(build: Callable[[], Application], name: str, route_prefix: str) -> None:
    """Build the application, deploy it as ``name`` and return once it runs (or raise why
    it cannot)."""
    with _SUBMIT:
        serve.run_many(
            [RunTarget(target=build(), name=name, route_prefix=route_prefix)],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )
    wait_until_running(name)


def wait_until_running(name: str) -> None:
    """Poll the application's status until it runs; a failed deployment raises."""
    while True:
        status = serve.status().applications.get(name)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise DeployFailedError(status.message)
        time.sleep(POLL_S)
