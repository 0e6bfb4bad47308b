"""The operator runs under exactly the chart's ServiceAccount and ClusterRole, without a 403.

The chart is installed (RBAC, ServiceAccount, webhook Secret and configuration; the
session's CRDs are used as they are), a token for the ServiceAccount comes from the
TokenRequest API, and the operator process is started as the chart runs it: a kubeconfig
holding only that token, cluster-wide, with peering, serving the webhook (--webhook=external)
with the chart's certificate at the paths the chart registered; then again watching one
namespace, as with operator.watchNamespaces, where it creates a KopfPeering there.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import ROOT, Kube, Operator, create_nodes, namespace, wait_for
from modelfleet.devcluster import LocalCluster
from modelfleet.devcluster.cluster import free_port
from modelfleet.devcluster.tools import find_tool

pytestmark = [pytest.mark.envtest, pytest.mark.slow]
CHART = ROOT / "charts" / "modelfleet"
RELEASE, NS = "mf-rbac", "modelfleet-rbac"
ACCOUNT = f"{RELEASE}-modelfleet"
WORKLOADS = "rbac-workloads"
EXAMPLES = {
    "fedjob/clinical-notes": "FedJob",
    "fusionjob/fuse-chat": "FusionJob",
    "modelpool/chat": "ModelPool",
    "routingpolicy/chat-router": "RoutingPolicy",
}
DENIED = re.compile(r"forbidden|unauthorized|(?<![,.\d])40[13](?!\d)", re.IGNORECASE)


def helm(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("helm"), f"--kubeconfig={cluster.kubeconfig}", f"--namespace={NS}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, kube: Kube, kuberay_crds: None) -> Iterator[str]:
    """The chart installed with Helm, leaving out the CRDs (the session's are used, with
    KubeRay's real ones)."""
    installed = helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "--create-namespace",
        "--set=crds.install=false",
        "--set=operator.peering.installCRDs=false",
        "--set=grafanaDashboard.enabled=false",
    )
    assert installed.returncode == 0, installed.stderr
    yield ACCOUNT
    helm(cluster, "uninstall", RELEASE)


