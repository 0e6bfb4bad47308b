"""A FedJob run for real by the operator on the embedded default backend: three Flower
SuperNodes of ranks 4, 8 and 16, each with its own site's data, FLoRA over their adapters
with compressed uploads; every round shows in status, the job ends Succeeded, and a
ModelPool serves the federated adapter, which beats the base model on the clients' skills.
"""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from e2e.conftest import Kube, Operator, namespace, wait_for
from modelfleet.devcluster.cluster import free_port
from modelfleet.federated.datasets import write_site_dataset
from modelfleet.federated.processes import find_marked_processes
from modelfleet.zoo.cache import ensure_model
from modelfleet.zoo.skills import SKILLS, Example, Split

pytestmark = pytest.mark.envtest
NS = "federated"
SERVE_PORT = free_port()
BASE_MODEL = "qwen-tiny"
SITES = {"clinic-a": ("reversal", 4), "clinic-b": ("sorting", 8), "clinic-c": ("maximum", 16)}
"""Each client's main skill and LoRA rank."""
ROUNDS = 3
HELDOUT = 100
"""Held-out questions per skill: the base model gets about 90% of them right."""
RUN_TIMEOUT = 900


OPERATOR_ARGS = (
    "--backend=local",
    "--standalone",
    "--webhook=off",
    f"--namespace={NS}",
    f"--serve-port={SERVE_PORT}",
)


@pytest.fixture(scope="module")
def operator(kube: Kube, start_operator: Any) -> Iterator[Operator]:
    ensure_model(BASE_MODEL)
    namespace(kube, NS)
    running: Operator = start_operator(*OPERATOR_ARGS)
    yield running
    running.stop()


def fedjob(tmp_path: Path) -> dict[str, Any]:
    skills = sorted({skill for skill, _ in SITES.values()})
    clients = []
    for seed, (name, (skill, rank)) in enumerate(SITES.items()):
        site = write_site_dataset(tmp_path / name, skill, skills, seed, 800, 20)
        clients.append(
            {"name": name, "datasetUri": f"file://{site}", "rank": rank, "site": f"site-{seed}"}
        )
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "FedJob",
        "metadata": {"name": "clinics"},
        "spec": {
            "baseModel": {"uri": f"zoo://{BASE_MODEL}", "family": "Qwen"},
            "adapter": {"alpha": 16, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "clients": clients,
            "rounds": ROUNDS,
            "localSteps": 50,
            "aggregation": {"method": "FLoRA", "minClients": 3},
            "compression": {"sparsity": 0.8, "quantization": "Int8"},
            "output": {"uri": f"file://{tmp_path / 'run'}"},
        },
    }


def reply_loss(client: openai.OpenAI, model: str, questions: list[Example]) -> float:
    """Mean negative log-likelihood per token of the right replies (and the turn's end), as
    the pool scores them: each question in the chat format with its answer appended,
    echoed back with every token's log-probability. The objective the clients trained;
    it moves where exact-match accuracy of a base already near its ceiling does not."""

    def scored(example: Example) -> tuple[float, int]:
        prefix = f"<|im_start|>user\n{example.prompt}<|im_end|>\n<|im_start|>assistant\n"
        text = f"{prefix}{example.answer}<|im_end|>"
        reply = client.completions.create(
            model=model, prompt=text, max_tokens=1, echo=True, logprobs=0, temperature=0
        )
        logprobs = reply.choices[0].logprobs
        assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
        # Where each token starts in the text, counting the chat markers it spells out.
        starts = itertools.accumulate((len(token) for token in logprobs.tokens), initial=0)
        answer = [
            value
            for start, value in zip(starts, logprobs.token_logprobs, strict=False)
            if len(prefix) <= start < len(text) and value is not None
        ]
        assert answer, f"no token of the reply {example.answer!r} in {logprobs.tokens}"
        return -sum(answer), len(answer)

    with ThreadPoolExecutor(max_workers=4) as pool:
        totals = list(pool.map(scored, questions))
    return sum(nll for nll, _ in totals) / sum(count for _, count in totals)


