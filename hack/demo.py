"""`make demo`: a local control plane, the operator and the examples, shown live.

Leaves the control plane and the operator running so you can keep using
kubectl; `make demo-down` stops them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from modelfleet.devcluster import LocalCluster, find_binaries
from modelfleet.devcluster.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"


def start_operator(cluster: LocalCluster, metrics_port: int) -> int:
    log = (DEMO / "operator.log").open("ab")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "operator" / "main.py"),
            "--backend=local",
            f"--metrics-port={metrics_port}",
            f"--webhook-port={free_port()}",
            "--resync-seconds=10",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    (DEMO / "operator.pid").write_text(str(process.pid))
    return process.pid


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
    print(f"""
The control plane and the operator keep running:
  export KUBECONFIG={cluster.kubeconfig}
  {cluster.bin_dir / "kubectl"} get modelfleet
  {cluster.bin_dir / "kubectl"} explain fedjob.spec.clients
  operator log: {DEMO / "operator.log"}
Stop everything with: make demo-down""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", action="store_true", help="stop the demo")
    args = parser.parse_args()
    cluster = LocalCluster(DEMO / "cluster", find_binaries())
    stop_operator()
    cluster.stop(remove=True)
    if args.down:
        print("demo stopped")
        return 0
    DEMO.mkdir(exist_ok=True)
    print("Starting etcd + kube-apiserver on loopback ...")
    cluster.start()
    print(f"  API server {cluster.server}, kubeconfig {cluster.kubeconfig}")
    print(cluster.kubectl("apply", "-f", str(ROOT / "crds")).strip())
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    metrics_port = free_port()
    print(f"Starting the operator (backend=local), pid {start_operator(cluster, metrics_port)}")
    wait_for_webhook(cluster)
    print(cluster.kubectl("apply", "-f", str(ROOT / "examples")).strip())
    show(cluster, wait_for_conditions(cluster), metrics_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
