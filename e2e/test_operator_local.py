"""The operator with the embedded default backend, against the real API server.

Jobs report that their runtime is missing; the ModelPool is served for real by a
private Ray the operator starts, and answered through the official openai client.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
import yaml

from e2e.conftest import ROOT, Kube, Operator, namespace, wait_for
from modelfleet.devcluster.cluster import free_port
from modelfleet.serving.checkpoint import load_decoder
from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.model_tokenizer import HfTokenizer
from modelfleet.serving.torch_engine import TorchEngine

if TYPE_CHECKING:
    from conftest import S3Server

pytestmark = pytest.mark.envtest
NS = "local"
FEDJOB = "fedjob/clinical-notes"
FUSIONJOB = "fusionjob/fuse-chat"
POOL = "modelpool/chat"
SERVE_PORT = free_port()
POOL_BASE = f"http://127.0.0.1:{SERVE_PORT}/{NS}/chat/v1"
ROUTER_BASE = f"http://127.0.0.1:{SERVE_PORT}/{NS}/routingpolicy/fleet/v1"
TINY_POOL = """
apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {name: tiny}
spec:
  models: [{name: mini, uri: "builtin://tiny-llama-mini", maxModelLen: 256}]
  replicas: 1
  auth: {mode: ApiKey, secretName: demo-keys}
"""
FLEET = """
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: fleet}
spec:
  targets:
    - {name: arith, pool: chat, model: arith, costPer1kTokens: "1.0"}
    - {name: tiny, pool: tiny, model: mini, costPer1kTokens: "0.1"}
  strategy: CostOfPass
  objectives: {minQuality: 0.3}
  fallback: arith
  auth: {mode: ApiKey, secretName: demo-keys}
"""
DEMO_KEY = yaml.safe_load((ROOT / "examples" / "api-keys.yaml").read_text())["stringData"]["demo"]
"""The key of the examples' Secret, which the example pools and routers check."""
SERVING_TIMEOUT = 240
"""Starting Ray, Serve and two engine replicas on two shared cores."""


@pytest.fixture(scope="module")
def operator(kube: Kube, start_operator: object, zoo_arith: Path) -> Iterator[Operator]:
    namespace(kube, NS)
    running = start_operator(  # type: ignore[operator]
        "--backend=local", "--standalone", f"--namespace={NS}", f"--serve-port={SERVE_PORT}"
    )
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


def _reconciles(operator: Operator, kind: str) -> float:
    """Reconciles of ``kind`` the operator has finished, whatever their result."""
    prefix = f'modelfleet_reconcile_total{{kind="{kind}",'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in _metrics(operator).splitlines()
        if line.startswith(prefix)
    )


def _reconcile_again(kube: Kube, operator: Operator, resource: str, kind: str) -> None:
    """Return once ``resource`` has certainly been reconciled again, events included.

    Touching an annotation changes what kopf diffs, so it runs the update handler, and
    kopf writes the new annotation into its last-handled configuration only after that
    handler finished. Kopf posts events from a queue, so this then also waits for the
    operator to finish a further reconcile of ``kind`` (the resync timer runs every 2 s),
    which gives the queue that long to post whatever the poked reconcile emitted.
    """
    poke = uuid.uuid4().hex

    def handled() -> bool:
        annotations = kube.get(resource, "-n", NS)["metadata"]["annotations"]
        return poke in annotations.get("modelfleet.io/last-handled-configuration", "")

    kube("annotate", resource, "-n", NS, f"e2e.modelfleet.io/poke={poke}", "--overwrite")
    wait_for(handled, 30, f"{resource} to be reconciled after the annotation")
    done = _reconciles(operator, kind)
    wait_for(lambda: _reconciles(operator, kind) > done, 30, f"a resync of {kind}")


