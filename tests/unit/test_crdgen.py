"""The generated CRDs: no drift, structural, documented, with the promised UX."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.api.crdgen import build_crd, find_drift, main, render_all, to_structural
from modelfleet.api.modelpool import Autoscaling, ModelPoolSpec
from modelfleet.api.registry import KINDS, KindInfo, kind_by_name

CRDS = Path(__file__).resolve().parents[2] / "crds"
FORBIDDEN = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": int | float,
    "boolean": bool,
}


def _root(info: KindInfo) -> dict[str, Any]:
    version = build_crd(info)["spec"]["versions"][0]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_checked_in_crds_match_the_models() -> None:
    assert find_drift(CRDS) == [], "run `make crds`"


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--check"]) == 1
    assert "make crds" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0
    (tmp_path / "stale.yaml").write_text("x: 1\n")
    assert find_drift(tmp_path) == ["stale.yaml"]


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(info: KindInfo) -> None:
    for path, node in _walk(_root(info), info.kind):
        assert not FORBIDDEN & node.keys(), f"{path} has {FORBIDDEN & node.keys()}"
        assert "type" in node or path == info.kind, f"{path} has no type"
        assert node.get("additionalProperties", {}) is not False
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_every_field_is_documented(info: KindInfo) -> None:
    undocumented = [
        path
        for path, node in _walk(_root(info), info.kind)
        if not path.endswith(("[]", "{}", ".metadata")) and not node.get("description")
    ]
    assert undocumented == []


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_names_columns_and_subresources(info: KindInfo) -> None:
    crd = build_crd(info)
    names = crd["spec"]["names"]
    assert names["categories"] == ["modelfleet"] and names["shortNames"]
    version = crd["spec"]["versions"][0]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:2] == ["Ready", "Reason"] and columns[-1] == "Age"
    assert version["subresources"]["status"] == {}
    assert ("scale" in version["subresources"]) == (info.kind == "ModelPool")


def test_scale_subresource_points_autoscalers_at_the_pods() -> None:
    info = kind_by_name("ModelPool")
    scale = build_crd(info)["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert _root(info)["properties"]["status"]["properties"]["selector"]["type"] == "string"


def _conforms(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """What of ``value`` breaks ``node``: the checks the API server makes of a default."""
    kind = node.get("type")
    if not isinstance(value, TYPES[kind]) or (isinstance(value, bool) and kind != "boolean"):
        return [f"{path}: {value!r} is not {kind}"]
    wrong = (
        [f"{path}: {value!r} not in {node['enum']}"]
        if value not in node.get("enum", [value])
        else []
    )
    if "pattern" in node and not re.search(node["pattern"], value):
        wrong.append(f"{path}: {value!r} does not match {node['pattern']}")
    low, high = node.get("minimum"), node.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        wrong.append(f"{path}: {value!r} out of bounds")
    if kind == "object":
        wrong += [f"{path}: misses {key}" for key in node.get("required", []) if key not in value]
        for key, item in value.items():
            if key not in node.get("properties", {}):
                wrong.append(f"{path}.{key}: unknown, would be pruned")
            else:
                wrong += _conforms(item, node["properties"][key], f"{path}.{key}")
    if kind == "array":
        for index, item in enumerate(value):
            wrong += _conforms(item, node["items"], f"{path}[{index}]")
    return wrong


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_defaults_validate_against_their_schema(info: KindInfo) -> None:
    nodes = _walk(_root(info)["properties"]["spec"], f"{info.kind}.spec")
    defaulted = [(path, node) for path, node in nodes if "default" in node]
    assert defaulted, "a spec without any default"
    for path, node in defaulted:
        assert _conforms(node["default"], node, path) == []
    status = _walk(_root(info)["properties"]["status"], f"{info.kind}.status")
    assert [path for path, node in status if "default" in node] == []


def _apply_defaults(value: Any, node: dict[str, Any]) -> Any:
    """What the API server stores for ``value``: absent fields take their schema's
    default, top-down, then defaults apply inside what is there (as apiextensions does)."""
    if isinstance(value, dict) and "properties" in node:
        filled = dict(value)
        for key, child in node["properties"].items():
            if key not in filled and "default" in child:
                filled[key] = copy.deepcopy(child["default"])
        return {
            key: _apply_defaults(item, node["properties"][key])
            if key in node["properties"]
            else item
            for key, item in filled.items()
        }
    if isinstance(value, list) and "items" in node:
        return [_apply_defaults(item, node["items"]) for item in value]
    return value


MINIMAL = {
    "FedJob": {
        "baseModel": {"uri": "builtin://tiny"},
        "clients": [{"name": "a", "datasetUri": "s3://a"}],
        "output": {"uri": "s3://o"},
    },
    "FusionJob": {
        "sources": [{"name": "a", "uri": "builtin://a"}],
        "target": {"uri": "builtin://t"},
        "data": {"uri": "s3://d"},
        "output": {"uri": "s3://o"},
    },
    "ModelPool": {"models": [{"name": "m", "uri": "builtin://m"}], "auth": {"mode": "None"}},
    "RoutingPolicy": {
        "targets": [{"name": "t", "pool": "p", "model": "m"}],
        "auth": {"mode": "None"},
    },
}


def _specs() -> list[Any]:
    """A minimal spec of every kind, then every example (they set fields the minimal
    ones leave out, so defaults inside them apply too)."""
    specs = [
        pytest.param(kind_by_name(kind), spec, id=f"minimal-{kind}")
        for kind, spec in MINIMAL.items()
    ]
    for path in sorted(EXAMPLES.glob("**/*.yaml")):
        document = yaml.safe_load(path.read_text())
        if "invalid" not in path.parts and document["apiVersion"].startswith("modelfleet.io/"):
            info = kind_by_name(document["kind"])
            specs.append(pytest.param(info, document["spec"], id=path.name))
    return specs


@pytest.mark.parametrize(("info", "spec"), _specs())
def test_stored_defaults_are_the_models_defaults(info: KindInfo, spec: dict[str, Any]) -> None:
    stored = _apply_defaults(spec, _root(info)["properties"]["spec"])
    assert stored != spec
    model = info.spec_model.model_validate(spec)
    assert info.spec_model.model_validate(stored) == model
    assert _apply_defaults(model.to_wire(), _root(info)["properties"]["spec"]) == model.to_wire()


def test_a_default_equals_the_model_default() -> None:
    spec = _root(kind_by_name("ModelPool"))["properties"]["spec"]["properties"]
    assert spec["replicas"]["default"] == ModelPoolSpec.model_fields["replicas"].default
    assert spec["autoscaling"]["default"] == Autoscaling().to_wire()
    assert spec["gpuTypes"]["default"] == [{"gpuType": "cpu", "pricePerHour": "0", "available": 8}]
    assert "default" not in spec["autoscaling"]["properties"]["budgetPerHour"]
    assert "default" not in spec["models"]["items"]["properties"]["adapters"]


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_lists_of_named_objects_are_maps(info: KindInfo) -> None:
    for path, node in _walk(_root(info)["properties"]["spec"], info.kind):
        items = node.get("items", {})
        if "name" in items.get("required", []):
            assert node.get("x-kubernetes-list-type") == "map", path
            assert node["x-kubernetes-list-map-keys"] == ["name"], path
        for key in node.get("x-kubernetes-list-map-keys", []):
            assert key in items["required"] or "default" in items["properties"][key], path


def test_bounds_and_enums_reach_the_schema() -> None:
    spec = _root(KINDS[0])["properties"]["spec"]["properties"]
    rank = spec["clients"]["items"]["properties"]["rank"]
    assert (rank["type"], rank["minimum"], rank["maximum"]) == ("integer", 1, 256)
    assert spec["aggregation"]["properties"]["method"]["enum"] == ["FLoRA", "FedAvg"]
    assert spec["clients"]["maxItems"] == 1000
    assert set(spec) >= {"baseModel", "clients", "output"}


def test_optional_union_folds_into_its_type() -> None:
    schema = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "description": "d"}
    assert to_structural(schema, {}) == {"type": "integer", "description": "d", "minimum": 1}
    with pytest.raises(ValueError, match="not structural"):
        to_structural({"anyOf": [{"type": "integer"}, {"type": "string"}]}, {})


def test_peering_crds_are_rendered() -> None:
    assert "kopf.dev_peerings.yaml" in render_all()
