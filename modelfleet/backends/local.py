"""The embedded default: workloads run on a Ray on this machine.

Services (ModelPools) are deployed as Ray Serve applications by
:class:`~modelfleet.backends.local_serve.LocalServe`; FedJobs run as Flower
federations of local processes (:class:`~modelfleet.backends.local_fedjobs.LocalFedJobs`).
Other jobs run locally only when their runtime module ships in this install; until
then the backend says which module is missing instead of pretending.
"""

from __future__ import annotations

import importlib.util

from modelfleet.backends.base import Owner
from modelfleet.backends.local_fedjobs import LocalFedJobs
from modelfleet.backends.local_serve import LocalServe, ServeSettings
from modelfleet.backends.model_fetch import SecretReader
from modelfleet.core.workload import (
    ApplyResult,
    Observation,
    Workload,
    WorkloadKind,
    WorkloadState,
)
from modelfleet.federated.plan import ENTRYPOINT as FEDERATED_ENTRYPOINT
from modelfleet.scheduling.inventory import Inventory

RUNTIME_NOT_AVAILABLE = "RuntimeNotAvailable"


def runtime_available(entrypoint: str) -> bool:
    """Whether the workload's runtime module can be imported here."""
    try:
        return importlib.util.find_spec(entrypoint) is not None
    except ModuleNotFoundError:
        return False


class LocalBackend:
    name = "local"

    def __init__(
        self, serve_settings: ServeSettings | None = None, read_secret: SecretReader | None = None
    ) -> None:
        self.serve = LocalServe(serve_settings or ServeSettings(), read_secret)
        self.fedjobs = LocalFedJobs()

    def inventory(self) -> Inventory | None:
        """Everything runs on this machine: there are no nodes to choose between."""
        return None

    def apply(self, owner: Owner, workload: Workload) -> ApplyResult:
        """Deploy services; jobs have nothing to start yet, and their observation says so."""
        if workload.kind is WorkloadKind.SERVICE:
            return self.serve.apply(owner, workload)
        if workload.entrypoint == FEDERATED_ENTRYPOINT:
            return self.fedjobs.apply(owner, workload)
        return ApplyResult.SKIPPED

    def observe(self, owner: Owner, workload: Workload) -> Observation:
        if workload.kind is WorkloadKind.SERVICE:
            return self.serve.observe(owner, workload)
        if workload.entrypoint == FEDERATED_ENTRYPOINT:
            return self.fedjobs.observe(owner, workload)
        if runtime_available(workload.entrypoint):
            return Observation(
                WorkloadState.UNAVAILABLE,
                "LocalRunNotSupported",
                f"{workload.entrypoint} is installed but the local backend cannot start "
                f"{workload.kind.value} workloads yet; run the operator with --backend=kuberay",
            )
        return Observation(
            WorkloadState.UNAVAILABLE,
            RUNTIME_NOT_AVAILABLE,
            f"the spec is valid and planned as {workload.kind.value} {workload.name} with "
            f"{len(workload.worker_groups)} worker group(s), but its runtime "
            f"({workload.entrypoint}) is not part of this release, so the local backend "
            f"cannot run it yet",
        )

    def release(self, owner: Owner, workload_name: str) -> None:
        """Nothing outside Kubernetes collects a local service, so delete it here."""
        self.serve.delete(owner, workload_name)
        self.fedjobs.delete(owner)
