"""FusionJob and FedJob planning against a cluster inventory (the NIC-aware wiring)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.api.fusionjob import FusionJobSpec, FusionJobStatus
from modelfleet.core.workload import HOSTNAME_LABEL, Blocked, Observation, WorkloadState
from modelfleet.federated.plan import plan_fedjob
from modelfleet.fusion.plan import compute_fusionjob_status, plan_fusionjob
from modelfleet.scheduling.inventory import describe_node, read_inventory

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLUSTER = read_inventory(
    [
        *(
            describe_node(f"h100-a{i}", "NVIDIA-H100-80GB-HBM3", 8, "infiniband", "ib-a")
            for i in range(2)
        ),
        *(
            describe_node(f"a100-{i}", "NVIDIA-A100-SXM4-80GB", 8, "roce", "roce-1")
            for i in range(2)
        ),
        describe_node("l4-0", "NVIDIA-L4", 8),
    ]
)


def _fusion(**changes: Any) -> FusionJobSpec:
    spec: dict[str, Any] = {
        "sources": [{"name": "a", "uri": "builtin://a"}],
        "target": {
            "uri": "builtin://t",
            "architecture": {"layers": 40, "hiddenSize": 5120, "parametersBillions": 13},
        },
        "data": {"uri": "s3://d"},
        "training": {"maxSeqLen": 4096, "globalBatchSize": 32},
        "resources": [{"gpuType": "H100", "count": 16}, {"gpuType": "A100-80GB", "count": 16}],
        "output": {"uri": "s3://o"},
    }
    spec.update(changes)
    return FusionJobSpec.model_validate(spec)


def test_fusion_is_placed_and_pinned_to_the_planned_nodes() -> None:
    workload = plan_fusionjob("fuse", _fusion(), CLUSTER)
    assert not isinstance(workload, Blocked)
    pinned = {
        dict(g.node_selector)[HOSTNAME_LABEL]: g.gpus_per_worker for g in workload.worker_groups
    }
    assert set(pinned) <= {"h100-a0", "h100-a1", "a100-0", "a100-1"}
    assert all(g.replicas == 1 for g in workload.worker_groups)
    summary = workload.config["placement"]
    assert summary["strategy"] == "nic-aware" and summary["gpus"] == sum(pinned.values())
    assert sum(summary["layersPerStage"]) == 40
    assert len(summary["rankNodes"]) == summary["gpus"]
    seen = Observation(WorkloadState.PENDING, "RayJobStarting")
    status = compute_fusionjob_status(_fusion(), workload, seen, FusionJobStatus(), 1, NOW)
    assert status.placement is not None and status.placement.layout == summary["layout"]
    assert status.placement.expected_step_seconds > 0
    assert {g.domain for g in status.placement.groups} <= {"ib-a", "roce-1"}


def test_too_big_a_model_is_unschedulable_with_the_numbers() -> None:
    huge = {"layers": 120, "hiddenSize": 16384, "parametersBillions": 1000}
    spec = _fusion(target={"uri": "builtin://t", "architecture": huge})
    blocked = plan_fusionjob("fuse", spec, CLUSTER)
    assert isinstance(blocked, Blocked) and blocked.reason == "Unschedulable"
    assert "GiB per GPU" in blocked.message


def test_more_gpus_than_the_cluster_has() -> None:
    spec = _fusion(resources=[{"gpuType": "H100", "count": 64}])
    blocked = plan_fusionjob("fuse", spec, CLUSTER)
    assert isinstance(blocked, Blocked)
    assert blocked.message.startswith("spec.resources[0] asks for 64 H100 GPU(s)")
    assert "offer 16" in blocked.message


def test_without_inventory_or_architecture_workers_group_by_type() -> None:
    for spec, inventory in ((_fusion(), None), (_fusion(target={"uri": "builtin://t"}), CLUSTER)):
        workload = plan_fusionjob("fuse", spec, inventory)
        assert not isinstance(workload, Blocked) and "placement" not in workload.config
        assert [(g.gpu_type, g.replicas) for g in workload.worker_groups] == [
            ("H100", 16),
            ("A100-80GB", 16),
        ]


def test_fedjob_client_that_no_node_can_host() -> None:
    spec = FedJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://m"},
            "clients": [
                {"name": "ok", "datasetUri": "s3://a", "resources": {"gpuType": "L4", "count": 4}},
                {
                    "name": "big",
                    "datasetUri": "s3://b",
                    "resources": {"gpuType": "H100", "count": 16},
                },
            ],
            "output": {"uri": "s3://o"},
        }
    )
    blocked = plan_fedjob("fed", spec, CLUSTER)
    assert isinstance(blocked, Blocked)
    assert blocked.message == (
        "spec.clients[1] (big) needs 16 H100 GPU(s) on one node; the largest H100 node has 8"
    )
    assert not isinstance(plan_fedjob("fed", spec, None), Blocked)
