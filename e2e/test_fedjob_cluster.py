"""A FedJob on a cluster (``--backend=kuberay``): the operator renders the Flower federation
with its own TLS material and SuperNode keys, follows the status the SuperLink pod
publishes with its narrow service account, and scales the federation to zero at the end.

No kubelet runs here, so the SuperLink pod's part is played by the test: it makes the
SuperLink's Deployment available through the status subresource and publishes progress
with :func:`modelfleet.federated.superlink_pod.publish`, authenticated as the SuperLink's
service account with a token the API server issued for it."""

from __future__ import annotations

import base64
import json
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from e2e.conftest import ROOT, Kube, Operator, create_nodes, namespace, wait_for
from modelfleet.backends.flower_render import FederationNames
from modelfleet.core.pod_security import restricted_violations
from modelfleet.federated.credentials import CA_CERT, SERVER_CERT, private_key_file
from modelfleet.federated.superlink_pod import ConfigMapTarget, publish

pytestmark = pytest.mark.envtest
NS = "federation"
NAMES = FederationNames("clinical-notes-fed")
CLIENTS = ("hospital-a", "hospital-b", "hospital-c")
REPORT = {
    "round": 2,
    "clients_reporting": 3,
    "epsilon_spent": 0.0,
    "bytes_sent": 37620,
    "metrics": {"evalAccuracy": 0.91, "trainLoss": 0.42},
    "adapter": "",
}


@pytest.fixture(scope="module")
def operator(kube: Kube, start_operator: Any) -> Iterator[Operator]:
    namespace(kube, NS)
    create_nodes(kube)
    started: Operator = start_operator(
        "--backend=kuberay",
        "--standalone",
        "--webhook=off",
        f"--namespace={NS}",
        "--federated-image=federated:test",
    )
    yield started
    started.stop()


def secret_files(kube: Kube, name: str) -> dict[str, bytes]:
    data = kube.get("secret", name, "-n", NS)["data"]
    return {key: base64.b64decode(value) for key, value in data.items()}


def token_for(kube: Kube, account: str, directory: Path) -> Path:
    """A token the API server issues for ``account``, as a pod's projected token."""
    path = directory / "token"
    path.write_text(kube("create", "token", account, "-n", NS).strip())
    return path


