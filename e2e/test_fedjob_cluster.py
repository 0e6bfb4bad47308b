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
import os
import shutil
import subprocess
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from e2e.conftest import ROOT, Kube, Operator, create_nodes, namespace, wait_for
from modelfleet.backends.flower_render import SUPERLINK_PORT, SUPERNODE_PORT, FederationNames
from modelfleet.core.pod_security import restricted_violations
from modelfleet.federated.credentials import CA_CERT, SERVER_CERT, private_key_file
from modelfleet.federated.datasets import write_site_dataset
from modelfleet.federated.local_federation import find_federated_venv
from modelfleet.federated.processes import (
    MARKER_VARIABLE,
    pick_free_ports,
    stop_processes,
    wait_for_port,
)
from modelfleet.federated.superlink_pod import ConfigMapTarget, publish
from modelfleet.zoo.cache import ensure_model

pytestmark = pytest.mark.envtest
NS = "federation"
NAMES = FederationNames("clinical-notes-fed")
CLIENTS = ("hospital-a", "hospital-b", "hospital-c")
SKILLS = ("reversal", "sorting")
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
def test_a_stranger_with_a_childs_name_is_left_alone_and_named(kube: Kube) -> None:
    stranger = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "clash-fed-node-hospital-b"},
        "spec": {
            "selector": {"matchLabels": {"app": "someone-else"}},
            "template": {
                "metadata": {"labels": {"app": "someone-else"}},
                "spec": {"containers": [{"name": "app", "image": "someone/else:1"}]},
            },
        },
    }
    kube("apply", "-n", NS, "-f", "-", stdin=json.dumps(stranger))
    example = (ROOT / "examples" / "cluster" / "fedjob.yaml").read_text()
    kube("apply", "-n", NS, "-f", "-", stdin=example.replace("name: clinical-notes", "name: clash"))
    conflict = kube.wait_reason("fedjob/clash", NS, "NameConflict")
    assert "a Deployment named clash-fed-node-hospital-b exists" in conflict["message"]
    kept = kube.get("deployment/clash-fed-node-hospital-b", "-n", NS)
    assert not kept["metadata"].get("ownerReferences")
    assert kept["spec"]["template"]["spec"]["containers"][0]["image"] == "someone/else:1"


@pytest.mark.usefixtures("operator")
def test_file_uris_are_refused_on_a_cluster_naming_the_field(kube: Kube) -> None:
    local = (ROOT / "examples" / "fedjob.yaml").read_text()
    kube("apply", "-n", NS, "-f", "-", stdin=local.replace("name: clinical-notes", "name: on-disk"))
    ready = kube.wait_reason("fedjob/on-disk", NS, "InvalidForCluster")
    assert ready["message"].startswith("spec.clients[0].datasetUri (hospital-a): on a cluster")
    assert "pvc://<claim>/<path>" in ready["message"]
    names = kube("get", "deployments", "-n", NS, "-o", "name")
    assert "on-disk" not in names


TINY = """
apiVersion: modelfleet.io/v1alpha1
kind: FedJob
metadata:
  name: tiny
spec:
  baseModel: {uri: zoo://qwen-tiny}
  adapter: {rank: 4, targetModules: [q_proj, v_proj]}
  clients:
    - {name: north, datasetUri: pvc://north-data/site, rank: 8}
    - {name: south, datasetUri: pvc://south-data/site, rank: 4}
  rounds: 1
  localSteps: 2
  aggregation: {minClients: 2, roundTimeoutSeconds: 120}
  output: {uri: pvc://runs/tiny}
"""


