"""The operator with the embedded default backend, against the real API server."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from e2e.conftest import ROOT, Kube, Operator, namespace, wait_for

pytestmark = pytest.mark.envtest
NS = "local"
KINDS = ("fedjob/clinical-notes", "fusionjob/fuse-chat", "modelpool/chat")


@pytest.fixture(scope="module")
def operator(kube: Kube, start_operator: object) -> Iterator[Operator]:
    namespace(kube, NS)
    running = start_operator("--backend=local", "--standalone", f"--namespace={NS}")  # type: ignore[operator]
    wait_for(
        lambda: (
            "validate.modelfleet.io" in kube("get", "validatingwebhookconfigurations", "-o", "name")
        ),
        timeout=60,
        what="the operator to register its webhook",
    )
    kube("apply", "-n", NS, "-f", str(ROOT / "examples"))
    yield running
    running.stop()


def _metrics(operator: Operator, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}{path}", timeout=5) as r:
        return r.read().decode()


def test_every_example_reports_what_is_missing(kube: Kube, operator: Operator) -> None:
    for resource in KINDS:
        ready = kube.wait_reason(resource, NS, "RuntimeNotAvailable")
        assert ready["status"] == "False" and "is not part of this release" in ready["message"]
        obj = kube.get(resource, "-n", NS)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        types = [c["type"] for c in obj["status"]["conditions"]]
        assert types == ["Ready", "Progressing", "Degraded"]
    router = kube.wait_reason("routingpolicy/chat-router", NS, "TargetsNotReady")
    assert "['small']" in router["message"]


def test_kopf_bookkeeping_stays_out_of_status(kube: Kube, operator: Operator) -> None:
    kube.wait_reason("fedjob/clinical-notes", NS, "RuntimeNotAvailable")
    obj = kube.get("fedjob/clinical-notes", "-n", NS)
    assert "kopf" not in obj["status"]
    assert "modelfleet.io/last-handled-configuration" in obj["metadata"]["annotations"]


def test_transitions_are_recorded_as_events(kube: Kube, operator: Operator) -> None:
    def reasons() -> set[str]:
        events = kube.get("events", "-n", NS)["items"]
        return {e["reason"] for e in events if e["involvedObject"]["name"] == "clinical-notes"}

    assert wait_for(lambda: "RuntimeNotAvailable" in reasons(), 30, "an event")


def test_webhook_rejects_with_the_models_message(kube: Kube, operator: Operator) -> None:
    bad = (ROOT / "examples" / "invalid" / "fedjob-fedavg-mixed-ranks.yaml").read_text()
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kube("apply", "-n", NS, "-f", "-", stdin=bad)
    message = caught.value.stderr
    assert "denied the request" in message
    assert "spec.aggregation.method: fedavg averages LoRA A and B separately" in message


def test_spec_update_is_observed(kube: Kube, operator: Operator) -> None:
    kube("patch", "fedjob/clinical-notes", "-n", NS, "--type=merge", "-p", '{"spec":{"rounds":5}}')
    generation = kube.get("fedjob/clinical-notes", "-n", NS)["metadata"]["generation"]
    wait_for(
        lambda: (
            kube.get("fedjob/clinical-notes", "-n", NS)["status"]["observedGeneration"]
            == generation
        ),
        30,
        "observedGeneration to follow the update",
    )


def test_metrics_and_health(kube: Kube, operator: Operator) -> None:
    kube.wait_reason("modelpool/chat", NS, "RuntimeNotAvailable")
    text = _metrics(operator)
    assert 'modelfleet_reconcile_total{kind="ModelPool",result="success"}' in text
    assert 'modelfleet_resources{kind="FedJob",ready="False"} 1.0' in text
    assert "modelfleet_reconcile_duration_seconds_bucket" in text
    assert 'modelfleet_admission_reviews_total{allowed="false",kind="FedJob"}' in text
    assert _metrics(operator, "/healthz") == "ok"


def test_invalid_spec_past_the_webhook_is_reported_once(kube: Kube, operator: Operator) -> None:
    kube("delete", "validatingwebhookconfiguration", "validate.modelfleet.io")
    bad = (ROOT / "examples" / "invalid" / "fedjob-fedavg-mixed-ranks.yaml").read_text()
    kube("apply", "-n", NS, "-f", "-", stdin=bad)
    ready = kube.wait_reason("fedjob/mixed-ranks", NS, "InvalidSpec")
    assert ready["message"].startswith("spec.aggregation.method: fedavg")
    before = _metrics(operator)
    wait_for(lambda: _metrics(operator) != before, 10, "a few resyncs")
    events = [
        e
        for e in kube.get("events", "-n", NS)["items"]
        if e["involvedObject"]["name"] == "mixed-ranks" and e["reason"] == "InvalidSpec"
    ]
    assert len(events) == 1 and events[0].get("count", 1) == 1
    assert operator.process.poll() is None
