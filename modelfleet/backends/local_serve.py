"""ModelPools as Ray Serve applications on a Ray on this machine (the local backend).

The operator reconciles from kopf's worker threads and must never block on a
deployment: loading models and scaling up take seconds. Deployments therefore
run one at a time on a background thread, and each reconcile only looks at how
far the latest one got. The Ray cluster is started (or joined) on the first
pool, so an operator that serves nothing never starts Ray.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import ray
from ray import serve

from modelfleet.artifacts.errors import ArtifactError
from modelfleet.backends.base import Owner, spec_hash
from modelfleet.backends.key_files import default_keys_root, keys_dir, write_key_files
from modelfleet.backends.model_fetch import SecretReader, localize_models
from modelfleet.core.serve_deploy import RolloutCancelledError
from modelfleet.core.workload import (
    API_KEYS_ARG,
    ApplyResult,
    Observation,
    Workload,
    WorkloadState,
    distribute_ready,
)
from modelfleet.serving.plan import ENTRYPOINT as POOL_ENTRYPOINT
from modelfleet.serving.plan import OPTIONS_KEY
from modelfleet.serving.replica_names import kill_pool_replicas

RAY_NAMESPACE = "modelfleet"
log = logging.getLogger(__name__)
DEPLOYING = "Deploying"
DEPLOY_FAILED = "DeployFailed"
MODEL_UNAVAILABLE = "ModelUnavailable"
UNSCHEDULABLE = "Unschedulable"
UNSCHEDULABLE_AFTER_S = 10.0
UNREACHABLE_GRACE_S = 30.0
"""How long a deployed application may not answer before it is deployed again: Serve's
controller can be slow to answer under load, and redeploying on the first miss restarted
healthy pools and flipped their Ready condition on every resync."""
"""How long a rollout waits before a lack of free Ray CPUs is reported as the reason."""


@dataclass(frozen=True)
class ServeSettings:
    """Where the local Ray and Serve's HTTP proxy live, and how replicas are sized."""

    ray_address: str | None = None
    """``None`` starts a private Ray inside the operator; otherwise joined (``auto`` too)."""
    host: str = "127.0.0.1"
    port: int = 8000
    replica_cpus: float = 0.5
    """Ray CPUs one engine replica reserves; small so a laptop can hold a few replicas."""
    keys_root: Path = field(default_factory=default_keys_root)
    """Where the API keys of services are written, one directory per Secret."""


def app_name(owner: Owner, workload_name: str) -> str:
    """A Serve application name unique per resource: namespaces cannot contain dots."""
    return f"{owner.namespace}.{workload_name}"


def route_prefix(owner: Owner) -> str:
    """Each pool answers under /<namespace>/<name> on the shared Serve proxy, other kinds
    under /<namespace>/<kind>/<name>, so a pool and a policy may share a name."""
    if owner.kind == "ModelPool":
        return f"/{owner.namespace}/{owner.name}"
    return f"/{owner.namespace}/{owner.kind.lower()}/{owner.name}"


def serve_app(entrypoint: str) -> ModuleType:
    """The module of a service workload: its ``deploy(config, name, route_prefix)`` and
    ``app_status(name, route_prefix)``, the same module KubeRay imports ``build`` from."""
    return importlib.import_module(entrypoint)


def run_in_background(work: Callable[..., None], *args: Any) -> Future[None]:
    """Run ``work`` on a daemon thread: a rollout stuck waiting for Ray resources must
    not keep the operator from exiting, as an executor's joined workers would."""
    future: Future[None] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            work(*args)
        except BaseException as error:  # handed to whoever observes the rollout
            future.set_exception(error)
        else:
            future.set_result(None)

    threading.Thread(target=run, name="serve-rollout", daemon=True).start()
    return future