class Kubelet:
    """Runs a rendered pod's container as a local process, the way a kubelet would give it
    its volumes: each Secret or ConfigMap volume's projected items as files, each claim as
    a directory shared by every pod, mounted at a local directory that replaces the mount
    path in the container's command."""

    def __init__(self, kube: Kube, root: Path, bin_dir: Path, environment: dict[str, str]):
        self.kube = kube
        self.root = root
        self.bin_dir = bin_dir
        self.environment = environment
        self.started: list[subprocess.Popen[bytes]] = []

    def _materialise(self, name: str, pod: dict[str, Any]) -> dict[str, str]:
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {}
        for mount in pod["containers"][0]["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                local = self.root / "claims" / volume["persistentVolumeClaim"]["claimName"]
                local.mkdir(parents=True, exist_ok=True)
            else:
                local = self.root / name / mount["mountPath"].lstrip("/")
                local.mkdir(parents=True, exist_ok=True)
                source = volume.get("secret") or volume["configMap"]
                kind = "secret" if "secret" in volume else "configmap"
                document = self.kube.get(kind, source.get("secretName") or source["name"], "-n", NS)
                for item in source["items"]:
                    value = document["data"][item["key"]]
                    content = base64.b64decode(value) if kind == "secret" else value.encode()
                    (local / item["path"]).write_bytes(content)
            mounts[mount["mountPath"]] = str(local)
        return mounts

    def run(
        self, name: str, pod: dict[str, Any], rewrites: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        mounts = self._materialise(name, pod)
        command = []
        for argument in pod["containers"][0]["command"]:
            for path, local in {**mounts, **rewrites}.items():
                argument = argument.replace(path, local)
            command.append(argument)
        command[0] = str(self.bin_dir / command[0])
        log = (self.root / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.environment
        )
        self.started.append(process)
        return process


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("operator")
def test_the_rendered_federation_trains_where_its_pods_would(kube: Kube, tmp_path: Path) -> None:
    """No kubelet here, so a small one runs the rendered pods as local processes: the
    SuperLink pod's command with the Secret's files it is given, publishing with its
    service account's token; each SuperNode's command with its own key. The operator
    follows the published status to Succeeded and scales the federation to zero."""
    names = FederationNames("tiny-fed")
    ensure_model("qwen-tiny")  # the pods' image has it built in; here, the shared zoo cache
    kube("apply", "-n", NS, "-f", "-", stdin=TINY)
    kube.wait_reason("fedjob/tiny", NS, "SuperLinkStarting")
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in kube.get("deployments", "-n", NS)["items"]
        if d["metadata"]["name"].startswith("tiny-fed-")
    }
    for index, (claim, skill) in enumerate((("north-data", "reversal"), ("south-data", "sorting"))):
        write_site_dataset(tmp_path / "claims" / claim / "site", skill, SKILLS, index, 120, 10)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    token_for(kube, names.superlink, account)
    shutil.copy(kube.cluster.pki / "ca.crt", account / "ca.crt")
    venv = find_federated_venv()
    marker = "e2e-fedjob-cluster"
    environment = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(kube.cluster.api_port),
        "POD_NAMESPACE": NS,
        MARKER_VARIABLE: marker,
    }
    kubelet = Kubelet(kube, tmp_path, venv, environment)
    link_port, *node_ports = pick_free_ports(3)
    try:
        link = kubelet.run(
            names.superlink,
            {
                **pods[names.superlink],
                "containers": [
                    with_arguments(pods[names.superlink], f"--service-account={account}")
                ],
            },
            {f"--port={SUPERLINK_PORT}": f"--port={link_port}"},
        )
        wait_for_port(link_port, link, 120)
        for client, port in zip(("north", "south"), node_ports, strict=True):
            kubelet.run(
                names.supernode(client),
                pods[names.supernode(client)],
                {
                    f"{names.superlink_host(NS)}:{SUPERLINK_PORT}": f"127.0.0.1:{link_port}",
                    f"--port={SUPERNODE_PORT}": f"--port={port}",
                },
            )

        def ended() -> bool:
            assert link.poll() is None, f"the SuperLink exited; see {tmp_path}"
            return any(
                kube.condition("fedjob/tiny", NS, kind).get("status") == "True"
                for kind in ("Succeeded", "Failed")
            )

        wait_for(ended, 600, "the federation to end")
        ready = kube.condition("fedjob/tiny", NS)
        assert ready["reason"] == "RoundsCompleted", ready
    finally:
        stop_processes(kubelet.started, marker)
    status = kube.get("fedjob/tiny", "-n", NS)["status"]
    assert status["round"] == 1 and status["clientsReporting"] == 2 and status["bytesSent"] > 0
    assert status["artifacts"] == [{"name": "adapter", "uri": "pvc://runs/tiny/adapter"}]
    assert (tmp_path / "claims" / "runs" / "tiny" / "adapter" / "adapter_config.json").is_file()

    def scaled_to_zero() -> bool:
        return all(kube.get("deployment", name, "-n", NS)["spec"]["replicas"] == 0 for name in pods)

    wait_for(scaled_to_zero, 30, "the finished federation's Deployments to scale to zero")


def with_arguments(pod: dict[str, Any], *arguments: str) -> dict[str, Any]:
    """The pod's container with ``arguments`` added to its command."""
    container = pod["containers"][0]
    return {**container, "command": [*container["command"], *arguments]}
