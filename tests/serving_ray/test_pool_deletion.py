"""Deleting a pool through the local backend kills its detached engine replicas."""

from __future__ import annotations

import pytest
import ray
from ray import serve

from modelfleet.backends.base import Owner
from modelfleet.backends.local_serve import LocalServe, ServeSettings, app_name, route_prefix
from modelfleet.serving.app import deploy
from modelfleet.serving.replica_names import DEFAULT_NAMESPACE, pool_replica_names

from .conftest import MODEL, pool_spec

pytestmark = [pytest.mark.slow, pytest.mark.ray]

OWNER = Owner("modelfleet.io/v1alpha1", "ModelPool", "doomed", "tests", "uid-doomed")


def test_delete_leaves_no_detached_replica(serve_url: str) -> None:
    app = app_name(OWNER, OWNER.name)
    deploy(pool_spec(2), name=app, route_prefix=route_prefix(OWNER))
    assert len(pool_replica_names(app)) == 2
    port = int(serve_url.rsplit(":", 1)[-1])
    backend = LocalServe(ServeSettings(port=port))

    backend.delete(OWNER, OWNER.name)

    assert app not in serve.status().applications
    leftovers = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"{app}:")
    ]
    assert leftovers == []
    backend.delete(OWNER, OWNER.name)  # idempotent: nothing left to delete


@ray.remote(num_cpus=0)
class Leftover:
    """Stands where a replica of a model that a redeploy dropped was left."""

    def ping(self) -> str:
        return "here"


def test_an_ingress_kills_replicas_of_models_its_pool_no_longer_serves(serve_url: str) -> None:
    owner = Owner("modelfleet.io/v1alpha1", "ModelPool", "trimmed", "tests", "uid-trimmed")
    app = app_name(owner, owner.name)
    stray = Leftover.options(  # type: ignore[attr-defined]
        name=f"{app}:dropped-model:0", namespace=DEFAULT_NAMESPACE, lifetime="detached"
    ).remote()
    assert ray.get(stray.ping.remote()) == "here"
    deploy(pool_spec(1), name=app, route_prefix=route_prefix(owner))
    assert pool_replica_names(app) == [f"{app}:{MODEL}:0"]
    port = int(serve_url.rsplit(":", 1)[-1])
    LocalServe(ServeSettings(port=port)).delete(owner, owner.name)
