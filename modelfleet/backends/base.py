"""The interface every backend implements, and the owner a workload belongs to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from modelfleet.core.workload import ApplyResult, Observation, Workload
from modelfleet.scheduling.inventory import Inventory


@dataclass(frozen=True)
class Owner:
    """The custom resource a workload belongs to."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """An ownerReference, so children are garbage-collected with their owner."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def spec_hash(spec: dict[str, Any]) -> str:
    """A short digest of a rendered spec: equal digests mean the running child is current,
    so a repeated apply changes nothing."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class Backend(Protocol):
    """Runs workloads. ``apply`` must be idempotent: it is repeated on every reconcile."""

    name: str

    def apply(self, owner: Owner, workload: Workload) -> ApplyResult: ...

    def observe(self, owner: Owner, workload: Workload) -> Observation: ...

    def release(self, owner: Owner, workload_name: str) -> None:
        """Free what the workload holds outside Kubernetes once its owner is deleted."""
        ...

    def inventory(self) -> Inventory | None:
        """The GPU nodes workloads can be placed on, or None where placement is moot."""
        ...
