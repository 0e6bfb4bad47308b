"""A FedJob rendered for a cluster: a SuperLink and a SuperNode per client, over TLS with
SuperNode authentication, each client's data and key reaching that client alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.backends.base import Owner
from modelfleet.backends.flower_render import (
    ROLE_LABEL,
    SPEC_FILE,
    SUPERLINK_PORT,
    FederationNames,
    render_federation,
    render_secret,
)
from modelfleet.core.pod_security import restricted_violations
from modelfleet.core.workload import WORKLOAD_LABEL
from modelfleet.federated.credentials import (
    CA_CERT,
    NODE_KEY,
    SERVER_CERT,
    SERVER_KEY,
    mint_credentials,
    node_files,
    private_key_file,
    public_key_file,
    superlink_files,
)
from modelfleet.federated.job import JOB_FILE, JobSettings
from modelfleet.federated.launch import JobInvalid, check_cluster_job, job_settings
from modelfleet.federated.plan import SITE_LABEL, plan_fedjob

ROOT = Path(__file__).parents[3]
OWNER = Owner("modelfleet.io/v1alpha1", "FedJob", "clinical-notes", "research", "uid-7")
PRODUCTS = {"A100-80GB": ("NVIDIA-A100-SXM4-80GB",), "L4": ("NVIDIA-L4",)}


def example_spec() -> FedJobSpec:
    document = yaml.safe_load((ROOT / "examples" / "cluster" / "fedjob.yaml").read_text())
    return FedJobSpec.model_validate(document["spec"])


def rendered(replicas: int = 1) -> dict[tuple[str, str], dict[str, Any]]:
    spec = example_spec()
    workload = plan_fedjob(OWNER.name, spec, None)
    assert not hasattr(workload, "reason")
    children = render_federation(
        OWNER,
        workload,  # type: ignore[arg-type]
        job_settings(spec),
        check_cluster_job(spec),
        "federated:1",
        PRODUCTS,
        replicas,
    )
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


NAMES = FederationNames("clinical-notes-fed")


def pod_of(children: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    pod: dict[str, Any] = children["Deployment", name]["spec"]["template"]["spec"]
    return pod


def test_every_child_is_owned_valid_and_its_pods_restricted() -> None:
    children = rendered()
    kinds = sorted({kind for kind, _ in children})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    models = {
        "ConfigMap": client.V1ConfigMap,
        "Deployment": client.V1Deployment,
        "NetworkPolicy": client.V1NetworkPolicy,
        "Role": client.V1Role,
        "RoleBinding": client.V1RoleBinding,
        "Service": client.V1Service,
        "ServiceAccount": client.V1ServiceAccount,
    }
    for (kind, name), child in children.items():
        assert child["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert child["metadata"]["namespace"] == OWNER.namespace
        models[kind].model_validate(child)
        if kind == "Deployment":
            pod = child["spec"]["template"]["spec"]
            assert restricted_violations(pod) == [], name
            labels = child["spec"]["template"]["metadata"]["labels"]
            assert labels[WORKLOAD_LABEL] == NAMES.workload
            assert child["metadata"]["labels"][WORKLOAD_LABEL] == NAMES.workload
    deployments = sorted(name for kind, name in children if kind == "Deployment")
    assert deployments == sorted(
        [NAMES.superlink, *(NAMES.supernode(c) for c in ("hospital-a", "hospital-b", "hospital-c"))]
    )


def test_supernodes_get_their_own_data_key_site_and_gpus_and_connect_over_tls() -> None:
    children = rendered()
    claims = {"hospital-a": "hospital-a-notes", "hospital-b": "hospital-b-notes"}
    claims["hospital-c"] = "hospital-c-notes"
    for client_name, claim in claims.items():
        pod = pod_of(children, NAMES.supernode(client_name))
        volumes = {
            v.get("persistentVolumeClaim", {}).get("claimName")
            or v.get("secret", {}).get("secretName")
            for v in pod["volumes"]
        }
        assert volumes == {claim, NAMES.credentials}
        assert all(
            v["persistentVolumeClaim"]["readOnly"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        )
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        command = container["command"]
        assert command[:4] == [
            "python",
            "-m",
            "modelfleet.federated.supernode_pod",
            "flower-supernode",
        ]
        assert "--insecure" not in command
        assert f"--superlink={NAMES.superlink}.research.svc:{SUPERLINK_PORT}" in command
        assert "--root-certificates=/etc/modelfleet/flower/ca.crt" in command
        assert "--auth-supernode-private-key=/etc/modelfleet/flower/auth.key" in command
        config = next(a for a in command if a.startswith("--node-config="))
        assert config == f'--node-config=client="{client_name}" dataset="/mnt/pvc/{claim}/train"'
    a = pod_of(children, NAMES.supernode("hospital-a"))
    assert a["nodeSelector"] == {SITE_LABEL: "eu-west"}
    assert a["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    expression = a["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert expression["values"] == ["A100-80GB", "NVIDIA-A100-SXM4-80GB"]
    c = pod_of(children, NAMES.supernode("hospital-c"))
    assert "affinity" not in c and "tolerations" not in c
    assert "limits" not in c["containers"][0]["resources"]


def test_the_superlink_writes_the_output_and_may_patch_only_its_status() -> None:
    children = rendered()
    pod = pod_of(children, NAMES.superlink)
    [container] = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "modelfleet.federated.superlink_pod"]
    assert "--run-dir=/mnt/pvc/fedjob-runs/clinical-notes" in container["command"]
    assert f"--port={SUPERLINK_PORT}" in container["command"]
    output = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert output["persistentVolumeClaim"] == {"claimName": "fedjob-runs", "readOnly": False}
    assert pod["serviceAccountName"] == NAMES.superlink
    role = children["Role", NAMES.superlink]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [NAMES.status],
            "verbs": ["get", "patch"],
        }
    ]
    job = JobSettings.from_json(children["ConfigMap", NAMES.job]["data"][JOB_FILE])
    assert [c.name for c in job.clients] == ["hospital-a", "hospital-b", "hospital-c"]
    assert "pvc://" not in children["ConfigMap", NAMES.job]["data"][JOB_FILE], (
        "a client's dataset goes to that client alone"
    )
    service = children["Service", NAMES.superlink]["spec"]
    assert service["selector"] == {WORKLOAD_LABEL: NAMES.workload, ROLE_LABEL: "superlink"}
    policy = children["NetworkPolicy", NAMES.workload]["spec"]
    assert policy["ingress"] == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {WORKLOAD_LABEL: NAMES.workload, ROLE_LABEL: "supernode"}
                    }
                }
            ],
            "ports": [{"port": SUPERLINK_PORT, "protocol": "TCP"}],
        }
    ]
    assert json.loads(children["ConfigMap", NAMES.status]["data"]["status.json"]) is None


def test_a_finished_run_renders_no_pods() -> None:
    replicas = {
        name: child["spec"]["replicas"]
        for (kind, name), child in rendered(0).items()
        if kind == "Deployment"
    }
    assert set(replicas.values()) == {0}


def test_minted_credentials_chain_to_the_job_ca_and_pair_each_client_key() -> None:
    hosts = NAMES.superlink_hosts("research")
    material = mint_credentials(hosts, ["hospital-a", "hospital-b"])
    ca = x509.load_pem_x509_certificate(material[CA_CERT])
    server = x509.load_pem_x509_certificate(material[SERVER_CERT])
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{NAMES.superlink}.research.svc" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    for name in ("hospital-a", "hospital-b"):
        key = serialization.load_ssh_private_key(material[private_key_file(name)], None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        assert material[public_key_file(name)].strip() == public
        assert node_files(name) == {CA_CERT: CA_CERT, private_key_file(name): NODE_KEY}
    link = superlink_files(["hospital-a", "hospital-b"])
    assert SERVER_KEY in link and not any(f.endswith(".key") and f != SERVER_KEY for f in link)
    secret = render_secret(OWNER, NAMES.credentials, material)
    client.V1Secret.model_validate(secret)
    assert base64.b64decode(secret["data"][CA_CERT]) == material[CA_CERT]


def test_each_pod_mounts_only_its_own_credentials_and_no_dataset_of_another() -> None:
    children = rendered()
    projected = {}
    for (kind, name), child in children.items():
        if kind != "Deployment":
            continue
        volumes = child["spec"]["template"]["spec"]["volumes"]
        secret = next(v["secret"] for v in volumes if "secret" in v)
        assert secret["secretName"] == NAMES.credentials
        projected[name] = {item["key"] for item in secret["items"]}
        job = [v["configMap"] for v in volumes if "configMap" in v]
        assert job in ([], [{"name": NAMES.job, "items": [{"key": JOB_FILE, "path": JOB_FILE}]}])
    assert projected[NAMES.supernode("hospital-b")] == {CA_CERT, "hospital-b.key"}
    assert projected[NAMES.superlink] == {
        CA_CERT,
        SERVER_CERT,
        SERVER_KEY,
        "hospital-a.pub",
        "hospital-b.pub",
        "hospital-c.pub",
    }
    stored = json.loads(children["ConfigMap", NAMES.job]["data"][SPEC_FILE])
    assert stored == example_spec().to_wire(), "the spec the federation starts with"


@pytest.mark.parametrize(
    ("field", "uri", "named"),
    [
        ("output", "file:///runs/x", "spec.output.uri"),
        ("dataset", "s3://bucket/notes", "spec.clients[1].datasetUri (hospital-b)"),
    ],
)
def test_a_cluster_needs_claims_and_says_which_field(field: str, uri: str, named: str) -> None:
    spec = example_spec()
    if field == "output":
        spec = spec.model_copy(update={"output": spec.output.model_copy(update={"uri": uri})})
    else:
        clients = list(spec.clients)
        clients[1] = clients[1].model_copy(update={"dataset_uri": uri})
        spec = spec.model_copy(update={"clients": clients})
    with pytest.raises(JobInvalid, match=r"use pvc://<claim>/<path>") as raised:
        check_cluster_job(spec)
    assert str(raised.value).startswith(named)
