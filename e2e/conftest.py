"""The envtest tier: a real etcd + kube-apiserver per session, the operator as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelfleet.devcluster import LocalCluster, find_binaries
from modelfleet.devcluster.cluster import free_port
from modelfleet.scheduling.inventory import describe_node
from tests.kuberay_crds import PLURALS as KUBERAY_PLURALS
from tests.kuberay_crds import for_kube_1_20, load_crd

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 60, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


@dataclass
class Operator:
    """An operator process and where to reach its probes."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


class Kube:
    """kubectl against the test cluster, plus JSON helpers."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return self.cluster.kubectl(*args, check=check, stdin=stdin)

    def get(self, *args: str) -> Any:
        return json.loads(self("get", *args, "-o", "json"))

    def condition(self, resource: str, namespace: str, kind: str = "Ready") -> dict[str, Any]:
        status = self.get(resource, "-n", namespace).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == kind), {})

    def wait_reason(
        self, resource: str, namespace: str, reason: str, timeout: float = 60
    ) -> dict[str, Any]:
        return wait_for(
            lambda: (c := self.condition(resource, namespace)).get("reason") == reason and c,
            timeout,
            f"{resource} in {namespace} to report {reason}",
        )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), find_binaries()).start()
    local.kubectl("apply", "-f", str(ROOT / "crds"))
    local.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    yield local
    local.stop(remove=True)


@pytest.fixture(scope="session")
def kuberay_crds(cluster: LocalCluster) -> None:
    """KubeRay's real CRDs (RayCluster, RayJob, RayService; v1.7, read from outside the
    repository, see tests.kuberay_crds) installed once per session, so the API server
    validates, defaults and prunes the operator's children with KubeRay's own structural
    schemas and serves their status subresource. Requested only by tests that need them:
    the session starts without KubeRay.

    What this 1.20 API server does not accept is stripped (``for_kube_1_20``):
    ``x-kubernetes-validations`` (CEL rules, 1.25 or newer), empty-string defaults (1.20
    reads them as null and rejects the CRD), and the list-map keys of ``imagePullSecrets``,
    whose key loses that default. They are created, or replace what a test installed before,
    never applied: client-side apply's last-applied annotation of a schema this large is over
    the 256 KiB annotation limit.
    """
    for plural in KUBERAY_PLURALS:
        crd = for_kube_1_20(load_crd(plural))
        found = cluster.kubectl("get", "crd", crd["metadata"]["name"], "--ignore-not-found")
        verb = "replace" if found.strip() else "create"
        cluster.kubectl(verb, "-f", "-", stdin=json.dumps(crd))
    names = [f"crd/{plural}.ray.io" for plural in KUBERAY_PLURALS]
    cluster.kubectl("wait", "--for=condition=Established", *names, "--timeout=60s")


@pytest.fixture(scope="session")
def zoo_arith() -> Path:
    """The zoo model the examples serve (``zoo://llama-arith``), trained once, cached."""
    from modelfleet.zoo.cache import ensure_model

    return ensure_model("llama-arith")


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster) -> Kube:
    return Kube(cluster)


@pytest.fixture(scope="session")
def start_operator(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Operator]]:
    """Start operator processes with extra CLI args; all are stopped at the end."""
    started: list[Operator] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Operator:
        log = tmp_path_factory.mktemp("operator") / "operator.log"
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "operator" / "main.py"),
                f"--metrics-port={port}",
                f"--webhook-port={free_port()}",
                "--resync-seconds=2",
                *args,
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), **(env or {})},
        )
        operator = Operator(process, port, log)
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


def namespace(kube: Kube, name: str) -> str:
    kube("create", "namespace", name)
    return name


MIXED_CLUSTER = [
    *(
        describe_node(f"h100-a{i}", "NVIDIA-H100-80GB-HBM3", 8, "infiniband", "ib-a")
        for i in range(2)
    ),
    *(
        describe_node(f"h100-b{i}", "NVIDIA-H100-80GB-HBM3", 8, "infiniband", "ib-b")
        for i in range(2)
    ),
    *(describe_node(f"a100-{i}", "NVIDIA-A100-SXM4-80GB", 8, "roce", "roce-1") for i in range(2)),
    describe_node("l4-0", "NVIDIA-L4", 8),
]


def create_nodes(kube: Kube) -> None:
    """Node objects modelling a heterogeneous cluster: two InfiniBand islands of H100,
    a RoCE island of A100 and an Ethernet-only L4 node. No kubelet runs, so the GPU
    count is given by the GPU feature discovery label rather than node status."""
    for node in MIXED_CLUSTER:
        labels = node["metadata"]["labels"]
        labels["nvidia.com/gpu.count"] = node["status"]["capacity"]["nvidia.com/gpu"]
        labels["kubernetes.io/hostname"] = node["metadata"]["name"]
        body = {"apiVersion": "v1", "kind": "Node", "metadata": node["metadata"]}
        kube("apply", "-f", "-", stdin=json.dumps(body))