def test_every_job_reports_what_is_missing(kube: Kube, operator: Operator) -> None:
    """The FusionJob has no runtime yet; the example FedJob's datasets are not on this
    machine (``make demo`` writes them), which fails it before anything starts."""
    ready = kube.wait_reason(FUSIONJOB, NS, "RuntimeNotAvailable")
    assert ready["status"] == "False" and "is not part of this release" in ready["message"]
    ready = kube.wait_reason(FEDJOB, NS, "InvalidForLocalBackend")
    assert ready["status"] == "False"
    assert "spec.clients[0].datasetUri (hospital-a)" in ready["message"]
    assert "lacks ['train.jsonl', 'heldout.jsonl']" in ready["message"]
    for resource, types in (
        (FUSIONJOB, ["Ready", "Progressing", "Degraded"]),
        (FEDJOB, ["Ready", "Progressing", "Degraded", "Failed"]),
    ):
        obj = kube.get(resource, "-n", NS)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        assert [c["type"] for c in obj["status"]["conditions"]] == types


def test_kopf_bookkeeping_stays_out_of_status(kube: Kube, operator: Operator) -> None:
    kube.wait_reason(FEDJOB, NS, "InvalidForLocalBackend")
    obj = kube.get("fedjob/clinical-notes", "-n", NS)
    assert "kopf" not in obj["status"]
    assert "modelfleet.io/last-handled-configuration" in obj["metadata"]["annotations"]


def test_transitions_are_recorded_as_events(kube: Kube, operator: Operator) -> None:
    def reasons() -> set[str]:
        events = kube.get("events", "-n", NS)["items"]
        return {e["reason"] for e in events if e["involvedObject"]["name"] == "clinical-notes"}

    assert wait_for(lambda: "InvalidForLocalBackend" in reasons(), 30, "an event")


def test_webhook_rejects_with_the_models_message(kube: Kube, operator: Operator) -> None:
    bad = (ROOT / "examples" / "invalid" / "fedjob-fedavg-mixed-ranks.yaml").read_text()
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kube("apply", "-n", NS, "-f", "-", stdin=bad)
    message = caught.value.stderr
    assert "denied the request" in message
    assert "spec.aggregation.method: FedAvg averages LoRA A and B separately" in message


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
    kube.wait_reason("fusionjob/fuse-chat", NS, "RuntimeNotAvailable")
    text = _metrics(operator)
    assert 'modelfleet_reconcile_total{kind="FusionJob",result="success"}' in text
    assert 'modelfleet_resources{kind="FedJob",ready="False"} 1.0' in text
    assert "modelfleet_reconcile_duration_seconds_bucket" in text
    assert 'modelfleet_admission_reviews_total{allowed="false",kind="FedJob"}' in text
    assert _metrics(operator, "/healthz") == "ok"


def test_webhook_rejects_a_policy_whose_pool_does_not_exist(kube: Kube, operator: Operator) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kube("apply", "-n", NS, "-f", "-", stdin=FLEET.replace("pool: tiny", "pool: nowhere"))
    assert "spec.targets[1].pool: ModelPool 'nowhere' does not exist in namespace 'local'" in (
        caught.value.stderr
    )


def test_invalid_spec_past_the_webhook_is_reported_once(kube: Kube, operator: Operator) -> None:
    kube("delete", "validatingwebhookconfiguration", "validate.modelfleet.io")
    bad = (ROOT / "examples" / "invalid" / "fedjob-fedavg-mixed-ranks.yaml").read_text()
    kube("apply", "-n", NS, "-f", "-", stdin=bad)
    ready = kube.wait_reason("fedjob/mixed-ranks", NS, "InvalidSpec")
    assert ready["message"].startswith("spec.aggregation.method: FedAvg")
    _reconcile_again(kube, operator, "fedjob/mixed-ranks", "FedJob")
    events = [
        e
        for e in kube.get("events", "-n", NS)["items"]
        if e["involvedObject"]["name"] == "mixed-ranks" and e["reason"] == "InvalidSpec"
    ]
    assert len(events) == 1 and events[0].get("count", 1) == 1
    assert operator.process.poll() is None


