"""`make demo`: a local control plane, the operator and the examples, shown live.

Leaves the control plane and the operator running so you can keep using
kubectl; `make demo-down` stops them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import yaml

from modelfleet.devcluster import LocalCluster, find_binaries
from modelfleet.devcluster.cluster import free_port
from modelfleet.federated.datasets import write_site_dataset
from modelfleet.zoo.cache import ensure_model, model_dir
from modelfleet.zoo.manifest import read_manifest
from modelfleet.zoo.skills import SKILLS, Example, Split

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
ZOO_MODEL = "llama-arith"
TINY_MODEL = "qwen-tiny"
DEMO_SEED = 2026
FLEET = ROOT / "examples" / "fleet"
DEMO_KEY = yaml.safe_load((ROOT / "examples" / "api-keys.yaml").read_text())["stringData"]["demo"]
"""The API key of the examples' Secret, which every example pool and router checks."""
FEDJOB = yaml.safe_load((ROOT / "examples" / "fedjob.yaml").read_text())
FEDJOB_SITES = {"hospital-a": "reversal", "hospital-b": "sorting", "hospital-c": "maximum"}
"""The skill each client of the example FedJob mostly holds."""
FEDJOB_ROOT = Path("/tmp/modelfleet-fedjob")
"""Where the example FedJob's datasets and output live (its file:// URIs)."""
ROUTED = {"addition": 2, "sorting": 2, "reversal": 2, "maximum": 2, "facts": 2}
"""Held-out questions per skill the demo sends through the RoutingPolicy."""


def start_operator(cluster: LocalCluster, metrics_port: int, serve_port: int) -> int:
    log = (DEMO / "operator.log").open("ab")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "operator" / "main.py"),
            "--backend=local",
            f"--metrics-port={metrics_port}",
            f"--webhook-port={free_port()}",
            f"--serve-port={serve_port}",
            "--resync-seconds=5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    (DEMO / "operator.pid").write_text(str(process.pid))
    return process.pid


def stop_federations(cluster: LocalCluster) -> None:
    """Delete the FedJobs while the operator runs: its delete handler ends their Flower
    processes, which outlive the operator by design."""
    if (DEMO / "operator.pid").exists() and cluster.kubeconfig.exists():
        cluster.kubectl(
            "delete", "fedjobs", "--all", "--all-namespaces", "--timeout=60s", check=False
        )


def stop_operator() -> None:
    pid_file = DEMO / "operator.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink()


def wait_for_conditions(cluster: LocalCluster, timeout: float = 90) -> list[dict[str, object]]:
    """Every example resource, once each has a Ready condition (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        items = json.loads(cluster.kubectl("get", "modelfleet", "-o", "json"))["items"]
        done = all((i.get("status") or {}).get("conditions") for i in items)
        if done or time.monotonic() > deadline:
            return list(items)
        time.sleep(1)


def wait_for_webhook(cluster: LocalCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.kubectl("get", "validatingwebhookconfigurations", "-o", "name", check=False)
        if "validate.modelfleet.io" in out:
            return
        time.sleep(1)
    raise TimeoutError(f"the operator did not register its webhook; see {DEMO / 'operator.log'}")


def show(cluster: LocalCluster, items: list[dict[str, object]], metrics_port: int) -> None:
    print("\n$ kubectl get modelfleet")
    print(cluster.kubectl("get", "modelfleet"))
    print("Conditions:")
    for item in items:
        meta = item["metadata"]
        assert isinstance(meta, dict)
        status = item.get("status") or {}
        assert isinstance(status, dict)
        for condition in status.get("conditions", []):
            if condition["type"] == "Ready":
                print(
                    f"  {item['kind']}/{meta['name']}: Ready={condition['status']} "
                    f"({condition['reason']})\n    {condition.get('message', '')}"
                )
    print("\nAn invalid FedJob is rejected by the admission webhook:")
    bad = (ROOT / "examples" / "invalid" / "fedjob-fedavg-mixed-ranks.yaml").read_text()
    print("  " + cluster.kubectl("apply", "-f", "-", check=False, stdin=bad).strip())
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    print(f"\nOperator metrics at {url} (a few lines):")
    for line in [
        ln for ln in lines if ln.startswith(("modelfleet_reconcile_total", "modelfleet_resources"))
    ][:8]:
        print("  " + line)


def write_fedjob_sites() -> None:
    """The example FedJob's client datasets, each site mostly one skill, and no old run."""
    shutil.rmtree(FEDJOB_ROOT, ignore_errors=True)
    skills = tuple(FEDJOB_SITES.values())
    for seed, client in enumerate(FEDJOB["spec"]["clients"]):
        site = Path(client["datasetUri"].removeprefix("file://"))
        write_site_dataset(site, FEDJOB_SITES[client["name"]], skills, seed, 600, 20)
    print(f"  wrote the example FedJob's client datasets under {FEDJOB_ROOT}")


