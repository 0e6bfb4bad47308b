"""Plan a ModelPool: which GPU types its replicas run on, and its status. Pure, no I/O."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from modelfleet.api.modelpool import GpuOffer, ModelPoolSpec, ModelPoolStatus, ReplicaCount
from modelfleet.artifacts.uri import parse_artifact_uri
from modelfleet.core.names import child_name
from modelfleet.core.status import compute_workload_status
from modelfleet.core.workload import (
    CPU,
    Blocked,
    Observation,
    WorkerGroup,
    Workload,
    WorkloadKind,
    distribute_ready,
    gpu_selector,
    worker_group_name,
    workload_selector,
)

ENTRYPOINT = "modelfleet.serving.app"
OPTIONS_KEY = "servingOptions"
"""Optional key next to the spec fields in the app's build args: serving options of the
backend (the local backend sets replica CPUs), not of the user's spec."""


def gpus_per_replica(spec: ModelPoolSpec) -> int:
    """Every replica hosts every model of the pool, each with its tensor-parallel GPUs."""
    return sum(model.tensor_parallel for model in spec.models)


def _units(gpu_type: str, gpus: int) -> int:
    """Priced units one replica takes: CPU offers are priced per replica, GPU offers per GPU."""
    return 1 if gpu_type == CPU else gpus


def _capacity(offer: GpuOffer, gpus: int) -> int:
    """Replicas an offer can hold."""
    return offer.available // _units(offer.gpu_type, gpus)


def assign_replicas(replicas: int, offers: list[GpuOffer], gpus: int) -> dict[str, int] | Blocked:
    """Place identical replicas on the types cheapest per replica first, within availability.

    All replicas are alike, so filling the offer with the lowest cost per
    replica before the next is the least-cost placement (an exchange argument:
    moving a replica to a pricier offer never lowers cost).
    """
    placed: dict[str, int] = {}
    left = replicas
    by_price = sorted(
        offers, key=lambda o: (o.price_per_hour * _units(o.gpu_type, gpus), o.gpu_type)
    )
    for offer in by_price:
        take = min(left, _capacity(offer, gpus))
        if take:
            placed[offer.gpu_type] = take
            left -= take
    if left:
        room = sum(_capacity(o, gpus) for o in offers)
        return Blocked(
            "Unschedulable",
            f"spec.replicas={replicas} needs {replicas * gpus} GPU(s) at {gpus} per replica, but "
            f"spec.gpuTypes has room for {room} replica(s); add availability or lower replicas",
        )
    return placed


def hourly_cost(placed: dict[str, int], offers: list[GpuOffer], gpus: int) -> Decimal:
    """What the placed replicas cost per hour (CPU replicas are priced per replica), exact:
    prices are decimals, so the sum carries no float rounding."""
    price = {offer.gpu_type: offer.price_per_hour for offer in offers}
    return sum(
        (count * price[gpu_type] * _units(gpu_type, gpus) for gpu_type, count in placed.items()),
        Decimal(0),
    )


def plan_modelpool(name: str, spec: ModelPoolSpec) -> Workload | Blocked:
    """A Ray Serve service with one worker group per GPU type of ``spec.gpuTypes``, in
    their order, those without replicas at 0: scaling changes only replica counts, which
    KubeRay applies to the running cluster instead of starting a new one."""
    gpus = gpus_per_replica(spec)
    placed = assign_replicas(spec.replicas, spec.gpu_types, gpus)
    if isinstance(placed, Blocked):
        return placed
    groups = tuple(
        WorkerGroup(
            name=worker_group_name(i, offer.gpu_type),
            gpu_type=offer.gpu_type,
            replicas=placed.get(offer.gpu_type, 0),
            gpus_per_worker=0 if offer.gpu_type == CPU else gpus,
            node_selector=gpu_selector(offer.gpu_type),
        )
        for i, offer in enumerate(spec.gpu_types)
    )
    return Workload(
        name=child_name(name, "serve"),
        kind=WorkloadKind.SERVICE,
        entrypoint=ENTRYPOINT,
        config=spec.to_wire(),
        worker_groups=groups,
        credential_secrets=tuple(
            sorted({m.credentials_secret for m in spec.models if m.credentials_secret})
        ),
        claims=artifact_claims(spec),
        api_keys_secret=spec.auth.secret_name or "",
        pod=spec.pod,
    )


def artifact_claims(spec: ModelPoolSpec) -> tuple[str, ...]:
    """The PersistentVolumeClaims that the pool's pvc:// models and adapters live on."""
    claims = set()
    for index, model in enumerate(spec.models):
        uris = [(model.uri, f"spec.models[{index}].uri")] + [
            (a.uri, f"spec.models[{index}].adapters[{j}].uri") for j, a in enumerate(model.adapters)
        ]
        for uri, field in uris:
            if uri.startswith("pvc://"):
                claims.add(parse_artifact_uri(uri, field).name)
    return tuple(sorted(claims))


def compute_modelpool_status(
    spec: ModelPoolSpec,
    workload: Workload,
    observation: Observation,
    previous: ModelPoolStatus,
    generation: int,
    now: datetime,
) -> ModelPoolStatus:
    """Ready replicas by model and GPU type, what they cost, migrations, conditions, and
    the selector of the pool's pods (the scale subresource's, for autoscalers)."""
    ready = observation.ready_replicas
    total = sum(ready.values())
    return compute_workload_status(
        workload,
        observation,
        previous,
        generation,
        now,
        replicas=total,
        replicas_by_gpu_type=replicas_by_model(spec, workload, observation, total),
        endpoint=observation.endpoint,
        cost_per_hour=hourly_cost(ready, spec.gpu_types, gpus_per_replica(spec)),
        migrations=observation.migrations,
        slo_attainment=observation.slo_attainment,
        selector=workload_selector(workload.name),
    )


def replicas_by_model(
    spec: ModelPoolSpec, workload: Workload, observation: Observation, total: int
) -> list[ReplicaCount]:
    """Each model's ready replicas spread over the GPU types it is placed on (the groups
    of the other offered types stay at 0 and are left out); where the backend cannot tell
    models apart, every model counts as ready on every ready replica."""
    placed = tuple(group for group in workload.worker_groups if group.replicas)
    counts = [
        ReplicaCount(gpu_type=gpu_type, model=model.name, replicas=n)
        for model in spec.models
        for gpu_type, n in distribute_ready(
            placed, observation.model_replicas.get(model.name, total)
        ).items()
    ]
    return sorted(counts, key=lambda c: (c.gpu_type, c.model))
