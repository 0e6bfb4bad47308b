"""Peering priorities derived from pod names, and the peering objects the operator creates."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controllers import probes

ROOT = Path(__file__).resolve().parents[2]
NO_API: Any = None  # the fake CustomObjectsApi below never uses the client


def operator_main() -> ModuleType:
    """operator/main.py, loaded under another name: ``operator`` is a standard module."""
    spec = importlib.util.spec_from_file_location(
        "modelfleet_operator_main", ROOT / "operator" / "main.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auto_priority_is_stable_and_differs_across_pod_names() -> None:
    names = [f"mf-modelfleet-7d9c{i}-x{i}" for i in range(200)]
    priorities = [probes.auto_priority(name) for name in names]
    assert priorities == [probes.auto_priority(name) for name in names]
    assert len(set(priorities)) == len(names)
    assert all(0 <= p < 2**31 for p in priorities)


def test_auto_priority_reads_pod_name_then_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "mf-modelfleet-abc")
    assert probes.auto_priority() == probes.auto_priority("mf-modelfleet-abc")
    monkeypatch.delenv("POD_NAME")
    assert probes.auto_priority() == probes.auto_priority(socket.gethostname())


def test_priority_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    main = operator_main()
    monkeypatch.setenv("POD_NAME", "mf-modelfleet-abc")
    assert main.parse_args(["--priority", "7"]).priority == 7
    assert main.parse_args(["--priority", "auto"]).priority == probes.auto_priority()
    monkeypatch.setenv("MODELFLEET_PRIORITY", "auto")
    assert main.parse_args([]).priority == probes.auto_priority()
    monkeypatch.delenv("MODELFLEET_PRIORITY")
    assert main.parse_args([]).priority == 0
    with pytest.raises(SystemExit):
        main.parse_args(["--priority", "high"])


class FakeObjects:
    """CustomObjectsApi's create calls, answering 409 for objects that exist."""

    def __init__(self, existing: set[tuple[str | None, str]], fail: int | None = None) -> None:
        self.existing = existing
        self.fail = fail
        self.created: list[tuple[str | None, str, dict[str, Any]]] = []

    def _create(self, namespace: str | None, plural: str, body: dict[str, Any]) -> None:
        if self.fail:
            raise ApiException(status=self.fail)
        if (namespace, body["metadata"]["name"]) in self.existing:
            raise ApiException(status=409)
        self.created.append((namespace, plural, body))

    def create_cluster_custom_object(
        self, group: str, version: str, plural: str, body: dict[str, Any]
    ) -> None:
        assert (group, version) == ("kopf.dev", "v1")
        self._create(None, plural, body)

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> None:
        assert (group, version) == ("kopf.dev", "v1")
        self._create(namespace, plural, body)


def use(monkeypatch: pytest.MonkeyPatch, objects: FakeObjects) -> None:
    monkeypatch.setattr(probes.client, "CustomObjectsApi", lambda api: objects)


def test_cluster_wide_peering(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = FakeObjects(existing=set())
    use(monkeypatch, objects)
    probes.ensure_peering(NO_API, "mf")
    assert [(ns, plural, body["kind"]) for ns, plural, body in objects.created] == [
        (None, "clusterkopfpeerings", "ClusterKopfPeering")
    ]


def test_a_peering_in_each_watched_namespace_existing_ones_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = FakeObjects(existing={("team-a", "mf")})
    use(monkeypatch, objects)
    probes.ensure_peering(NO_API, "mf", ["team-a", "team-b", "team-c"])
    assert [(ns, plural, body["kind"]) for ns, plural, body in objects.created] == [
        ("team-b", "kopfpeerings", "KopfPeering"),
        ("team-c", "kopfpeerings", "KopfPeering"),
    ]
    assert all(body["metadata"] == {"name": "mf"} for _, _, body in objects.created)


def test_peering_errors_other_than_conflict_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, FakeObjects(existing=set(), fail=404))
    with pytest.raises(ApiException):
        probes.ensure_peering(NO_API, "mf", ["missing"])


def test_namespace_patterns_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = FakeObjects(existing=set())
    use(monkeypatch, objects)
    with pytest.raises(ValueError, match="team-"):
        probes.ensure_peering(NO_API, "mf", ["team-*", "prod"])
    assert not objects.created
