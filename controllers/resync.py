"""Resources reconciled again without a kopf timer: a resync loop and watches of children.

kopf timers put a finalizer on every object they serve, since kopf must stop a timer
before its object goes; with the operator uninstalled (CRDs kept) every delete would
then wait forever. So the periodic reconcile is one loop of the operator's own: every
interval it lists each kind and reconciles what it finds, through the same per-object
lock as kopf's handlers. It works only while this replica is the active one of its
kopf peering (``leads``), as kopf's handlers do. Changes of KubeRay children reach their
owner at once through a kopf watch (``watch_children``) instead of waiting for the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controllers import metrics
from controllers.context import FINALIZER, current, needs_cleanup
from controllers.probes import GROUP as PEERING_GROUP
from controllers.probes import VERSION as PEERING_VERSION
from controllers.reconcile import REGISTERED, Registration, reconcile_now

LEGACY_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
"""kopf's default finalizer, which the resync timer used to force on every object."""
CHILD_WAIT_SECONDS = 30.0
"""How long a child's change waits for its owner's lock before leaving it to the loop."""
log = logging.getLogger(__name__)

Gate = Callable[[str | None], bool]
"""Whether this replica may reconcile in a namespace (None: cluster-wide) now."""


def leads(
    peers: Mapping[str, Mapping[str, Any]], identity: str, priority: int, now: datetime
) -> bool:
    """Whether kopf lets the replica ``identity`` work, judged from its peering's status.

    The rule is kopf's (``kopf._core.engines.peering``): a replica pauses while another
    live peer has a higher priority, or the same one (a conflict pauses both). A replica
    that kopf has not announced yet does not lead either.
    """
    if identity not in peers:
        return False
    for other, peer in peers.items():
        if other == identity:
            continue
        lastseen = datetime.fromisoformat(str(peer.get("lastseen", "1970-01-01T00:00:00+00:00")))
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=UTC)
        alive = lastseen + timedelta(seconds=int(peer.get("lifetime", 60))) > now
        if alive and int(peer.get("priority", 0)) >= priority:
            return False
    return True


def peering_gate(api: client.ApiClient, name: str, identity: str, priority: int) -> Gate:
    """A ``Gate`` reading the ClusterKopfPeering ``name`` (cluster-wide operators) or the
    KopfPeering ``name`` of each namespace (operators watching namespaces)."""
    objects = client.CustomObjectsApi(api)

    def gate(namespace: str | None) -> bool:
        try:
            if namespace is None:
                peering = objects.get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", name
                )
            else:
                peering = objects.get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", name
                )
        except ApiException as error:
            log.warning("cannot read peering %s: %s; not resyncing", name, error.reason)
            return False
        peers = cast(dict[str, Any], peering).get("status") or {}
        return leads(peers, identity, priority, datetime.now(UTC))

    return gate


def stale_finalizers(finalizers: Sequence[str], cleanup: bool) -> list[str]:
    """``finalizers`` without those this operator no longer honours: kopf's default marker,
    and ``FINALIZER`` on a backend with nothing to clean up."""
    stale = {LEGACY_FINALIZER} | (set() if cleanup else {FINALIZER})
    return [finalizer for finalizer in finalizers if finalizer not in stale]