def engine_tokens(model: Path, messages: list[dict[str, str]]) -> list[int]:
    """The greedy reply of the served checkpoint, from an engine in this process."""
    tokenizer = HfTokenizer.from_dir(model)
    engine = TorchEngine(load_decoder(model, 512))
    params = SamplingParams(max_tokens=64, stop_token_ids=tokenizer.eos_token_ids)
    engine.add_request("r", tokenizer.encode_chat(messages), params)  # type: ignore[arg-type]
    return [event.token_id for event in engine.stream("r")]


def _pool_status(kube: Kube) -> dict[str, Any]:
    return kube.get(POOL, "-n", NS).get("status") or {}


@pytest.mark.slow
def test_modelpool_serves_through_the_openai_client(
    kube: Kube, operator: Operator, zoo_arith: Path
) -> None:
    ready = kube.wait_reason(POOL, NS, "Serving", timeout=SERVING_TIMEOUT)
    assert ready["status"] == "True", operator.logs()[-3000:]
    status = _pool_status(kube)
    assert status["endpoint"] == POOL_BASE
    assert status["replicas"] == 2
    assert status["replicasByGpuType"] == [{"gpuType": "cpu", "model": "arith", "replicas": 2}]
    assert status["costPerHour"] == "0.20", "two cpu replicas at the example's 0.10"
    assert status["selector"] == "modelfleet.io/workload=chat-serve"
    assert kube("get", POOL, "-n", NS, "-o", "jsonpath={.status.replicas}") == "2"
    kube.wait_reason("routingpolicy/chat-router", NS, "TargetsReady")

    client = openai.OpenAI(base_url=POOL_BASE, api_key=DEMO_KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["arith"]
    question = [{"role": "user", "content": "What is 347 + 85?"}]
    request: dict[str, Any] = {"model": "arith", "messages": question, "temperature": 0}
    whole = client.chat.completions.create(**request, extra_body={"return_token_ids": True})
    expected = engine_tokens(zoo_arith, question)
    assert whole.choices[0].model_extra["token_ids"] == expected
    assert whole.choices[0].message.content == HfTokenizer.from_dir(zoo_arith).decode(expected)
    assert whole.choices[0].message.content.isdigit()
    assert whole.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=1)

    attainment = wait_for(
        lambda: _pool_status(kube).get("sloAttainment") is not None and _pool_status(kube),
        30,
        "the pool's SLO attainment in its status",
    )["sloAttainment"]
    assert 0 <= attainment <= 1
    series = f'modelfleet_modelpool_slo_attainment_ratio{{name="chat",namespace="{NS}"}}'
    assert wait_for(lambda: series in _metrics(operator), 30, "the attainment series")


def _ask(question: str) -> Any:
    client = openai.OpenAI(base_url=ROUTER_BASE, api_key=DEMO_KEY, max_retries=0, timeout=60)
    return client.chat.completions.with_raw_response.create(
        model="fleet",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=8,
    )


