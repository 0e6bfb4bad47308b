"""Names of a pool's engine replica actors, and their removal with the pool.

Engine replicas are detached named actors, so that they outlive the ingress that
created them: a restarted ingress finds them by name and adopts them. The name is
``<app>:<model>:<slot>``; Kubernetes names (and so the local backend's Serve application
names, ``<namespace>.<name>``) hold no ``:``, so the prefix ``<app>:`` selects the
replicas of one pool and of no other. Being detached, they die only when killed: by the
manager when it scales down, by :func:`kill_pool_replicas` when the pool is deleted, or
with the Ray cluster (KubeRay deletes a RayService's cluster with it).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import ray

DEFAULT_NAMESPACE = "modelfleet"
"""The Ray namespace of engine replicas unless the serving options name another."""

RELEASE_TIMEOUT_S = 30.0
"""How long a kill waits for Ray to release the names of the actors it killed."""


def replica_name(app: str, model: str, slot: int) -> str:
    """The actor name of ``model``'s replica in ``slot`` of the pool served as ``app``."""
    if ":" in app or not app:
        raise ValueError(
            f"name_prefix {app!r}: the pool's application name must be non-empty and hold "
            f"no ':', which separates it from the model in replica actor names"
        )
    return f"{app}:{model}:{slot}"


def pool_replica_names(app: str, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """The names of the live engine replica actors of the pool served as ``app``."""
    return [name for name in live_names(namespace) if name.startswith(f"{app}:")]


def model_replica_names(app: str, model: str, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """The names of the live replica actors of ``model`` in the pool served as ``app``."""
    return [
        name
        for name in pool_replica_names(app, namespace)
        if name.rsplit(":", 1)[0] == f"{app}:{model}"
    ]


def kill_pool_replicas(app: str, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Kill every engine replica actor of the pool served as ``app``; idempotent.

    Returns the names killed, once Ray has released them, so that a pool created again
    under the same name starts fresh replicas rather than adopting dying ones;
    ``TimeoutError`` if Ray holds them longer than :data:`RELEASE_TIMEOUT_S`.
    """
    return kill_replicas(pool_replica_names(app, namespace), namespace)


def kill_unserved_replicas(
    app: str, models: Collection[str], namespace: str = DEFAULT_NAMESPACE
) -> list[str]:
    """Kill the replicas of models the pool served as ``app`` no longer serves: a redeploy
    that dropped a model leaves its detached replicas, which no manager adopts."""
    served = {f"{app}:{model}" for model in models}
    names = pool_replica_names(app, namespace)
    return kill_replicas([n for n in names if n.rsplit(":", 1)[0] not in served], namespace)


def kill_replicas(names: Sequence[str], namespace: str) -> list[str]:
    """Kill the named actors and wait until Ray has released their names."""
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=namespace))
        except ValueError:
            continue
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while held := set(names) & set(live_names(namespace)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray did not release the actor names {sorted(held)}")
        time.sleep(0.1)
    return list(names)


def live_names(namespace: str) -> list[str]:
    """Names of the live named actors in ``namespace``, sorted."""
    return sorted(
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == namespace
    )