def watch_fedjob(cluster: LocalCluster, timeout: float = 900) -> None:
    """Print each round of the example FedJob as its status shows it, until it ends."""
    name = f"fedjob/{FEDJOB['metadata']['name']}"
    spec = FEDJOB["spec"]
    print(
        f"\nFederated LoRA: {name}, {len(spec['clients'])} Flower SuperNodes (ranks "
        f"{[c['rank'] for c in spec['clients']]}) on {spec['baseModel']['uri']}, "
        f"{spec['aggregation']['method']} over {spec['rounds']} rounds"
    )
    deadline = time.monotonic() + timeout
    shown = 0
    while time.monotonic() < deadline:
        status = json.loads(cluster.kubectl("get", name, "-o", "json")).get("status") or {}
        if status.get("round", 0) > shown:
            shown = status["round"]
            metrics = status.get("metrics", {})
            print(
                f"  round {shown}: {status.get('clientsReporting')} clients, "
                f"{status.get('bytesSent')} bytes sent so far, eval loss "
                f"{metrics.get('evalLoss', float('nan')):.3f}, eval accuracy "
                f"{metrics.get('evalAccuracy', float('nan')):.2f}, "
                f"{metrics.get('secondsPerRound', float('nan')):.0f} s/round, compression "
                f"x{metrics.get('compressionRatio', float('nan')):.1f}",
                flush=True,
            )
        ended = [
            c
            for c in status.get("conditions", [])
            if c["type"] in ("Succeeded", "Failed") and c["status"] == "True"
        ]
        if ended:
            print(f"  {ended[0]['type']} ({ended[0]['reason']}): {ended[0].get('message')}")
            for artifact in status.get("artifacts", []):
                print(f"  artifact {artifact['name']}: {artifact['uri']}")
            print("\n$ kubectl get fedjob")
            print(cluster.kubectl("get", "fedjob"))
            return
        time.sleep(3)
    raise TimeoutError(f"{name} did not end in {timeout}s; see {DEMO / 'operator.log'}")