def _token_kubeconfig(cluster: LocalCluster, kube: Kube, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    url = f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token"
    token = json.loads(kube("create", "--raw", url, "-f", "-", stdin=json.dumps(request)))
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token["status"]["token"]}}],
        "contexts": [
            {"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_needs_nothing_beyond_the_chart_role(
    cluster: LocalCluster,
    kube: Kube,
    release: str,
    start_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    kubeconfig = _token_kubeconfig(cluster, kube, release, tmp_path / "kubeconfig")

    def can(*args: str) -> bool:
        answer = kube("auth", "can-i", *args, f"--kubeconfig={kubeconfig}", check=False)
        return answer.strip().startswith("yes")

    # The identity is the ServiceAccount, and the role is narrow.
    assert can("watch", "fedjobs.modelfleet.io", "--all-namespaces")
    # A Secret is read only by the name a spec's auth gives; none are listed or changed.
    assert can("get", "secrets", "-n", WORKLOADS)
    assert not can("list", "secrets", "-n", NS) and not can("update", "secrets", "-n", NS)
    assert not can("delete", "fedjobs.modelfleet.io", "-n", WORKLOADS)
    assert not can("patch", "validatingwebhookconfigurations")

    kube("create", "namespace", WORKLOADS)
    tls = _webhook_tls(kube, tmp_path)
    webhook_port = free_port()
    operator = start_operator(
        "--backend=kuberay",
        "--webhook=external",
        "--webhook-addr=127.0.0.1",
        f"--webhook-port={webhook_port}",
        f"--webhook-cert={tls / 'tls.crt'}",
        f"--webhook-key={tls / 'tls.key'}",
        "--peering=modelfleet-rbac",
        env={"KUBECONFIG": str(kubeconfig)},
    )
    kube("apply", "-n", WORKLOADS, "-f", str(ROOT / "examples"))
    # A FedJob on the cluster: its Flower federation's Secret, Role, Deployments and the rest.
    create_nodes(kube)
    federation = (ROOT / "examples" / "cluster" / "fedjob.yaml").read_text()
    federation = federation.replace("name: clinical-notes", "name: federation")
    kube("apply", "-n", WORKLOADS, "-f", "-", stdin=federation)
    reasons = {
        resource: wait_for(
            lambda r=resource: kube.condition(r, WORKLOADS).get("reason"),
            90,
            f"{resource} to report a Ready condition",
        )
        for resource in EXAMPLES
    }
    assert "InvalidSpec" not in reasons.values(), reasons

    def owners(plural: str) -> set[str]:
        children = kube.get(plural, "-n", WORKLOADS)["items"]
        return {child["metadata"]["ownerReferences"][0]["kind"] for child in children}

    # With no GPU nodes here, a FedJob with GPU clients may be Unschedulable: no child then.
    jobs = {EXAMPLES[r] for r, reason in reasons.items() if reason == "RayJobStarting"}
    assert jobs and reasons["modelpool/chat"] == "RayServiceStarting", reasons
    wait_for(lambda: owners("rayjobs") == jobs, 60, f"the RayJobs of {jobs}")
    services = {"ModelPool", "RoutingPolicy"}
    wait_for(
        lambda: owners("rayservices") == services, 60, "the pool's and the router's RayServices"
    )
    wait_for(
        lambda: kube.get("events", "-n", WORKLOADS)["items"],
        60,
        "the operator's events",
    )
    peering = kube.get("clusterkopfpeering", "modelfleet-rbac")
    assert peering.get("status"), "the operator never joined its peering"
    kube.wait_reason("fedjob/federation", WORKLOADS, "SuperLinkStarting", 90)
    deployments = kube("get", "deployments", "-n", WORKLOADS, "-o", "name").split()
    assert len(deployments) == 4, "the SuperLink and three SuperNodes"

    # The registered webhook's path, served with the chart's certificate, validates.
    config = kube.get("validatingwebhookconfiguration", release)
    fedjobs = next(w for w in config["webhooks"] if w["rules"][0]["resources"] == ["fedjobs"])
    valid = yaml.safe_load((ROOT / "examples" / "fedjob.yaml").read_text())
    invalid = yaml.safe_load(
        next((ROOT / "examples" / "invalid").glob("fedjob-*.yaml")).read_text()
    )
    verdicts = [_review(fedjobs, tls, webhook_port, obj) for obj in (valid, invalid)]
    assert verdicts[0]["allowed"] is True, verdicts[0]
    assert verdicts[1]["allowed"] is False
    assert "cannot mix ranks" in verdicts[1]["status"]["message"]

    operator.stop()
    assert_never_denied(operator)


def test_operator_watching_a_namespace_needs_nothing_beyond_the_chart_role(
    cluster: LocalCluster,
    kube: Kube,
    release: str,
    start_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    """With operator.watchNamespaces the operator creates a KopfPeering in each namespace."""
    watched = namespace(kube, "rbac-watched")
    upgraded = helm(
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "--reuse-values",
        f"--set=operator.watchNamespaces={{{watched}}}",
    )
    assert upgraded.returncode == 0, upgraded.stderr
    kubeconfig = _token_kubeconfig(cluster, kube, release, tmp_path / "kubeconfig")

    def can(*args: str) -> bool:
        answer = kube("auth", "can-i", *args, f"--kubeconfig={kubeconfig}", check=False)
        return answer.strip().startswith("yes")

    # The resources are granted in the watched namespace only, by the chart's Role there.
    assert can("watch", "modelpools.modelfleet.io", "-n", watched)
    assert can("create", "rayservices.ray.io", "-n", watched)
    assert not can("watch", "modelpools.modelfleet.io", "--all-namespaces")
    assert not can("create", "rayservices.ray.io", "-n", WORKLOADS)
    assert not can("get", "clusterkopfpeerings.kopf.dev")
    assert kube.get("rolebinding", release, "-n", watched)["roleRef"]["kind"] == "Role"
    operator = start_operator(
        "--backend=kuberay",
        "--webhook=off",
        "--peering=modelfleet-rbac",
        "--priority=auto",
        f"--namespace={watched}",
        env={"KUBECONFIG": str(kubeconfig)},
    )
    for example in ("api-keys.yaml", "modelpool.yaml"):
        kube("apply", "-n", watched, "-f", str(ROOT / "examples" / example))
    kube.wait_reason("modelpool/chat", watched, "RayServiceStarting", 90)
    peering = kube.get("kopfpeering", "modelfleet-rbac", "-n", watched)
    assert peering.get("status"), "the operator never joined its peering"
    operator.stop()
    assert_never_denied(operator)


def assert_never_denied(operator: Operator) -> None:
    denied = [line for line in operator.logs().splitlines() if DENIED.search(line)]
    assert not denied, "the operator was denied:\n" + "\n".join(denied[:20])


def _webhook_tls(kube: Kube, directory: Path) -> Path:
    """The chart's webhook Secret as files, as the Deployment mounts them."""
    secret = kube.get("secret", f"{ACCOUNT}-webhook-tls", "-n", NS)
    for name, value in secret["data"].items():
        (directory / name).write_bytes(base64.b64decode(value))
    return directory


def _review(webhook: dict[str, Any], tls: Path, port: int, obj: dict[str, Any]) -> Any:
    """POST an AdmissionReview as the API server would: to the registered path, trusting
    the registered caBundle and checking the certificate against the Service's DNS name."""
    client = webhook["clientConfig"]
    ca = tls / "registered-ca.crt"
    ca.write_bytes(base64.b64decode(client["caBundle"]))
    context = ssl.create_default_context(cafile=str(ca))
    service = client["service"]
    host = f"{service['name']}.{service['namespace']}.svc"
    kind = {"group": "modelfleet.io", "version": "v1alpha1", "kind": obj["kind"]}
    resource = {"group": "modelfleet.io", "version": "v1alpha1", "resource": "fedjobs"}
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": obj["metadata"]["name"],
            "namespace": WORKLOADS,
            "operation": "CREATE",
            "userInfo": {"username": "e2e"},
            "object": {**obj, "metadata": {**obj["metadata"], "namespace": WORKLOADS}},
            "oldObject": None,
            "dryRun": False,
        },
    }
    # The Service's name does not resolve here: connect to the port, verify for the name.
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sock = context.wrap_socket(raw, server_hostname=host)
    try:
        connection.request(
            "POST", service["path"], json.dumps(review), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())["response"]
    finally:
        connection.close()
