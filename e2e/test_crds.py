"""What kubectl users see of the generated CRDs on a real API server (no operator)."""

from __future__ import annotations

import json
import subprocess

import pytest

from e2e.conftest import ROOT, Kube, namespace, wait_for

pytestmark = pytest.mark.envtest


@pytest.fixture(scope="module")
def ux(kube: Kube) -> str:
    name = namespace(kube, "ux")
    kube("apply", "-n", name, "-f", str(ROOT / "examples"))
    return name


def test_category_lists_all_four_kinds(kube: Kube, ux: str) -> None:
    out = kube("get", "modelfleet", "-n", ux)
    for name in (
        "fedjob.modelfleet.io/clinical-notes",
        "fusionjob.modelfleet.io/fuse-chat",
        "modelpool.modelfleet.io/chat",
        "routingpolicy.modelfleet.io/chat-router",
    ):
        assert name in out


def test_printer_columns_and_short_names(kube: Kube, ux: str) -> None:
    header = kube("get", "fj", "-n", ux).splitlines()[0].split()
    assert header == ["NAME", "READY", "REASON", "ROUND", "ROUNDS", "AGE"]
    assert kube("get", "fj", "-n", ux).splitlines()[1].split()[1] == "3"
    wide = kube("get", "mp", "-n", ux, "-o", "wide").splitlines()[0].split()
    assert wide[:5] == ["NAME", "READY", "REASON", "REPLICAS", "DESIRED"] and "ENDPOINT" in wide
    assert kube("get", "rp", "-n", ux).splitlines()[0].split()[3] == "STRATEGY"
    assert "fuse-chat" in kube("get", "fuj", "-n", ux)


def test_explain_shows_field_docs(kube: Kube) -> None:
    text = wait_for(
        lambda: (
            (out := kube("explain", "fedjob.spec.clients", check=False))
            and "participants" in out
            and out
        ),
        timeout=60,
        what="OpenAPI publication of the CRD",
    )
    assert "datasetUri" in text and "rank" in text


def test_scale_subresource(kube: Kube, ux: str) -> None:
    kube("scale", "modelpool", "chat", "-n", ux, "--replicas", "3")
    assert kube.get("modelpool", "chat", "-n", ux)["spec"]["replicas"] == 3
    path = f"/apis/modelfleet.io/v1alpha1/namespaces/{ux}/modelpools/chat/scale"
    scale = json.loads(kube("get", "--raw", path))
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 3)
    selector = {"status": {"selector": "modelfleet.io/workload=chat-serve"}}
    patch = ["--subresource=status", "--type=merge", "-p", json.dumps(selector)]
    kube("patch", "modelpool", "chat", "-n", ux, *patch)
    scale = json.loads(kube("get", "--raw", path))
    assert scale["status"]["selector"] == "modelfleet.io/workload=chat-serve", "for HPA, KEDA"


def test_schema_bounds_hold_without_the_webhook(kube: Kube, ux: str) -> None:
    bad = (ROOT / "examples" / "fedjob.yaml").read_text().replace("rank: 16", "rank: 0")
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kube("apply", "-n", ux, "-f", "-", stdin=bad.replace("clinical-notes", "zero-rank"))
    assert "spec.clients.rank in body should be greater than or equal to 1" in caught.value.stderr


def test_defaults_are_stored_so_get_shows_the_values_in_effect(kube: Kube, ux: str) -> None:
    job = kube.get("fedjob", "clinical-notes", "-n", ux)["spec"]
    assert job["clients"][1]["weight"] == 1.0, "a default inside a list entry"
    assert job["aggregation"]["clientFraction"] == 1.0, "a default inside a given object"
    assert job["privacy"]["secureAggregation"] is False
    policy = kube.get("routingpolicy", "chat-router", "-n", ux)["spec"]
    assert policy["objectives"]["minQuality"] == 0.6 and policy["targets"][0]["weight"] == 1.0
    pool = kube.get("modelpool", "chat", "-n", ux)["spec"]
    assert pool["models"][0]["tensorParallel"] == 1 and pool["gpuTypes"][0]["available"] == 4


POOL = """
apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {name: NAME}
spec:
  models: [{name: m, uri: "builtin://tiny-llama"}]
  auth: {mode: None}
"""


def test_money_must_be_a_decimal_string(kube: Kube, ux: str) -> None:
    bare = POOL.replace("NAME", "bare")
    kube("apply", "-n", ux, "-f", "-", stdin=bare)
    stored = kube.get("modelpool", "bare", "-n", ux)["spec"]
    assert stored["gpuTypes"] == [{"gpuType": "cpu", "pricePerHour": "0", "available": 8}]
    assert stored["autoscaling"]["policy"] == "None" and stored["replicas"] == 1
    floated = POOL.replace("NAME", "floated") + "  gpuTypes: [{gpuType: L4, pricePerHour: 3.5}]\n"
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kube("apply", "-n", ux, "-f", "-", stdin=floated)
    assert "spec.gpuTypes.pricePerHour in body must be of type string" in caught.value.stderr


def test_a_list_key_given_twice_is_rejected(kube: Kube, ux: str) -> None:
    twice = POOL.replace("NAME", "twice") + (
        '  gpuTypes: [{gpuType: L4, pricePerHour: "1"}, {gpuType: L4, pricePerHour: "2"}]\n'
    )
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kube("apply", "-n", ux, "-f", "-", stdin=twice)
    assert "Duplicate value" in caught.value.stderr and "gpuTypes" in caught.value.stderr