def wait_until_ready(
    cluster: LocalCluster,
    resource: str,
    timeout: float = 300,
    settled: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> dict[str, Any]:
    """The resource's status once it is Ready and ``settled``, printing each new Ready
    reason on the way."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status = json.loads(cluster.kubectl("get", resource, "-o", "json")).get("status") or {}
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c["type"] == "Ready"), {}
        )
        line = f"  Ready={ready.get('status')} ({ready.get('reason')}): {ready.get('message')}"
        if line != last:
            print(line, flush=True)
            last = line
        if ready.get("status") == "True" and settled(status):
            return dict(status)
        time.sleep(2)
    raise TimeoutError(f"{resource} was not ready in {timeout}s; see {DEMO / 'operator.log'}")


def ask(client: openai.OpenAI, example: Example) -> str:
    """The pool's greedy answer to one question."""
    reply = client.chat.completions.create(
        model="arith", messages=[{"role": "user", "content": example.prompt}], temperature=0
    )
    return reply.choices[0].message.content or ""


def query_pool(endpoint: str) -> None:
    """Questions held out from training, of both skills the model was trained on, sent
    together through the official openai client; each answer next to the exact one, then
    the share right against the held-out accuracy the zoo measured, and a streamed reply."""
    stranger = openai.OpenAI(base_url=endpoint, api_key="not-a-key", max_retries=0, timeout=60)
    try:
        stranger.models.list()
    except openai.AuthenticationError as refused:
        print(f"  a wrong key gets {refused.status_code}: {refused.message}")
    client = openai.OpenAI(base_url=endpoint, api_key=DEMO_KEY, max_retries=2, timeout=60)
    print(f"  models (with the key of Secret demo-keys): {[m.id for m in client.models.list()]}")
    measured = read_manifest(model_dir(ZOO_MODEL))
    for skill, count in (("addition", 12), ("sorting", 4)):
        questions = SKILLS[skill].take(Split.HELDOUT, DEMO_SEED, count)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda e: ask(client, e), questions))
        for example, answer in zip(questions, answers, strict=True):
            mark = "right" if answer == example.answer else "WRONG"
            print(
                f"  {example.prompt:<28} model: {answer:<12} expected: {example.answer:<12} {mark}"
            )
        right = sum(a == e.answer for a, e in zip(answers, questions, strict=True))
        zoo = f"{measured.accuracy[skill]:.0%}" if measured else "unknown"
        print(
            f"  {skill}: {right}/{count} right here; held-out accuracy measured by the zoo: {zoo}"
        )
    started = time.perf_counter()
    first = 0.0
    text = ""
    stream = client.chat.completions.create(
        model="arith",
        messages=[{"role": "user", "content": "What is 416 + 587?"}],
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            text += chunk.choices[0].delta.content
    total = time.perf_counter() - started
    print(
        f"  streamed 'What is 416 + 587?' (expected 1003): {text!r}, first token after "
        f"{first * 1000:.0f} ms, all in {total * 1000:.0f} ms"
    )


def build_zoo_models() -> None:
    """Train (or find cached) the zoo models the demo serves, showing progress."""
    print(
        f"\nThe pools serve zoo://{ZOO_MODEL} (a tiny Llama: addition, sorting) and "
        f"zoo://{TINY_MODEL} (a tinier Qwen2: reversal, sorting, facts, maximum), trained "
        f"here on generated skills"
    )
    for name in (ZOO_MODEL, TINY_MODEL):
        started = time.monotonic()
        path = ensure_model(name, progress=lambda line: print(f"  {line}", flush=True))
        print(f"  ready in {time.monotonic() - started:.0f} s: {path}")


def routing_policy() -> dict[str, Any]:
    """The example RoutingPolicy with prices and profile scores from what the zoo
    measured: price proportional to parameters, score = held-out accuracy per skill."""
    policy: dict[str, Any] = yaml.safe_load((FLEET / "skills-router.yaml").read_text())
    models = {"arith": ZOO_MODEL, "tiny": TINY_MODEL}
    manifests = {target: read_manifest(model_dir(name)) for target, name in models.items()}
    spec = policy["spec"]
    for target in spec["targets"]:
        manifest = manifests[target["name"]]
        if manifest is not None:
            target["costPer1kTokens"] = f"{manifest.parameters / 1e6:.3f}"
    for profile in spec["capabilityProfiles"]:
        manifest = manifests[profile["target"]]
        if manifest is not None:
            profile["score"] = round(manifest.accuracy[profile["cluster"]], 3)
    return policy


def route_questions(cluster: LocalCluster) -> None:
    """Held-out questions of every skill through the policy's endpoint: which model
    answered each, why, and whether it was right; then rate the answers and show what
    the policy's status learned."""
    print(f"\n$ kubectl apply -f {FLEET / 'tiny-pool.yaml'}")
    print("  " + cluster.kubectl("apply", "-f", str(FLEET / "tiny-pool.yaml")).strip())
    wait_until_ready(cluster, "modelpool/tiny")
    policy = routing_policy()
    prices = {t["name"]: t["costPer1kTokens"] for t in policy["spec"]["targets"]}
    print(f"\nRoutingPolicy skills: CostOfPass, prices per 1k tokens {prices}")
    print("  " + cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy)).strip())
    status = wait_until_ready(cluster, "routingpolicy/skills")
    endpoint = status["endpoint"]
    print(f"  endpoint {endpoint}")
    questions = [
        example
        for skill, count in ROUTED.items()
        for example in SKILLS[skill].take(Split.HELDOUT, DEMO_SEED + 1, count)
    ]
    client = openai.OpenAI(base_url=endpoint, api_key=DEMO_KEY, max_retries=2, timeout=60)
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda e: ask_router(client, e), questions))
    for example, (answer_id, target, reason, answer) in zip(questions, replies, strict=True):
        right = answer == example.answer
        print(
            f"  {example.prompt:<38} -> {target:<5} {answer:<10} "
            f"{'right' if right else 'WRONG (expected ' + example.answer + ')'}"
        )
        print(f"      why: {reason}")
        rate = {"id": answer_id, "correct": right}
        request = urllib.request.Request(
            f"{endpoint}/feedback",
            data=json.dumps(rate).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {DEMO_KEY}"},
        )
        urllib.request.urlopen(request, timeout=10).close()
    correct = sum(r[3] == e.answer for r, e in zip(replies, questions, strict=True))
    print(f"  {correct}/{len(questions)} right; each answer rated through {endpoint}/feedback")
    learned = wait_until_ready(
        cluster, "routingpolicy/skills", 60, lambda s: s.get("feedback", 0) >= len(questions)
    )
    print(
        f"  status: decisions {learned.get('decisions')}, observedQuality "
        f"{learned.get('observedQuality')}, observedCostPer1kTokens "
        f"{float(learned.get('observedCostPer1kTokens', 'nan')):.3f}"
    )
    print("\n$ kubectl get routingpolicy")
    print(cluster.kubectl("get", "routingpolicy"))