@pytest.mark.slow
def test_a_routing_policy_routes_learns_and_outlives_a_pool(kube: Kube, operator: Operator) -> None:
    kube("apply", "-n", NS, "-f", "-", stdin=TINY_POOL)
    kube.wait_reason("modelpool/tiny", NS, "Serving", timeout=SERVING_TIMEOUT)
    kube.wait_reason(POOL, NS, "Serving", timeout=SERVING_TIMEOUT)
    kube("apply", "-n", NS, "-f", "-", stdin=FLEET)
    ready = kube.wait_reason("routingpolicy/fleet", NS, "TargetsReady", timeout=SERVING_TIMEOUT)
    assert ready["status"] == "True", operator.logs()[-3000:]
    assert kube.get("routingpolicy/fleet", "-n", NS)["status"]["endpoint"] == ROUTER_BASE

    questions = [("What is 347 + 85?", "432"), ("Sort: c a b", "a b c"), ("What is 12 + 7?", "19")]
    answered = []
    for question, answer in questions * 2:
        raw = _ask(question)
        reply = raw.parse()
        correct = reply.choices[0].message.content.strip() == answer
        feedback = {"id": reply.id, "correct": correct}
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{ROUTER_BASE}/feedback",
                data=json.dumps(feedback).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {DEMO_KEY}",
                },
            ),
            timeout=10,
        ) as response:
            assert json.loads(response.read())["target"] == raw.headers["x-modelfleet-target"]
        answered.append(raw.headers["x-modelfleet-target"])
    assert answered[0] == "tiny", "untried targets look alike, so the cheaper goes first"
    assert answered[-1] == "arith", f"wrong answers drop mini below minQuality: {answered}"

    def routed() -> dict[str, Any]:
        status: dict[str, Any] = kube.get("routingpolicy/fleet", "-n", NS)["status"]
        return status if status.get("feedback") == len(answered) else {}

    status = wait_for(routed, 30, "decisions and feedback in the policy's status")
    assert sum(status["decisions"].values()) == len(answered)
    assert 0 <= status["observedQuality"] <= 1 and Decimal(status["observedCostPer1kTokens"]) > 0
    assert {p["target"] for p in status["profiles"]} == {"tiny", "arith"}
    series = f'modelfleet_routingpolicy_decisions_total{{name="fleet",namespace="{NS}",'
    assert wait_for(lambda: series in _metrics(operator), 30, "the decisions series")

    kube("delete", "modelpool/tiny", "-n", NS, "--timeout=60s")
    for question, _ in questions:
        assert _ask(question).headers["x-modelfleet-target"] == "arith"
    degraded = kube.wait_reason("routingpolicy/fleet", NS, "TargetNotFound", timeout=60)
    assert degraded["status"] == "True" and "routing to ['arith']" in degraded["message"]
    kube("delete", "routingpolicy/fleet", "-n", NS, "--timeout=60s")


@pytest.mark.slow
def test_scaling_a_pool_drains_in_place(kube: Kube, operator: Operator) -> None:
    kube.wait_reason(POOL, NS, "Serving", timeout=SERVING_TIMEOUT)
    kube("scale", POOL, "-n", NS, "--replicas=1")
    wait_for(lambda: _pool_status(kube).get("replicas") == 1, 120, "the pool to scale to 1")
    ready = kube.wait_reason(POOL, NS, "Serving", timeout=60)
    assert ready["message"].startswith("1 replica(s) serving")
    assert _pool_status(kube)["costPerHour"] == "0.10"
    events = kube.get("events", "-n", NS)["items"]
    updates = [e for e in events if e["reason"] == "WorkloadUpdated"]
    assert any(e["involvedObject"]["name"] == "chat" for e in updates)


@pytest.mark.slow
def test_deleting_a_pool_removes_its_application(kube: Kube, operator: Operator) -> None:
    kube.wait_reason(POOL, NS, "Serving", timeout=SERVING_TIMEOUT)
    kube("delete", POOL, "-n", NS, "--timeout=60s")

    def gone() -> bool:
        try:
            urllib.request.urlopen(f"{POOL_BASE}/models", timeout=5)
        except urllib.error.HTTPError as error:
            return error.code == 404
        return False

    assert wait_for(gone, 60, "the Serve application to be deleted")
    router = kube.wait_reason("routingpolicy/chat-router", NS, "TargetNotFound")
    assert "['chat']" in router["message"]


