"""How the operator's cost grows with the number of resources.

Applies N FedJobs to a real local API server and times how long until every
one carries a Ready condition for its generation, with the operator's
resident memory afterwards. N=500 is compared against N=50 measured in the
same run, each with a fresh operator process, so the ratios say how cost
grows rather than how fast this machine happens to be.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from result_lines import print_result

from modelfleet.devcluster import LocalCluster, find_binaries
from modelfleet.devcluster.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def fedjobs(count: int) -> str:
    template = yaml.safe_load((ROOT / "examples" / "fedjob.yaml").read_text())
    documents = []
    for index in range(count):
        template["metadata"] = {"name": f"job-{index:04d}"}
        documents.append(yaml.safe_dump(template))
    return "---\n".join(documents)


def all_ready(cluster: LocalCluster, namespace: str, count: int) -> bool:
    items = json.loads(cluster.kubectl("get", "fedjobs", "-n", namespace, "-o", "json"))["items"]
    settled = [
        item
        for item in items
        if (item.get("status") or {}).get("observedGeneration") == item["metadata"]["generation"]
        and (item.get("status") or {}).get("conditions")
    ]
    return len(settled) == count


def measure(cluster: LocalCluster, count: int, workdir: Path) -> tuple[float, float]:
    """Seconds from the first create to all Ready, and operator RSS (MiB) then."""
    namespace = f"scale-{count}"
    cluster.kubectl("create", "namespace", namespace)
    log = (workdir / f"operator-{count}.log").open("wb")
    operator = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "operator" / "main.py"),
            "--backend=local",
            "--standalone",
            f"--namespace={namespace}",
            f"--metrics-port={free_port()}",
            f"--webhook-port={free_port()}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )
    try:
        time.sleep(5)
        manifests = fedjobs(count)
        started = time.perf_counter()
        cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=manifests)
        while not all_ready(cluster, namespace, count):
            if time.perf_counter() - started > 900:
                raise TimeoutError(f"{count} FedJobs not Ready after 900 s")
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        return elapsed, rss_mib(operator.pid)
    finally:
        operator.terminate()
        operator.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--large", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cluster = LocalCluster(workdir / "cluster", find_binaries()).start()
        try:
            cluster.kubectl("apply", "-f", str(ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "crd", "--all")
            results = {n: measure(cluster, n, workdir) for n in (args.small, args.large)}
        finally:
            cluster.stop()
    print(f"{'N':>6} {'to all Ready (s)':>17} {'per resource (ms)':>18} {'operator RSS (MiB)':>19}")
    for count, (seconds, rss) in results.items():
        print(f"{count:>6} {seconds:>17.1f} {1000 * seconds / count:>18.1f} {rss:>19.1f}")
    (small_s, small_rss), (large_s, large_rss) = results[args.small], results[args.large]
    scale = args.large / args.small
    print(
        f"ratio N={args.large} vs N={args.small} ({scale:.0f}x resources): "
        f"time {large_s / small_s:.2f}x, time per resource {large_s / small_s / scale:.2f}x, "
        f"RSS {large_rss / small_rss:.2f}x"
    )
    print_result(
        f"operator_time_per_resource_ratio_{args.large}_vs_{args.small}",
        large_s / small_s / scale,
    )
    print_result(f"operator_rss_mib_{args.large}", large_rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