def ask_router(client: openai.OpenAI, example: Example) -> tuple[str, str, str, str]:
    """(response id, target, reason, answer) of one routed question."""
    raw = client.chat.completions.with_raw_response.create(
        model="skills", messages=[{"role": "user", "content": example.prompt}], temperature=0
    )
    reply = raw.parse()
    return (
        reply.id,
        raw.headers["x-modelfleet-target"],
        raw.headers["x-modelfleet-route"],
        reply.choices[0].message.content or "",
    )


def serve_demo(cluster: LocalCluster) -> None:
    print(f"\nServing modelpool/chat (zoo://{ZOO_MODEL}) on a local Ray: Ray Serve, 2 replicas")
    status = wait_until_ready(cluster, "modelpool/chat")
    endpoint = status["endpoint"]
    print(f"  endpoint {endpoint}")
    query_pool(endpoint)
    route_questions(cluster)
    print("\n$ kubectl scale modelpool chat --replicas 1   (drains a replica; no stream is cut)")
    print("  " + cluster.kubectl("scale", "modelpool/chat", "--replicas=1").strip())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pool = json.loads(cluster.kubectl("get", "modelpool/chat", "-o", "json"))
        if (pool.get("status") or {}).get("replicas") == 1:
            break
        time.sleep(2)
    print("\n$ kubectl get modelpool")
    print(cluster.kubectl("get", "modelpool"))


def footer(cluster: LocalCluster) -> None:
    print(f"""
The control plane, the operator and its Ray keep running:
  export KUBECONFIG={cluster.kubeconfig}
  {cluster.bin_dir / "kubectl"} get modelfleet
  {cluster.bin_dir / "kubectl"} explain fedjob.spec.clients
  curl -s -H "Authorization: Bearer {DEMO_KEY}" \\
    $(kubectl get modelpool chat -o jsonpath='{{.status.endpoint}}')/models
  operator log: {DEMO / "operator.log"}
Stop everything with: make demo-down""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", action="store_true", help="stop the demo")
    args = parser.parse_args()
    cluster = LocalCluster(DEMO / "cluster", find_binaries())
    stop_federations(cluster)
    stop_operator()
    cluster.stop(remove=True)
    shutil.rmtree(FEDJOB_ROOT, ignore_errors=True)
    if args.down:
        print("demo stopped")
        return 0
    DEMO.mkdir(exist_ok=True)
    print("Starting etcd + kube-apiserver on loopback ...")
    cluster.start()
    print(f"  API server {cluster.server}, kubeconfig {cluster.kubeconfig}")
    print(cluster.kubectl("apply", "-f", str(ROOT / "crds")).strip())
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    build_zoo_models()
    write_fedjob_sites()
    metrics_port = free_port()
    pid = start_operator(cluster, metrics_port, free_port())
    print(f"Starting the operator (backend=local), pid {pid}")
    wait_for_webhook(cluster)
    print(cluster.kubectl("apply", "-f", str(ROOT / "examples")).strip())
    show(cluster, wait_for_conditions(cluster), metrics_port)
    serve_demo(cluster)
    watch_fedjob(cluster)
    footer(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