@dataclass
class _Rollout:
    """The latest deployment of one application, how it went, and the switch that calls
    it off (a deletion must never wait for replicas that cannot start)."""

    config_hash: str
    future: Future[None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    unreachable_since: float | None = None


def redeploy_due(unreachable_since: float, now: float) -> bool:
    """Whether an application that has not answered since ``unreachable_since`` is deployed
    again now (see ``UNREACHABLE_GRACE_S``)."""
    return now - unreachable_since >= UNREACHABLE_GRACE_S


def unreachable_observation(name: str, error_type: str, overdue: bool) -> Observation:
    """``ServeUnreachable``, saying whether the application is being deployed again; the
    same words for every miss of one kind, so repeated misses write no new status."""
    what = f"{name} does not answer ({error_type})"
    if overdue:
        message = f"{what} for {UNREACHABLE_GRACE_S:g}s or more; redeploying it"
    else:
        message = f"{what}; deployed again if it still does not in {UNREACHABLE_GRACE_S:g}s"
    return Observation(WorkloadState.UNAVAILABLE, "ServeUnreachable", message)


class LocalServe:
    """Deploys, observes and deletes pools on the local Ray; safe to call from many threads."""

    def __init__(self, settings: ServeSettings, read_secret: SecretReader | None = None) -> None:
        self._settings = settings
        self._read_secret = read_secret
        self._lock = threading.Lock()
        self._rollouts: dict[str, _Rollout] = {}
        self._app_locks: dict[str, threading.Lock] = {}
        self._serving = False
        self._ray_owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-owner")

    def base_url(self) -> str:
        return f"http://{self._settings.host}:{self._settings.port}"

    def _connect(self) -> None:
        """Start or join Ray and Serve once; repeated calls are no-ops.

        Ray ties the processes of a private cluster to the *thread* that starts them
        (Linux's parent-death signal follows the thread), so they are started on a
        thread that lives as long as the operator, never on a short-lived rollout thread.
        """
        self._ray_owner.submit(self._start_ray).result()

    def _start_ray(self) -> None:
        if self._serving:
            return
        if not ray.is_initialized():
            ray.init(
                address=self._settings.ray_address,
                namespace=RAY_NAMESPACE,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        serve.start(http_options={"host": self._settings.host, "port": self._settings.port})
        self._serving = True

    def _app_lock(self, name: str) -> threading.Lock:
        """One application's rollouts and deletion run in order; other pools run alongside."""
        with self._lock:
            return self._app_locks.setdefault(name, threading.Lock())

    def _deploy(
        self,
        name: str,
        workload: Workload,
        config: dict[str, Any],
        owner: Owner,
        cancelled: threading.Event,
    ) -> None:
        """Fetch a pool's models to this machine, then deploy it with their local copies;
        the wait for its replicas ends as soon as ``cancelled`` is set."""
        if workload.entrypoint == POOL_ENTRYPOINT:
            config = localize_models(config, owner.namespace, self._read_secret)
        with self._app_lock(name):
            if cancelled.is_set():
                raise RolloutCancelledError(f"the rollout of {name} was called off")
            self._connect()
            deploy = serve_app(workload.entrypoint).deploy
            deploy(
                {**config, **workload.restore},
                name=name,
                route_prefix=route_prefix(owner),
                cancelled=cancelled,
            )

    def apply(self, owner: Owner, workload: Workload) -> ApplyResult:
        """Start a rollout when the pool is new or its spec changed; otherwise nothing."""
        name = app_name(owner, workload.name)
        config = workload.config
        if workload.entrypoint == POOL_ENTRYPOINT:
            config = {**config, OPTIONS_KEY: {"replicaNumCpus": self._settings.replica_cpus}}
        if workload.api_keys_secret:
            directory = self._keys_of(owner.namespace, workload.api_keys_secret)
            config = {**config, API_KEYS_ARG: str(directory)}
        digest = spec_hash(config)
        with self._lock:
            current = self._rollouts.get(name)
            if current is not None and current.config_hash == digest:
                return ApplyResult.UNCHANGED
            if current is not None:
                current.cancelled.set()
            cancelled = threading.Event()
            future = run_in_background(self._deploy, name, workload, config, owner, cancelled)
            self._rollouts[name] = _Rollout(digest, future, cancelled)
        return ApplyResult.CREATED if current is None else ApplyResult.UPDATED

    def sync_keys(self, namespace: str, secret: str, data: Mapping[str, str] | None = None) -> Path:
        """Write a Secret's keys where the services that check them read them: ``data``
        when the caller has it (a watch event), else the Secret as read now (a missing
        Secret holds no key, so every key is refused)."""
        directory = keys_dir(self._settings.keys_root, namespace, secret)
        if data is None and self._read_secret is not None:
            data = self._read_secret(namespace, secret)
        write_key_files(directory, data or {})
        return directory

    def _keys_of(self, namespace: str, secret: str) -> Path:
        """Where a service reads a Secret's keys, written on first use; after that the
        Secret's watch (``controllers.apikeys``) keeps them current, so a reconcile does
        not read the Secret again (the controller has just checked it exists)."""
        if not self.uses_keys(namespace, secret):
            return self.sync_keys(namespace, secret)
        return keys_dir(self._settings.keys_root, namespace, secret)

    def uses_keys(self, namespace: str, secret: str) -> bool:
        """Whether a service of this operator has checked the Secret's keys here."""
        return keys_dir(self._settings.keys_root, namespace, secret).is_dir()

    def observe(self, owner: Owner, workload: Workload) -> Observation:
        """The rollout's progress, then the running pool's ready replicas and migrations."""
        name = app_name(owner, workload.name)
        with self._lock:
            rollout = self._rollouts.get(name)
        if rollout is None:
            return Observation(WorkloadState.MISSING, "NotDeployed", f"{name} is not deployed")
        if not rollout.future.done():
            return self._observe_rollout(name, workload, rollout)
        error = rollout.future.exception()
        if isinstance(error, ArtifactError):
            message = f"{error}; the pool is deployed again when its spec changes"
            return Observation(WorkloadState.FAILED, MODEL_UNAVAILABLE, message)
        if error is not None:
            return Observation(WorkloadState.FAILED, DEPLOY_FAILED, f"{name}: {error}")
        try:
            status = serve_app(workload.entrypoint).app_status(name, route_prefix(owner))
        except Exception as failure:  # Ray and Serve raise many types; all mean: unreachable.
            return self._observe_unreachable(name, rollout, failure)
        rollout.unreachable_since = None
        return self._observe_running(workload, status)

    def _observe_unreachable(self, name: str, rollout: _Rollout, error: Exception) -> Observation:
        """``ServeUnreachable``; the application is deployed again (the next apply finds no
        rollout) only once it has not answered for ``UNREACHABLE_GRACE_S``. The message
        names the error's type, not its text, so a repeated miss writes no new status."""
        now = time.monotonic()
        with self._lock:
            if rollout.unreachable_since is None:
                rollout.unreachable_since = now
            overdue = redeploy_due(rollout.unreachable_since, now)
            if overdue and self._rollouts.get(name) is rollout:
                del self._rollouts[name]
        log.warning("%s does not answer: %s: %s", name, type(error).__name__, error)
        return unreachable_observation(name, type(error).__name__, overdue)

    def _observe_rollout(self, name: str, workload: Workload, rollout: _Rollout) -> Observation:
        """A rollout under way; ``Unschedulable``, with what it needs and what Ray has, when
        its replicas need more CPUs than the local Ray has at all, or when it has waited a
        while with no room left for one more replica."""
        replicas = int(workload.config.get("replicas", 0))
        sized = f" with {replicas} replica(s)" if "replicas" in workload.config else ""
        deploying = Observation(
            WorkloadState.PENDING,
            DEPLOYING,
            f"deploying Serve application {name}{sized} on the local Ray",
        )
        if not self._serving:
            return deploying
        each = self._settings.replica_cpus
        engines = replicas * len(workload.config.get("models", []))
        total = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        free = float(ray.available_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        waited = time.monotonic() - rollout.started
        if engines * each <= total and (waited < UNSCHEDULABLE_AFTER_S or free >= each):
            return deploying
        return Observation(
            WorkloadState.PENDING,
            UNSCHEDULABLE,
            f"{name} waits for Ray CPUs: its {engines} engine replica(s) need {each:g} CPU each "
            f"({engines * each:g} in all), and the local Ray has {total:g} CPU(s), {free:g} "
            f"free; lower spec.replicas, delete other pools, or give the operator a larger Ray "
            f"(--ray-address) or smaller replicas (--replica-cpus)",
        )

    def _observe_running(self, workload: Workload, status: dict[str, Any]) -> Observation:
        desired = int(workload.config.get("replicas", 0))
        ready = int(status["readyReplicas"])
        endpoint = self.base_url() + status["endpoint"]
        by_model = {model: int(s["readyReplicas"]) for model, s in status["models"].items()}
        common = {
            "ready_replicas": distribute_ready(workload.worker_groups, ready),
            "model_replicas": by_model,
            "endpoint": endpoint,
            "migrations": int(status["migrations"]),
            "slo_attainment": status.get("sloAttainment"),
        }
        if ready < desired:
            return Observation(
                WorkloadState.PENDING,
                "ReplicasStarting",
                f"{ready}/{desired} replica(s) ready on the local Ray",
                **common,
            )
        return Observation(
            WorkloadState.RUNNING,
            "Serving",
            f"{ready} replica(s) serving at {endpoint} on the local Ray",
            **common,
        )

    def delete(self, owner: Owner, workload_name: str) -> None:
        """Delete the pool's application and kill its engine replica actors, which are
        detached (they outlive the ingress); its resource is gone, so nothing is drained.
        Idempotent: a second call finds neither."""
        name = app_name(owner, workload_name)
        with self._lock:
            rollout = self._rollouts.pop(name, None)
        if rollout is not None:
            rollout.cancelled.set()
            rollout.future.cancel()
        if not ray.is_initialized() and self._settings.ray_address is None:
            return  # a private Ray that never started holds nothing
        with self._app_lock(name):
            self._connect()
            serve.delete(name)
            kill_pool_replicas(name)