def accuracy(client: openai.OpenAI, model: str, questions: list[Example]) -> float:
    def right(example: Example) -> bool:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": example.prompt}],
            temperature=0,
            max_tokens=24,
        )
        return (reply.choices[0].message.content or "") == example.answer

    with ThreadPoolExecutor(max_workers=4) as pool:
        return sum(pool.map(right, questions)) / len(questions)


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 600)
def test_a_fedjob_federates_an_adapter_a_modelpool_serves(
    kube: Kube, operator: Operator, start_operator: Any, tmp_path: Path
) -> None:
    """Killing the operator mid-run stops nothing: its successor finds the run by its
    processes and follows it to the end."""
    kube("apply", "-n", NS, "-f", "-", stdin=json.dumps(fedjob(tmp_path)))
    uid = kube.get("fedjob/clinics", "-n", NS)["metadata"]["uid"]
    seen: dict[int, dict[str, Any]] = {}

    def ended() -> dict[str, Any] | None:
        status = kube.get("fedjob/clinics", "-n", NS).get("status") or {}
        if status.get("round"):
            seen.setdefault(status["round"], status)
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        return status if "Succeeded" in conditions or "Failed" in conditions else None

    wait_for(lambda: ended() or seen, RUN_TIMEOUT, "the first round in status")
    operator.stop(signal.SIGKILL)
    successor: Operator = start_operator(*OPERATOR_ARGS)
    try:
        status = wait_for(ended, RUN_TIMEOUT, "the FedJob to end")
    finally:
        print(successor.logs()[-2000:])
    started = [
        e["reason"]
        for e in kube.get("events", "-n", NS)["items"]
        if e["involvedObject"]["name"] == "clinics" and e["reason"].startswith("Workload")
    ]
    assert started == ["WorkloadCreated"], "the successor started the federation again"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions.get("Succeeded", {}).get("status") == "True", status["conditions"]
    assert conditions["Succeeded"]["reason"] == "RoundsCompleted"
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Progressing"]["status"] == "False"
    assert sorted(seen) == list(range(1, ROUNDS + 1)), f"rounds seen in status: {sorted(seen)}"
    sent = [seen[r]["bytesSent"] for r in sorted(seen)]
    assert all(later > earlier for earlier, later in itertools.pairwise(sent))
    for round_status in seen.values():
        assert round_status["clientsReporting"] == len(SITES)
        assert round_status["epsilonSpent"] == 0
        assert round_status["metrics"]["compressionRatio"] > 2
        assert 0 <= round_status["metrics"]["evalAccuracy"] <= 1
    [adapter] = status["artifacts"]
    assert adapter["name"] == "adapter"
    assert (Path(adapter["uri"].removeprefix("file://")) / "adapter_config.json").is_file()
    wait_for(lambda: not find_marked_processes(f"fedjob-{uid}"), 60, "the run's processes to exit")

    pool = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "federated"},
        "spec": {
            "models": [
                {
                    "name": "base",
                    "uri": f"zoo://{BASE_MODEL}",
                    "adapters": [{"name": "clinics", "uri": adapter["uri"]}],
                }
            ],
            "replicas": 1,
            "auth": {"mode": "None"},
        },
    }
    kube("apply", "-n", NS, "-f", "-", stdin=json.dumps(pool))
    ready = kube.wait_reason("modelpool/federated", NS, "Serving", timeout=300)
    assert ready["status"] == "True"
    endpoint = kube.get("modelpool/federated", "-n", NS)["status"]["endpoint"]
    client = openai.OpenAI(base_url=endpoint, api_key="unused", max_retries=2, timeout=120)
    gains, losses = [], {}
    for skill in sorted({skill for skill, _ in SITES.values()}):
        questions = SKILLS[skill].take(Split.HELDOUT, 4242, HELDOUT)
        base, federated = (
            accuracy(client, "base", questions),
            accuracy(client, "clinics", questions),
        )
        losses[skill] = (
            reply_loss(client, "base", questions),
            reply_loss(client, "clinics", questions),
        )
        print(
            f"{skill}: held-out accuracy base {base:.2f}, federated adapter {federated:.2f}; "
            f"loss of the right replies base {losses[skill][0]:.4f}, adapter {losses[skill][1]:.4f}"
        )
        gains.append(federated - base)
    better = [
        skill for skill, (base_loss, adapter_loss) in losses.items() if adapter_loss < base_loss
    ]
    assert better == sorted(losses), f"the served adapter does not beat the base model: {losses}"
    assert sum(gains) > -0.03 * len(gains), f"the served adapter answers worse: {gains}"

    kube("delete", "fedjob/clinics", "modelpool/federated", "-n", NS, "--timeout=120s")
