"""The generated CRDs: no drift, structural, documented, with the promised UX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelfleet.api.crdgen import build_crd, find_drift, main, render_all, to_structural
from modelfleet.api.registry import KINDS, KindInfo

CRDS = Path(__file__).resolve().parents[2] / "crds"
FORBIDDEN = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "default", "const"}


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


def test_bounds_and_enums_reach_the_schema() -> None:
    spec = _root(KINDS[0])["properties"]["spec"]["properties"]
    rank = spec["clients"]["items"]["properties"]["rank"]
    assert (rank["type"], rank["minimum"], rank["maximum"]) == ("integer", 1, 256)
    assert spec["aggregation"]["properties"]["method"]["enum"] == ["flora", "fedavg"]
    assert spec["clients"]["maxItems"] == 1000
    assert set(spec) >= {"baseModel", "clients", "output"}


def test_optional_union_folds_into_its_type() -> None:
    schema = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "description": "d"}
    assert to_structural(schema, {}) == {"type": "integer", "description": "d", "minimum": 1}
    with pytest.raises(ValueError, match="not structural"):
        to_structural({"anyOf": [{"type": "integer"}, {"type": "string"}]}, {})


def test_peering_crds_are_rendered() -> None:
    assert "kopf.dev_peerings.yaml" in render_all()
