"""The Helm chart against the envtest API server: install, upgrade, uninstall.

No kubelet or controller-manager runs here, so pods never start: the tests assert on
the objects the API server accepted and stores, not on pod readiness.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import ROOT, Kube
from modelfleet.devcluster import LocalCluster
from modelfleet.devcluster.tools import find_tool

pytestmark = [pytest.mark.envtest, pytest.mark.slow]
CHART = ROOT / "charts" / "modelfleet"
RELEASE, NS = "mf-e2e", "modelfleet-e2e"
FULLNAME = f"{RELEASE}-modelfleet"
OLD_COLUMN = "Ready (as in an older chart)"


class Helm:
    def __init__(self, cluster: LocalCluster) -> None:
        self.kubeconfig = str(cluster.kubeconfig)

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            [find_tool("helm"), f"--kubeconfig={self.kubeconfig}", f"--namespace={NS}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster) -> Iterator[Helm]:
    run = Helm(cluster)
    yield run
    # Leave no webhook configuration or RBAC behind for the other tests, even on failure.
    subprocess.run(
        [
            find_tool("helm"),
            f"--kubeconfig={run.kubeconfig}",
            f"--namespace={NS}",
            "uninstall",
            RELEASE,
        ],
        capture_output=True,
        check=False,
    )


@pytest.fixture(scope="module")
def old_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart as an older release would have had it: one CRD printer column differs."""
    chart = tmp_path_factory.mktemp("old") / "modelfleet"
    shutil.copytree(CHART, chart)
    crd = chart / "files" / "crds" / "modelfleet.io_fedjobs.yaml"
    text = crd.read_text()
    assert "      description: Ready\n" in text
    crd.write_text(text.replace("      description: Ready\n", f"      description: {OLD_COLUMN}\n"))
    return chart


def _crd(kube: Kube, name: str) -> dict[str, Any]:
    return dict(kube.get("crd", name))


def _ready_column(kube: Kube) -> str:
    columns = _crd(kube, "fedjobs.modelfleet.io")["spec"]["versions"][0]["additionalPrinterColumns"]
    return str(next(c for c in columns if c["name"] == "Ready")["description"])


def _operator_args(kube: Kube) -> list[str]:
    deployment = kube.get("deployment", FULLNAME, "-n", NS)
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def _release_objects(kube: Kube) -> list[str]:
    """Every object of the release, of every listable kind, CRDs included."""
    kinds = kube("api-resources", "--verbs=list", "-o", "name").split()
    listed = kube(
        "get", ",".join(kinds), "-A", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
    )
    return sorted(listed.split())


def test_install_upgrade_uninstall(kube: Kube, helm: Helm, old_chart: Path) -> None:
    # The session's CRDs were applied with kubectl: the release takes them over.
    helm(
        "install",
        RELEASE,
        str(old_chart),
        "--create-namespace",
        "--take-ownership",
        "--force-conflicts",
    )
    deployment = kube.get("deployment", FULLNAME, "-n", NS)
    assert deployment["spec"]["replicas"] == 2
    assert "--resync-seconds=30" in _operator_args(kube)
    assert _ready_column(kube) == OLD_COLUMN
    for kind, name in [
        ("serviceaccount", FULLNAME),
        ("service", f"{FULLNAME}-metrics"),
        ("service", f"{FULLNAME}-webhook"),
        ("configmap", f"{FULLNAME}-dashboard"),
    ]:
        kube.get(kind, name, "-n", NS)
    role = kube.get("clusterrole", FULLNAME)
    assert {g for rule in role["rules"] for g in rule["apiGroups"]} >= {"modelfleet.io", "ray.io"}
    binding = kube.get("clusterrolebinding", FULLNAME)
    assert binding["subjects"][0]["name"] == FULLNAME

    secret = kube.get("secret", f"{FULLNAME}-webhook-tls", "-n", NS)
    config = kube.get("validatingwebhookconfiguration", FULLNAME)
    assert len(config["webhooks"]) == 4
    for webhook in config["webhooks"]:
        assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert webhook["clientConfig"]["service"]["name"] == f"{FULLNAME}-webhook"

    helm("upgrade", RELEASE, str(CHART), "--set=operator.resyncSeconds=45")
    assert "--resync-seconds=45" in _operator_args(kube)
    # The CRDs are templates, so the upgrade brought them to this chart's version.
    assert _ready_column(kube) == "Ready"
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        for generated in yaml.safe_load_all(path.read_text()):
            live = _crd(kube, generated["metadata"]["name"])
            assert live["spec"]["versions"] == generated["spec"]["versions"], path.name
            assert live["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The upgrade reused the certificate (lookup), so the caBundle still matches it.
    assert kube.get("secret", f"{FULLNAME}-webhook-tls", "-n", NS)["data"] == secret["data"]
    config = kube.get("validatingwebhookconfiguration", FULLNAME)
    assert {w["clientConfig"]["caBundle"] for w in config["webhooks"]} == {secret["data"]["ca.crt"]}
    history = json.loads(helm("history", RELEASE, "-o", "json"))
    assert [entry["revision"] for entry in history] == [1, 2]

    helm("uninstall", RELEASE)
    remaining = _release_objects(kube)
    assert remaining, "the CRDs must stay"
    assert all(name.startswith("customresourcedefinition") for name in remaining), remaining
    assert len(remaining) == 6
    assert json.loads(helm("list", "-o", "json")) == []