@pytest.mark.slow
def test_a_pool_that_cannot_deploy_says_why_once(kube: Kube, operator: Operator) -> None:
    bad = """
apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {name: unknown-model}
spec:
  models: [{name: m, uri: "builtin://no-such-model", maxModelLen: 256}]
  replicas: 1
  auth: {mode: None}
"""
    kube("apply", "-n", NS, "-f", "-", stdin=bad)
    ready = kube.wait_reason("modelpool/unknown-model", NS, "DeployFailed", timeout=120)
    assert "unknown builtin model 'no-such-model'" in ready["message"]
    _reconcile_again(kube, operator, "modelpool/unknown-model", "ModelPool")
    assert operator.process.poll() is None
    events = [
        e
        for e in kube.get("events", "-n", NS)["items"]
        if e["involvedObject"]["name"] == "unknown-model" and e["reason"] == "DeployFailed"
    ]
    assert len(events) == 1


@pytest.mark.slow
def test_a_pool_whose_model_cannot_be_fetched_names_the_uri_and_cause(
    kube: Kube, operator: Operator
) -> None:
    uris = {"missing-model": "file:///nonexistent/model", "hub-model": "hf://acme/no-such-model"}
    for name, uri in uris.items():
        pool = f"""
apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {{name: {name}}}
spec:
  models: [{{name: m, uri: "{uri}", maxModelLen: 256}}]
  replicas: 1
  auth: {{mode: None}}
"""
        kube("apply", "-n", NS, "-f", "-", stdin=pool)
    for name, uri in uris.items():
        ready = kube.wait_reason(f"modelpool/{name}", NS, "ModelUnavailable", timeout=60)
        assert ready["status"] == "False"
        assert f"spec.models[0].uri: model '{uri}' is not usable: " in ready["message"]
    assert "Hub could not be reached" in kube.condition("modelpool/hub-model", NS)["message"]
    assert operator.process.poll() is None
    for name in uris:
        kube("delete", f"modelpool/{name}", "-n", NS, "--timeout=60s")


@pytest.mark.slow
def test_a_pool_serves_a_model_from_s3_with_its_credentials_secret(
    kube: Kube, operator: Operator, zoo_arith: Path, s3_server: S3Server
) -> None:
    s3_server.upload_dir(zoo_arith, "fleet-models", "zoo/llama-arith")
    secret = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    kube(
        "create",
        "secret",
        "generic",
        "model-store",
        "-n",
        NS,
        *(f"--from-literal={key}={value}" for key, value in secret.items()),
    )
    pool = """
apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {name: from-s3}
spec:
  models:
    - {name: arith-s3, uri: "s3://fleet-models/zoo/llama-arith", credentialsSecret: model-store,
       maxModelLen: 256}
  replicas: 1
  auth: {mode: None}
"""
    kube("apply", "-n", NS, "-f", "-", stdin=pool)
    ready = kube.wait_reason("modelpool/from-s3", NS, "Serving", timeout=SERVING_TIMEOUT)
    assert ready["status"] == "True", operator.logs()[-3000:]
    endpoint = kube.get("modelpool/from-s3", "-n", NS)["status"]["endpoint"]
    client = openai.OpenAI(base_url=endpoint, api_key="unused", max_retries=0, timeout=60)
    question = [{"role": "user", "content": "What is 12 + 30?"}]
    reply = client.chat.completions.create(
        model="arith-s3", messages=question, temperature=0, extra_body={"return_token_ids": True}
    )
    assert reply.choices[0].model_extra["token_ids"] == engine_tokens(zoo_arith, question)
    status = json.dumps(kube.get("modelpool/from-s3", "-n", NS)["status"])
    assert s3_server.secret_access_key not in status and s3_server.secret_access_key not in (
        operator.logs()
    )
    kube("delete", "modelpool/from-s3", "-n", NS, "--timeout=60s")


GUARDED_POOL = """
apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {name: guarded}
spec:
  models: [{name: mini, uri: "builtin://tiny-llama-mini", maxModelLen: 256}]
  replicas: 1
  auth: {mode: ApiKey, secretName: guarded-keys}
"""


