"""The API models: examples parse, bad input is rejected with the field named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelfleet.api.errors import format_validation_error
from modelfleet.api.fedjob import FedJobSpec, FedJobStatus
from modelfleet.api.fusionjob import FusionJobSpec
from modelfleet.api.modelpool import Autoscaling, ModelPoolSpec, ModelPoolStatus
from modelfleet.api.registry import KINDS, kind_by_name
from modelfleet.api.routingpolicy import RoutingPolicySpec
from modelfleet.federated.launch import job_settings
from tests.unit.ray_pods import EVERY_OVERRIDE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OPEN = {"mode": "None"}
"""spec.auth of an endpoint that checks no keys."""


def _fedjob(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "builtin://tiny"},
        "clients": [
            {"name": "a", "datasetUri": "s3://a", "rank": 4},
            {"name": "b", "datasetUri": "s3://b"},
        ],
        "output": {"uri": "s3://out"},
    }
    spec.update(changes)
    return spec


def _message(model: type, spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(spec)  # type: ignore[attr-defined]
    return format_validation_error(caught.value)


OWN_EXAMPLES = [
    path
    for path in sorted(EXAMPLES.glob("*.yaml"))
    if yaml.safe_load(path.read_text())["apiVersion"].startswith("modelfleet.io/")
]
"""The examples of our kinds (the API keys Secret beside them is a core object)."""


@pytest.mark.parametrize("path", OWN_EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    spec = kind_by_name(document["kind"]).spec_model.model_validate(document["spec"])
    assert spec.to_wire()


def test_invalid_examples_are_rejected() -> None:
    for path in sorted((EXAMPLES / "invalid").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        with pytest.raises(ValidationError):
            kind_by_name(document["kind"]).spec_model.model_validate(document["spec"])


def test_wire_form_round_trips_with_camel_case() -> None:
    spec = FedJobSpec.model_validate(_fedjob())
    wire = spec.to_wire()
    assert "baseModel" in wire and "localSteps" in wire
    assert FedJobSpec.model_validate(wire) == spec


def test_field_errors_name_the_path_and_value() -> None:
    message = _message(
        FedJobSpec, _fedjob(clients=[{"name": "a", "datasetUri": "s3://a", "rank": 0}])
    )
    assert message == "spec.clients[0].rank: Input should be greater than or equal to 1 (got 0)"


def test_unknown_fields_are_rejected_not_dropped() -> None:
    message = _message(FedJobSpec, _fedjob(round=3))
    assert "spec.round: Extra inputs are not permitted" in message


def test_missing_required_field_is_named() -> None:
    spec = _fedjob()
    del spec["output"]
    assert _message(FedJobSpec, spec) == "spec.output: Field required"


def test_fedavg_cannot_mix_ranks_and_says_what_to_do() -> None:
    message = _message(FedJobSpec, _fedjob(aggregation={"method": "FedAvg"}))
    assert message.startswith("spec.aggregation.method: FedAvg")
    assert "['a']" in message and "use method: FLoRA" in message


def test_secure_aggregation_runs_with_flora_and_names_what_it_cannot_run_with() -> None:
    secure = {"secureAggregation": True}
    spec = FedJobSpec.model_validate(
        _fedjob(
            baseModel={"uri": "zoo://qwen-tiny"},
            privacy=secure,
            aggregation={"minClients": 2, "roundTimeoutSeconds": 60},
        )
    )
    assert job_settings(spec).secure and job_settings(spec).round_timeout_seconds == 60
    with_dp = {**secure, "differentialPrivacy": {"enabled": True}}
    message = _message(
        FedJobSpec,
        _fedjob(privacy=with_dp, compression={"sparsity": 0.5}, aggregation={"minClients": 2}),
    )
    assert message.startswith(
        "spec.privacy.secureAggregation: not supported with "
        "spec.privacy.differentialPrivacy.enabled, spec.compression;"
    )
    alone = _message(FedJobSpec, _fedjob(privacy=secure))
    assert "set spec.aggregation.minClients to at least 2" in alone


def test_flora_mixes_ranks() -> None:
    spec = FedJobSpec.model_validate(_fedjob())
    assert [spec.client_rank(c) for c in spec.clients] == [4, 8]


def test_min_clients_cannot_exceed_clients_per_round() -> None:
    message = _message(FedJobSpec, _fedjob(aggregation={"minClients": 2, "clientFraction": 0.5}))
    assert "spec.aggregation.minClients=2 exceeds the 1 client(s) sampled per round" in message


def test_duplicate_client_names() -> None:
    clients = [{"name": "a", "datasetUri": "s3://a"}, {"name": "a", "datasetUri": "s3://b"}]
    assert "repeated: ['a']" in _message(FedJobSpec, _fedjob(clients=clients))


def test_fusion_rules() -> None:
    base = {
        "sources": [{"name": "x", "uri": "builtin://x"}],
        "target": {"uri": "builtin://t"},
        "output": {"uri": "s3://o"},
    }
    assert "spec.data is required with method Distill" in _message(FusionJobSpec, base)
    merge = {**base, "method": "Merge", "merge": {"strategy": "TIES"}}
    assert "spec.merge.baseUri is required with strategy TIES" in _message(FusionJobSpec, merge)
    both = {**base, "data": {"uri": "s3://d", "synthetic": {"domains": ["math"]}}}
    assert "set exactly one of uri or synthetic" in _message(FusionJobSpec, both)
    fixed = {**base, "data": {"uri": "s3://d"}, "training": {"sequenceParallel": {"mode": "Fixed"}}}
    assert "sequenceParallel.degree is required" in _message(FusionJobSpec, fixed)
    FusionJobSpec.model_validate({**base, "method": "Merge"})
    gpus = [{"gpuType": "L4", "count": 2}, {"gpuType": "L4", "count": 1}]
    assert "spec.resources: each gpuType may appear once; repeated: ['L4']" in (
        _message(FusionJobSpec, {**base, "method": "Merge", "resources": gpus})
    )


def test_modelpool_rules() -> None:
    base = {"models": [{"name": "m", "uri": "builtin://m"}], "auth": OPEN}
    bounds = {**base, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}
    assert "minReplicas=5 exceeds maxReplicas=2" in _message(ModelPoolSpec, bounds)
    zero = {**base, "autoscaling": {"minReplicas": 0}}
    assert "needs scaleToZero: true" in _message(ModelPoolSpec, zero)
    nothing = {**base, "gpuTypes": [{"gpuType": "L4", "pricePerHour": "1", "available": 0}]}
    assert "at least one type needs available > 0" in _message(ModelPoolSpec, nothing)
    twice = {**base, "gpuTypes": [{"gpuType": "L4", "pricePerHour": "1"}] * 2}
    assert "spec.gpuTypes: each gpuType may appear once; repeated: ['L4']" in (
        _message(ModelPoolSpec, twice)
    )
    free = {**base, "autoscaling": {"budgetPerHour": "0"}}
    assert 'budgetPerHour must be more than "0"' in _message(ModelPoolSpec, free)


@pytest.mark.parametrize("price", [3.5, "3.5e2", "-1", "03.50", "1.0000000001", ""])
def test_money_must_be_a_decimal_string(price: object) -> None:
    spec = {
        "models": [{"name": "m", "uri": "builtin://m"}],
        "auth": OPEN,
        "gpuTypes": [{"gpuType": "L4", "pricePerHour": price}],
    }
    message = _message(ModelPoolSpec, spec)
    assert message.startswith("spec.gpuTypes[0].pricePerHour: give money as a quoted decimal")
    assert 'e.g. "3.50"' in message


def test_money_is_exact_and_keeps_its_digits_on_the_wire() -> None:
    spec = ModelPoolSpec.model_validate(
        {
            "models": [{"name": "m", "uri": "builtin://m"}],
            "auth": OPEN,
            "gpuTypes": [{"gpuType": "L4", "pricePerHour": "0.10"}],
        }
    )
    assert spec.gpu_types[0].price_per_hour * 3 == Decimal("0.30")
    wire = spec.to_wire()
    assert wire["gpuTypes"][0]["pricePerHour"] == "0.10"
    assert ModelPoolSpec.model_validate(wire) == spec
    budget = Autoscaling.model_validate({"budgetPerHour": "0.000000001"})
    assert budget.to_wire()["budgetPerHour"] == "0.000000001"
    assert Autoscaling.model_validate(budget.to_wire()) == budget


def test_autoscaling_is_refused_until_an_autoscaler_runs() -> None:
    base = {"models": [{"name": "m", "uri": "builtin://m"}], "auth": OPEN}
    assert ModelPoolSpec.model_validate(base).autoscaling == Autoscaling()
    explicit_default = {**base, "autoscaling": {"policy": "None", "maxReplicas": 4}}
    assert ModelPoolSpec.model_validate(explicit_default).autoscaling == Autoscaling()
    asked = {**base, "autoscaling": {"policy": "SloCost", "budgetPerHour": "20"}}
    message = _message(ModelPoolSpec, asked)
    assert "spec.autoscaling (policy, budgetPerHour): autoscaling is not supported yet" in message
    assert "set spec.replicas" in message


def test_lists_keyed_by_name_reject_repeats() -> None:
    targets = [{"name": "small", "pool": "p", "model": "m"}]
    clusters = [{"name": "math", "examples": ["What is 1 + 2?"]}]
    profile = {"target": "small", "cluster": "math", "score": 0.5}
    message = _message(
        RoutingPolicySpec,
        {
            "auth": OPEN,
            "targets": targets,
            "queryClusters": clusters,
            "capabilityProfiles": [profile, {**profile, "score": 0.7}],
        },
    )
    assert message == (
        "spec.capabilityProfiles: each target/cluster may appear once; repeated: ['small/math']"
    )
    pool = {"name": "m", "uri": "builtin://m", "adapters": [{"name": "a", "uri": "s3://a"}] * 2}
    assert "names (of models and their adapters) must be unique" in _message(
        ModelPoolSpec, {"models": [pool], "auth": OPEN}
    )


def test_routing_references_must_resolve() -> None:
    targets = [{"name": "small", "pool": "p", "model": "m"}]
    message = _message(RoutingPolicySpec, {"auth": OPEN, "targets": targets, "fallback": "big"})
    assert message == "spec.fallback: 'big' is not one of spec.targets ['small']"
    cascade = {"auth": OPEN, "targets": targets, "strategy": "Cascade"}
    assert "spec.cascade is required" in _message(RoutingPolicySpec, cascade)
    budgets = [{"difficulty": "Easy", "maxTokens": 1}, {"difficulty": "Easy", "maxTokens": 2}]
    thinking = [{**targets[0], "reasoning": True}]
    assert "one entry per difficulty" in _message(
        RoutingPolicySpec, {"auth": OPEN, "targets": thinking, "thinkingBudgets": budgets}
    )
    assert "no target has reasoning: true" in _message(
        RoutingPolicySpec, {"auth": OPEN, "targets": targets, "thinkingBudgets": budgets[:1]}
    )
    capped = {"auth": OPEN, "targets": targets, "objectives": {"maxCostPer1kTokens": "0.5"}}
    assert "costPer1kTokens is required with objectives.maxCostPer1kTokens" in _message(
        RoutingPolicySpec, capped
    )
    priced = [{**targets[0], "costPer1kTokens": "0.1"}]
    alias = RoutingPolicySpec.model_validate({**capped, "targets": priced})
    assert alias.to_wire()["objectives"] == {"minQuality": 0.0, "maxCostPer1kTokens": "0.5"}


def test_routing_strategies_refuse_what_they_cannot_use() -> None:
    targets = [{"name": "small", "pool": "p", "model": "m"}]
    assert "costPer1kTokens is required with strategy CostOfPass; missing on ['small']" in (
        _message(RoutingPolicySpec, {"auth": OPEN, "targets": targets, "strategy": "CostOfPass"})
    )
    assert "spec.queryClusters is required with strategy Capability" in _message(
        RoutingPolicySpec, {"auth": OPEN, "targets": targets, "strategy": "Capability"}
    )
    cascade = {"order": ["small", "small"]}
    assert "spec.cascade is only read with strategy Cascade" in _message(
        RoutingPolicySpec, {"auth": OPEN, "targets": targets, "cascade": cascade}
    )
    clusters = [{"name": "math", "examples": ["What is 1 + 2?"]}]
    profile = [{"target": "small", "cluster": "poetry", "score": 0.5}]
    message = _message(
        RoutingPolicySpec,
        {
            "auth": OPEN,
            "targets": targets,
            "queryClusters": clusters,
            "capabilityProfiles": profile,
        },
    )
    assert message == (
        "spec.capabilityProfiles.cluster: 'poetry' is not one of spec.queryClusters ['math']"
    )
    assert (
        RoutingPolicySpec.model_validate({"auth": OPEN, "targets": targets}).strategy == "Weighted"
    )


def test_status_wire_form_leaves_out_empty_strings() -> None:
    wire = ModelPoolStatus().to_wire()
    assert "endpoint" not in wire and "workload" not in wire
    assert ModelPoolStatus.model_validate(wire).endpoint == ""


def test_status_ignores_fields_it_does_not_know() -> None:
    assert FedJobStatus.model_validate({"round": 2, "futureField": 1}).round == 2


def test_kind_lookup() -> None:
    assert kind_by_name("fj").kind == "FedJob"
    assert kind_by_name("modelpools").scale
    assert {k.kind for k in KINDS} == {"FedJob", "FusionJob", "ModelPool", "RoutingPolicy"}
    with pytest.raises(KeyError, match="unknown kind"):
        kind_by_name("Nope")


def test_defaults_fill_a_minimal_spec() -> None:
    pool = ModelPoolSpec.model_validate(
        {"models": [{"name": "m", "uri": "builtin://m"}], "auth": OPEN}
    )
    assert [(g.gpu_type, g.price_per_hour) for g in pool.gpu_types] == [("cpu", Decimal(0))]
    fusion = FusionJobSpec.model_validate(
        {
            "sources": [{"name": "a", "uri": "builtin://a"}],
            "target": {"uri": "builtin://t"},
            "method": "Merge",
            "output": {"uri": "s3://o"},
        }
    )
    assert fusion.resources[0].gpu_type == "cpu"


@pytest.mark.parametrize("path", OWN_EXAMPLES, ids=lambda p: p.name)
def test_every_kind_takes_pod_overrides(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    spec = {**document["spec"], "pod": EVERY_OVERRIDE}
    parsed = kind_by_name(document["kind"]).spec_model.model_validate(spec)
    assert parsed.to_wire()["pod"] == EVERY_OVERRIDE


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (
            {"resources": {"requests": {"cpu": "2 cores"}}},
            "spec.pod.resources.requests.cpu: String should match pattern",
        ),
        (
            {"resources": {"limits": {"memory": "-1Gi"}}},
            "spec.pod.resources.limits.memory: String should match pattern",
        ),
        (
            {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}},
            "spec.pod.resources.requests.cpu=2 exceeds limits.cpu=1500m; lower the request",
        ),
        (
            {"resources": {"limits": {"nvidia.com/gpu": "2"}}},
            "spec.pod.resources.limits.nvidia.com/gpu: Extra inputs are not permitted",
        ),
        (
            {"tolerations": [{"key": "a", "operator": "In"}]},
            "spec.pod.tolerations[0].operator: Input should be 'Exists' or 'Equal'",
        ),
        (
            {"tolerations": [{"key": "a", "effect": "NoEvict"}]},
            "spec.pod.tolerations[0].effect: Input should be 'NoSchedule', 'PreferNoSchedule'",
        ),
        (
            {"tolerations": [{"value": "x"}]},
            "spec.pod.tolerations[0]: a toleration without key needs operator Exists",
        ),
        (
            {"tolerations": [{"key": "a", "operator": "Exists", "value": "x"}]},
            "spec.pod.tolerations[0]: value must be unset with operator Exists",
        ),
        (
            {"tolerations": [{"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5}]},
            "spec.pod.tolerations[0]: tolerationSeconds needs effect NoExecute",
        ),
        (
            {"serviceAccountName": "Ray_Runner"},
            "spec.pod.serviceAccountName: String should match pattern",
        ),
        (
            {"imagePullSecrets": ["registry", "Bad Name"]},
            "spec.pod.imagePullSecrets[1]: String should match pattern",
        ),
        ({"credentialsSecret": ""}, "spec.pod.credentialsSecret: String should have at least 1"),
        (
            {"affinity": {"nodeAfinity": {}}},
            "spec.pod.affinity: not a core/v1 Affinity: nodeAfinity: Extra inputs are not",
        ),
        (
            {"securityContext": {"privileged": True}},
            "spec.pod.securityContext: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_pod_overrides_are_refused_naming_the_field(pod: dict[str, Any], expected: str) -> None:
    assert _message(FedJobSpec, _fedjob(pod=pod)).startswith(expected)
