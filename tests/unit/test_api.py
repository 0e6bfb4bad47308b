"""The API models: examples parse, bad input is rejected with the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelfleet.api.errors import format_validation_error
from modelfleet.api.fedjob import FedJobSpec, FedJobStatus
from modelfleet.api.fusionjob import FusionJobSpec
from modelfleet.api.modelpool import ModelPoolSpec, ModelPoolStatus
from modelfleet.api.registry import KINDS, kind_by_name
from modelfleet.api.routingpolicy import RoutingPolicySpec

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
    message = _message(FedJobSpec, _fedjob(aggregation={"method": "fedavg"}))
    assert message.startswith("spec.aggregation.method: fedavg")
    assert "['a']" in message and "use method: flora" in message


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
    assert "spec.data is required with method=distill" in _message(FusionJobSpec, base)
    merge = {**base, "method": "merge", "merge": {"strategy": "ties"}}
    assert "spec.merge.baseUri is required with strategy=ties" in _message(FusionJobSpec, merge)
    both = {**base, "data": {"uri": "s3://d", "synthetic": {"domains": ["math"]}}}
    assert "set exactly one of uri or synthetic" in _message(FusionJobSpec, both)
    fixed = {**base, "data": {"uri": "s3://d"}, "training": {"sequenceParallel": {"mode": "fixed"}}}
    assert "sequenceParallel.degree is required" in _message(FusionJobSpec, fixed)
    FusionJobSpec.model_validate({**base, "method": "merge"})


def test_modelpool_rules() -> None:
    base = {"models": [{"name": "m", "uri": "builtin://m"}], "auth": OPEN}
    bounds = {**base, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}
    assert "minReplicas=5 exceeds maxReplicas=2" in _message(ModelPoolSpec, bounds)
    zero = {**base, "autoscaling": {"minReplicas": 0}}
    assert "needs scaleToZero: true" in _message(ModelPoolSpec, zero)
    nothing = {**base, "gpuTypes": [{"name": "L4", "pricePerHour": 1, "available": 0}]}
    assert "at least one type needs available > 0" in _message(ModelPoolSpec, nothing)


def test_routing_references_must_resolve() -> None:
    targets = [{"name": "small", "pool": "p", "model": "m"}]
    message = _message(RoutingPolicySpec, {"auth": OPEN, "targets": targets, "fallback": "big"})
    assert message == "spec.fallback: 'big' is not one of spec.targets ['small']"
    cascade = {"auth": OPEN, "targets": targets, "strategy": "cascade"}
    assert "spec.cascade is required" in _message(RoutingPolicySpec, cascade)
    budgets = [{"difficulty": "easy", "maxTokens": 1}, {"difficulty": "easy", "maxTokens": 2}]
    thinking = [{**targets[0], "reasoning": True}]
    assert "one entry per difficulty" in _message(
        RoutingPolicySpec, {"auth": OPEN, "targets": thinking, "thinkingBudgets": budgets}
    )
    assert "no target has reasoning: true" in _message(
        RoutingPolicySpec, {"auth": OPEN, "targets": targets, "thinkingBudgets": budgets[:1]}
    )
    capped = {"auth": OPEN, "targets": targets, "objectives": {"maxCostPer1kTokens": 0.5}}
    assert "costPer1kTokens is required with objectives.maxCostPer1kTokens" in _message(
        RoutingPolicySpec, capped
    )
    priced = [{**targets[0], "costPer1kTokens": 0.1}]
    alias = RoutingPolicySpec.model_validate({**capped, "targets": priced})
    assert alias.to_wire()["objectives"] == {"minQuality": 0.0, "maxCostPer1kTokens": 0.5}


def test_routing_strategies_refuse_what_they_cannot_use() -> None:
    targets = [{"name": "small", "pool": "p", "model": "m"}]
    assert "costPer1kTokens is required with strategy=cost-of-pass; missing on ['small']" in (
        _message(RoutingPolicySpec, {"auth": OPEN, "targets": targets, "strategy": "cost-of-pass"})
    )
    assert "spec.queryClusters is required with strategy=capability" in _message(
        RoutingPolicySpec, {"auth": OPEN, "targets": targets, "strategy": "capability"}
    )
    cascade = {"order": ["small", "small"]}
    assert "spec.cascade is only read with strategy=cascade" in _message(
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
        RoutingPolicySpec.model_validate({"auth": OPEN, "targets": targets}).strategy == "weighted"
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
    assert [(g.name, g.price_per_hour) for g in pool.gpu_types] == [("cpu", 0.0)]
    fusion = FusionJobSpec.model_validate(
        {
            "sources": [{"name": "a", "uri": "builtin://a"}],
            "target": {"uri": "builtin://t"},
            "method": "merge",
            "output": {"uri": "s3://o"},
        }
    )
    assert fusion.resources[0].gpu_type == "cpu"