def drop_stale_finalizers(registration: Registration, body: Mapping[str, Any]) -> None:
    """Remove stale finalizers (``stale_finalizers``), guarded by the resourceVersion read,
    so a delete held by an older operator's marker completes."""
    meta = body["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    kept = stale_finalizers(finalizers, needs_cleanup())
    if kept == finalizers:
        return
    info = registration.info
    patch = {"metadata": {"finalizers": kept, "resourceVersion": meta["resourceVersion"]}}
    try:
        client.CustomObjectsApi(current().api).patch_namespaced_custom_object(
            info.group,
            info.version,
            meta["namespace"],
            info.plural,
            meta["name"],
            patch,
            _content_type="application/merge-patch+json",
        )
    except ApiException as error:
        if error.status not in (404, 409):
            raise


def deletion_time(body: Mapping[str, Any]) -> float | None:
    """metadata.deletionTimestamp as Unix seconds, None when the object is not deleting."""
    stamp = body["metadata"].get("deletionTimestamp")
    if not stamp:
        return None
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


class Resync:
    """Reconcile every resource of every registered kind each ``interval`` seconds."""

    def __init__(self, interval: float, gate: Gate, namespaces: Sequence[str] = ()) -> None:
        self._interval = interval
        self._gate = gate
        self._namespaces: list[str | None] = list(namespaces) or [None]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelfleet-resync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except Exception:
                log.exception("resync sweep failed; trying again in %gs", self._interval)

    def _list(self, registration: Registration, namespace: str | None) -> list[dict[str, Any]]:
        info = registration.info
        objects = client.CustomObjectsApi(current().api)
        if namespace is None:
            listing = objects.list_cluster_custom_object(info.group, info.version, info.plural)
        else:
            listing = objects.list_namespaced_custom_object(
                info.group, info.version, namespace, info.plural
            )
        return list(cast(dict[str, Any], listing).get("items", []))

    def sweep(self) -> None:
        """One pass over every kind in the namespaces this replica leads."""
        leading = [namespace for namespace in self._namespaces if self._gate(namespace)]
        for registration in list(REGISTERED.values()):
            present: set[tuple[str, str]] = set()
            deleting: dict[tuple[str, str], float] = {}
            for namespace in leading:
                for body in self._list(registration, namespace):
                    if self._stop.is_set():
                        return
                    key = (body["metadata"]["namespace"], body["metadata"]["name"])
                    present.add(key)
                    since = deletion_time(body)
                    drop_stale_finalizers(registration, body)
                    if since is not None:
                        deleting[key] = since
                        continue
                    reconcile_now(registration, body, wait=0)
            if leading == self._namespaces:
                metrics.observe_listing(registration.info.kind, present, deleting)


def owner_registration(body: Mapping[str, Any]) -> tuple[Registration, str] | None:
    """The registered kind and name of the resource that controls ``body``, if any."""
    for reference in body["metadata"].get("ownerReferences") or []:
        registration = REGISTERED.get(reference.get("kind", ""))
        if registration is None or not reference.get("controller"):
            continue
        if reference.get("apiVersion") == f"{registration.info.group}/{registration.info.version}":
            return registration, str(reference["name"])
    return None


def reconcile_owner(body: Mapping[str, Any]) -> None:
    """Reconcile the resource that owns the child ``body`` (gone owners are ignored)."""
    found = owner_registration(body)
    if found is None:
        return
    registration, name = found
    info = registration.info
    namespace = body["metadata"]["namespace"]
    try:
        owner = client.CustomObjectsApi(current().api).get_namespaced_custom_object(
            info.group, info.version, namespace, info.plural, name
        )
    except ApiException as error:
        if error.status == 404:
            return
        raise
    owner = cast(dict[str, Any], owner)
    if deletion_time(owner) is None:
        reconcile_now(registration, owner, wait=CHILD_WAIT_SECONDS)


CHILD_PLURALS = ("rayservices", "rayjobs")
"""The KubeRay kinds the operator creates (RayClusters belong to RayServices, not to it)."""


def watch_children() -> None:
    """Reconcile a resource as soon as one of its KubeRay children changes (the children
    carry ``app.kubernetes.io/managed-by: modelfleet``); the initial listing is left to
    kopf's resume handlers."""

    def on_child_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type is not None:
            reconcile_owner(body)

    for plural in CHILD_PLURALS:
        kopf.on.event(
            "ray.io",
            "v1",
            plural,
            id=f"owner-of-{plural}",
            labels={"app.kubernetes.io/managed-by": "modelfleet"},
        )(on_child_event)