def _accepts(endpoint: str, key: str) -> bool:
    """Whether the pool answers a request made with ``key`` (False on a 401)."""
    client = openai.OpenAI(base_url=endpoint, api_key=key, max_retries=0, timeout=60)
    try:
        client.completions.create(model="mini", prompt="hi", max_tokens=2)
    except openai.AuthenticationError:
        return False
    return True


@pytest.mark.slow
def test_a_pool_waits_for_its_keys_secret_and_follows_its_rotation(
    kube: Kube, operator: Operator
) -> None:
    kube("apply", "-n", NS, "-f", "-", stdin=GUARDED_POOL)
    blocked = kube.wait_reason("modelpool/guarded", NS, "AuthSecretNotFound", timeout=60)
    assert "Secret 'guarded-keys' does not exist in namespace 'local'" in blocked["message"]
    first, second = f"sk-first-{uuid.uuid4().hex}", f"sk-second-{uuid.uuid4().hex}"
    kube("create", "secret", "generic", "guarded-keys", "-n", NS, f"--from-literal=team-a={first}")
    ready = kube.wait_reason("modelpool/guarded", NS, "Serving", timeout=SERVING_TIMEOUT)
    assert ready["status"] == "True", operator.logs()[-3000:]
    endpoint = kube.get("modelpool/guarded", "-n", NS)["status"]["endpoint"]
    assert _accepts(endpoint, first) and not _accepts(endpoint, "sk-guess")

    rotated = json.dumps({"stringData": {"team-a": second}})
    kube("patch", "secret", "guarded-keys", "-n", NS, "--type=merge", "-p", rotated)
    assert wait_for(lambda: not _accepts(endpoint, first), 15, "the old key to be revoked")
    assert _accepts(endpoint, second)
    status = json.dumps(kube.get("modelpool/guarded", "-n", NS)["status"])
    logs = operator.logs()
    assert all(key not in status and key not in logs for key in (first, second))
    kube("delete", "modelpool/guarded", "secret/guarded-keys", "-n", NS, "--timeout=60s")


BURST = 8
BURST_REPLICAS = 2 * (os.cpu_count() or 1) + 2
"""Replicas at 0.5 Ray CPU each: one CPU more than the operator's Ray (a CPU per core) has."""


@pytest.mark.slow
def test_a_burst_of_pools_too_big_for_the_local_ray_says_so_and_deletes_promptly(
    kube: Kube, operator: Operator
) -> None:
    """Rollouts that wait for replicas Ray cannot place say what they lack; deleting the
    pools calls the rollouts off instead of waiting on them, and the operator goes on
    reconciling other resources."""
    names = [f"burst-{index}" for index in range(BURST)]
    for name in names:
        pool = GUARDED_POOL.replace("name: guarded", f"name: {name}").replace(
            "auth: {mode: ApiKey, secretName: guarded-keys}", "auth: {mode: None}"
        )
        sized = pool.replace("replicas: 1", f"replicas: {BURST_REPLICAS}")
        kube("apply", "-n", NS, "-f", "-", stdin=sized)

    def unschedulable() -> dict[str, Any] | None:
        for name in names:
            ready = kube.condition(f"modelpool/{name}", NS)
            if ready.get("reason") == "Unschedulable":
                return ready
        return None

    waiting = wait_for(unschedulable, 120, "a burst pool to say Ray lacks CPUs")
    cpus = os.cpu_count() or 1
    lacks = f"need 0.5 CPU each ({cpus + 1} in all), and the local Ray has {cpus} CPU(s)"
    assert lacks in waiting["message"], waiting["message"]

    started = time.monotonic()
    kube("delete", *(f"modelpool/{name}" for name in names), "-n", NS, "--timeout=90s")
    assert time.monotonic() - started < 90
    job = (ROOT / "examples" / "fedjob.yaml").read_text().replace("clinical-notes", "after-burst")
    kube("apply", "-n", NS, "-f", "-", stdin=job)
    assert kube.wait_reason("fedjob/after-burst", NS, "InvalidForLocalBackend", timeout=30)
    assert operator.process.poll() is None
