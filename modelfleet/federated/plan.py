"""Plan the workload that runs a FedJob: a pure function, no I/O."""

from __future__ import annotations

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.core.names import child_name
from modelfleet.core.workload import Workload, WorkloadKind, group_workers

ENTRYPOINT = "modelfleet.federated.runtime"
SITE_LABEL = "modelfleet.io/site"


def plan_fedjob(name: str, spec: FedJobSpec) -> Workload:
    """One Ray job whose workers are grouped by the clients' hardware and site."""
    requests = []
    for client in spec.clients:
        selector = dict(client.node_selector)
        if client.site:
            selector.setdefault(SITE_LABEL, client.site)
        requests.append(
            (client.resources.gpu_type, client.resources.gpus, tuple(sorted(selector.items())))
        )
    return Workload(
        name=child_name(name, "fed"),
        kind=WorkloadKind.JOB,
        entrypoint=ENTRYPOINT,
        config=spec.to_wire(),
        worker_groups=group_workers(requests),
    )