@pytest.mark.usefixtures("operator")
def test_a_cluster_fedjob_runs_as_a_tls_federation_and_ends_with_no_pods(
    kube: Kube, tmp_path: Path
) -> None:
    kube("apply", "-n", NS, "-f", str(ROOT / "examples" / "cluster" / "fedjob.yaml"))
    waiting = kube.wait_reason("fedjob/clinical-notes", NS, "SuperLinkStarting")
    assert waiting["status"] == "False"

    deployments = {d["metadata"]["name"]: d for d in kube.get("deployments", "-n", NS)["items"]}
    assert sorted(deployments) == sorted([NAMES.superlink, *(NAMES.supernode(c) for c in CLIENTS)])
    gpu_pod = deployments[NAMES.supernode("hospital-a")]["spec"]["template"]["spec"]
    required = gpu_pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    products = required["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
    assert "NVIDIA-A100-SXM4-80GB" in products, "the product string the nodes carry"
    for deployment in deployments.values():
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == []
        assert deployment["metadata"]["ownerReferences"][0]["kind"] == "FedJob"

    material = secret_files(kube, NAMES.credentials)
    ca = x509.load_pem_x509_certificate(material[CA_CERT])
    served = x509.load_pem_x509_certificate(material[SERVER_CERT])
    served.verify_directly_issued_by(ca)
    hosts = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{NAMES.superlink}.{NS}.svc" in hosts.get_values_for_type(x509.DNSName)
    for client in CLIENTS:
        key = serialization.load_ssh_private_key(material[private_key_file(client)], None)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        assert material[f"{client}.pub"].strip() == public, f"{client}'s key is the registered one"
        pod = deployments[NAMES.supernode(client)]["spec"]["template"]["spec"]
        [secret] = [v["secret"] for v in pod["volumes"] if "secret" in v]
        given = {item["key"] for item in secret["items"]}
        assert given == {CA_CERT, private_key_file(client)}, "its own key only"

    kube("patch", "fedjob/clinical-notes", "-n", NS, "--type=merge", "-p", '{"spec":{"rounds":9}}')
    wait_for(
        lambda: (
            "keeps the spec it started with"
            in kube.condition("fedjob/clinical-notes", NS)["message"]
        ),
        30,
        "the FedJob to say its federation keeps its spec",
    )
    job = kube.get("configmap", NAMES.job, "-n", NS)["data"]
    assert json.loads(job["job.json"])["rounds"] == 3
    assert secret_files(kube, NAMES.credentials) == material, "minted once"

    kube(
        "patch",
        f"deployment/{NAMES.superlink}",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}}),
    )
    kube.wait_reason("fedjob/clinical-notes", NS, "RoundInProgress")

    cluster = kube.cluster
    target = ConfigMapTarget(
        cluster.server,
        NS,
        NAMES.status,
        token_for(kube, NAMES.superlink, tmp_path),
        cluster.pki / "ca.crt",
    )
    publish(target, json.dumps({"report": REPORT, "result": None}))
    status = wait_for(
        lambda: (
            (s := kube.get("fedjob/clinical-notes", "-n", NS)["status"]).get("round") == 2 and s
        ),
        30,
        "the FedJob to show the published round",
    )
    assert status["clientsReporting"] == 3 and status["bytesSent"] == 37620
    assert status["metrics"]["evalAccuracy"] == 0.91
    assert (
        "round 3 of 3 in progress; 2 completed"
        in kube.condition("fedjob/clinical-notes", NS)["message"]
    )

    elsewhere = ConfigMapTarget(target.server, NS, NAMES.job, target.token_file, target.ca_file)
    with pytest.raises(urllib.error.HTTPError) as refused:
        publish(elsewhere, "{}")
    assert refused.value.code == 403, "the SuperLink may patch its status ConfigMap only"

    finished = {
        **REPORT,
        "round": 3,
        "adapter": "pvc://fedjob-runs/clinical-notes/adapter",
    }
    result = {"phase": "Succeeded", "reason": "RoundsCompleted", "message": "3 rounds completed"}
    publish(target, json.dumps({"report": finished, "result": result}))
    ready = kube.wait_reason("fedjob/clinical-notes", NS, "RoundsCompleted")
    assert ready["status"] == "True"
    assert kube.condition("fedjob/clinical-notes", NS, "Succeeded")["status"] == "True"
    artifacts = kube.get("fedjob/clinical-notes", "-n", NS)["status"]["artifacts"]
    assert artifacts == [{"name": "adapter", "uri": "pvc://fedjob-runs/clinical-notes/adapter"}]

    def scaled_to_zero() -> bool:
        items = kube.get("deployments", "-n", NS)["items"]
        return all(d["spec"]["replicas"] == 0 for d in items)

    wait_for(scaled_to_zero, 30, "the finished federation's Deployments to scale to zero")


@pytest.mark.usefixtures("operator")
def test_file_uris_are_refused_on_a_cluster_naming_the_field(kube: Kube) -> None:
    local = (ROOT / "examples" / "fedjob.yaml").read_text()
    kube("apply", "-n", NS, "-f", "-", stdin=local.replace("name: clinical-notes", "name: on-disk"))
    ready = kube.wait_reason("fedjob/on-disk", NS, "InvalidForCluster")
    assert ready["message"].startswith("spec.clients[0].datasetUri (hospital-a): on a cluster")
    assert "pvc://<claim>/<path>" in ready["message"]
    names = kube("get", "deployments", "-n", NS, "-o", "name")
    assert "on-disk" not in names
