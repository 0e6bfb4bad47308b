"""How the operator's cost grows with the number of resources.

For each N, a fresh operator process (``--backend=local``, admission webhook on)
watches its own namespace on a real local API server; N FedJobs are created
there and each one's settle latency is recorded: from its creation until its
Ready condition was computed for the object's current generation. The status
that condition carries does not matter: the example FedJob's client datasets
are not on this machine, so every FedJob settles at Ready=False
InvalidForLocalBackend before anything starts, and this measures the time to a
settled Ready condition at the object's generation, not to Ready=True.

The FedJobs are created one request at a time, as ``kubectl create -f`` does,
and each create passes through the operator's webhook, so the time until all
have settled includes how fast the operator admits them; the per-object
latencies say separately whether its reconciles keep up with the creates. An
object's creation time is when its create call returned or the watch first
showed it, whichever came first (creationTimestamp has whole seconds only).

Settling is observed through one watch, not by listing the namespace over and
over: a list of thousands of objects costs the API server more CPU than the
operator spends on them and would distort what is measured. The operator's
resident memory and CPU time are read from /proc once everything has settled.
Comparing N values measured in the same run, on the same machine, says how
the cost grows rather than how fast this machine happens to be. Each N runs
``--repeats`` times (3), interleaved across N so that a noisy minute does not
land on one N only; ratios are of medians, with 95% bootstrap intervals over
the repeats. Ends with ``RESULT`` lines:
``operator_time_per_resource_ratio_<largest N>_vs_<smallest N>``,
``operator_rss_mib_<largest N>``, ``operator_p99_settle_s_<N>`` for each N and
``operator_rss_kib_per_resource_<largest N>``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common.bootstrap import ratio_interval
from common.result_lines import print_result
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from modelfleet.devcluster import LocalCluster, find_binaries
from modelfleet.devcluster.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
GROUP, VERSION, PLURAL = "modelfleet.io", "v1alpha1", "fedjobs"
WEBHOOK_TIMEOUT_S = 120.0
"""Starting Python, importing kopf and the controllers, and registering the webhook."""
WATCH_WINDOW_S = 5
"""Each watch request ends after this long and resumes from the last resourceVersion,
so the watcher notices within this time that it should stop."""


@dataclass(frozen=True)
class Run:
    """What one N cost: wall time, per-object settle latencies and the operator's usage."""

    count: int
    seconds: float
    latencies: list[float]
    rss_mib: float
    cpu_seconds: float
    apiserver_cpu_seconds: float
    verdicts: Counter[str]


class SettleWatch:
    """Records, from a watch on one namespace's FedJobs, when each object was first seen
    and when its Ready condition first matched its generation.

    Times are ``time.perf_counter()`` as each event arrives, so they compare directly
    with the times the creating thread records.
    """

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.first_seen: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.verdicts: dict[str, str] = {}
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self._objects = client.CustomObjectsApi(api)
        self._namespace = namespace
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"watch-{namespace}")

    def start(self) -> SettleWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=WATCH_WINDOW_S * 4)

    def _follow(self) -> None:
        try:
            version = self._list()
            while not self._stopping.is_set():
                try:
                    version = self._watch(version)
                except ApiException as error:
                    if error.status != 410:
                        raise
                    version = self._list()
        except BaseException as error:  # reported to the waiting thread, which raises it
            self.error = error
            with self.changed:
                self.changed.notify_all()

    def _list(self) -> str:
        """Observe every object as it is now; the resourceVersion to watch from."""
        listed = self._objects.list_namespaced_custom_object(
            GROUP, VERSION, self._namespace, PLURAL
        )
        arrived = time.perf_counter()
        for item in listed["items"]:
            self._observe(item, arrived)
        return str(listed["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Follow changes from ``version`` for one window; the last version seen."""
        stream = watch.Watch().stream(
            self._objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_WINDOW_S,
        )
        for event in stream:
            arrived = time.perf_counter()
            obj = event["object"]
            version = obj["metadata"]["resourceVersion"]
            if event["type"] in ("ADDED", "MODIFIED"):
                self._observe(obj, arrived)
        return version

    def _observe(self, obj: dict[str, Any], arrived: float) -> None:
        name = obj["metadata"]["name"]
        self.first_seen.setdefault(name, arrived)
        verdict = settled_verdict(obj)
        if verdict is None or name in self.settled:
            return
        with self.changed:
            self.settled[name] = arrived
            self.verdicts[name] = verdict
            self.changed.notify_all()


def settled_verdict(obj: dict[str, Any]) -> str | None:
    """``status/reason`` of the Ready condition if it was computed for the object's current
    generation, else ``None``.

    The condition's own observedGeneration is preferred; status.observedGeneration
    stands in for a condition written without one.
    """
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None:
        return None
    observed = ready.get("observedGeneration", status.get("observedGeneration"))
    if observed != obj["metadata"]["generation"]:
        return None
    return f"Ready={ready.get('status')} {ready.get('reason')}"


def fedjob_bodies(count: int) -> list[dict[str, Any]]:
    """``count`` copies of the example FedJob, named job-00000 onwards."""
    template = yaml.safe_load((ROOT / "examples" / "fedjob.yaml").read_text())
    return [{**template, "metadata": {"name": f"job-{index:05d}"}} for index in range(count)]


def invalid_fedjob() -> dict[str, Any]:
    """A FedJob the CRD schema admits and the operator's models reject."""
    path = ROOT / "examples" / "invalid" / "fedjob-fedavg-mixed-ranks.yaml"
    return dict(yaml.safe_load(path.read_text()))


def start_operator(
    cluster: LocalCluster, namespace: str, log: Path, resync_seconds: float
) -> subprocess.Popen[bytes]:
    """The operator as it runs locally, watching only ``namespace``, with its webhook."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "operator" / "main.py"),
            "--backend=local",
            "--standalone",
            f"--namespace={namespace}",
            f"--metrics-port={free_port()}",
            f"--webhook-port={free_port()}",
            f"--resync-seconds={resync_seconds}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )


def check_alive(operator: subprocess.Popen[bytes], log: Path) -> None:
    if operator.poll() is not None:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the operator exited with {operator.returncode}:\n{tail}")


def stop_operator(operator: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a Deployment would; SIGKILL if kopf has not finished within 30 s."""
    operator.terminate()
    try:
        operator.wait(timeout=30)
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait()


def wait_for_webhook(
    objects: client.CustomObjectsApi,
    namespace: str,
    operator: subprocess.Popen[bytes],
    log: Path,
) -> float:
    """Seconds until the operator's webhook denies a server-side dry run of an invalid FedJob.

    The webhook is registered with failurePolicy Ignore (a stopped operator must not
    block writes), so an admitted request proves nothing: only a denial shows the
    webhook configuration is registered and this operator's server answers it.
    Creating the measured objects before that would time some of them without the
    webhook in their path.
    """
    started = time.perf_counter()
    body = invalid_fedjob()
    while time.perf_counter() - started < WEBHOOK_TIMEOUT_S:
        check_alive(operator, log)
        try:
            objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, dry_run="All"
            )
        except ApiException as error:
            if "denied the request" in str(error.body):
                return time.perf_counter() - started
        time.sleep(0.2)
    raise TimeoutError(f"the operator's webhook did not answer within {WEBHOOK_TIMEOUT_S:.0f} s")


def create_fedjobs(
    objects: client.CustomObjectsApi, namespace: str, bodies: list[dict[str, Any]]
) -> dict[str, float]:
    """Create the FedJobs one request at a time, as ``kubectl create -f`` does; when each
    create call returned, by name."""
    created = {}
    for body in bodies:
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        created[body["metadata"]["name"]] = time.perf_counter()
    return created


def wait_until_settled(
    watcher: SettleWatch,
    names: set[str],
    deadline: float,
    operator: subprocess.Popen[bytes],
    log: Path,
) -> None:
    """Block until every name has settled; fail on the deadline, a dead operator or watch."""
    with watcher.changed:
        while not names <= watcher.settled.keys():
            if watcher.error is not None:
                raise RuntimeError("the settle watch failed") from watcher.error
            check_alive(operator, log)
            if time.perf_counter() > deadline:
                missing = len(names - watcher.settled.keys())
                raise TimeoutError(f"{missing} of {len(names)} FedJobs not settled by the deadline")
            watcher.changed.wait(timeout=1.0)


def proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    cluster: LocalCluster,
    count: int,
    repeat: int,
    workdir: Path,
    timeout: float,
    resync_seconds: float,
) -> Run:
    """Run one fresh operator over ``count`` new FedJobs in a namespace of their own."""
    namespace = f"scale-{count}-{repeat}"
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    objects = client.CustomObjectsApi(api)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    log = workdir / f"operator-{count}-{repeat}.log"
    apiserver = int((cluster.workdir / "kube-apiserver.pid").read_text())
    bodies = fedjob_bodies(count)
    operator = start_operator(cluster, namespace, log, resync_seconds)
    watcher = SettleWatch(
        config.new_client_from_config(config_file=str(cluster.kubeconfig)), namespace
    ).start()
    try:
        webhook_s = wait_for_webhook(objects, namespace, operator, log)
        print(
            f"N={count} run {repeat}: webhook answering after {webhook_s:.1f} s; creating",
            flush=True,
        )
        cpu_before = cpu_seconds(operator.pid), cpu_seconds(apiserver)
        started = time.perf_counter()
        created = create_fedjobs(objects, namespace, bodies)
        created_s = time.perf_counter() - started
        print(
            f"N={count} run {repeat}: created in {created_s:.1f} s; waiting to settle", flush=True
        )
        wait_until_settled(watcher, set(created), started + timeout, operator, log)
        rss_mib = proc_status_kib(operator.pid, "VmRSS") / 1024
        cpu = cpu_seconds(operator.pid) - cpu_before[0], cpu_seconds(apiserver) - cpu_before[1]
    finally:
        watcher.stop()
        stop_operator(operator)
    born = {
        name: min(returned, watcher.first_seen.get(name, returned))
        for name, returned in created.items()
    }
    latencies = [watcher.settled[name] - born[name] for name in created]
    return Run(
        count=count,
        seconds=max(watcher.settled[name] for name in created) - started,
        latencies=latencies,
        rss_mib=rss_mib,
        cpu_seconds=cpu[0],
        apiserver_cpu_seconds=cpu[1],
        verdicts=Counter(watcher.verdicts[name] for name in created),
    )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value at or above ``fraction`` of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def rss_kib_per_resource(rss_mib: float, count: int, base_rss_mib: float, base_count: int) -> float:
    """Operator memory each resource beyond the smallest N's adds, in KiB."""
    return (rss_mib - base_rss_mib) * 1024 / (count - base_count)


def per_resource_ms(run: Run) -> float:
    return 1000 * run.seconds / run.count


def p99(run: Run) -> float:
    return percentile(run.latencies, 0.99)


def print_table(by_count: dict[int, list[Run]]) -> None:
    """Every run; CPU columns count only what was spent from the first create to the last
    settle."""
    print(
        f"{'N':>6} {'run':>4} {'all settled (s)':>16} {'per resource (ms)':>18} {'p50 (s)':>8} "
        f"{'p99 (s)':>8} {'operator CPU (s)':>17} {'apiserver CPU (s)':>18} {'RSS (MiB)':>10}"
    )
    for count, runs in by_count.items():
        for repeat, run in enumerate(runs):
            print(
                f"{count:>6} {repeat:>4} {run.seconds:>16.1f} {per_resource_ms(run):>18.1f} "
                f"{percentile(run.latencies, 0.5):>8.2f} {p99(run):>8.2f} "
                f"{run.cpu_seconds:>17.1f} {run.apiserver_cpu_seconds:>18.1f} "
                f"{run.rss_mib:>10.1f}"
            )
    for count, runs in by_count.items():
        verdicts = sum((run.verdicts for run in runs), Counter[str]())
        print(
            f"N={count} settled at: " + ", ".join(f"{n} x {v}" for v, n in verdicts.most_common())
        )


def print_growth(by_count: dict[int, list[Run]]) -> None:
    """Each N against the smallest (medians over repeats, with 95% bootstrap intervals),
    and the local growth exponent between neighbours: time ~ N^k, so k=1 is proportional
    growth and k>1 is faster than that."""
    counts = list(by_count)
    base = by_count[counts[0]]
    for count in counts[1:]:
        runs = by_count[count]
        cells = []
        for label, measure_of in (("time per resource", per_resource_ms), ("p99", p99)):
            ratio, low, high = ratio_interval(
                [measure_of(r) for r in runs], [measure_of(r) for r in base], np.median
            )
            cells.append(f"{label} {ratio:.2f}x [{low:.2f}, {high:.2f}]")
        rss = statistics.median(r.rss_mib for r in runs) / statistics.median(
            r.rss_mib for r in base
        )
        print(f"N={count} vs N={counts[0]}: " + ", ".join(cells) + f", RSS {rss:.2f}x")
    for smaller, larger in itertools.pairwise(counts):
        seconds = [statistics.median(r.seconds for r in by_count[n]) for n in (smaller, larger)]
        exponent = math.log(seconds[1] / seconds[0]) / math.log(larger / smaller)
        print(f"time to all settled ~ N^{exponent:.2f} from N={smaller} to N={larger} (medians)")


def print_results(by_count: dict[int, list[Run]]) -> None:
    counts = list(by_count)
    smallest, largest = counts[0], counts[-1]
    ratio, _, _ = ratio_interval(
        [per_resource_ms(r) for r in by_count[largest]],
        [per_resource_ms(r) for r in by_count[smallest]],
        np.median,
    )
    rss = {n: statistics.median(r.rss_mib for r in runs) for n, runs in by_count.items()}
    print_result(f"operator_time_per_resource_ratio_{largest}_vs_{smallest}", ratio)
    print_result(f"operator_rss_mib_{largest}", rss[largest])
    for count, runs in by_count.items():
        print_result(f"operator_p99_settle_s_{count}", statistics.median(p99(r) for r in runs))
    print_result(
        f"operator_rss_kib_per_resource_{largest}",
        rss_kib_per_resource(rss[largest], largest, rss[smallest], smallest),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 500, 5000])
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds each N may take to settle"
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=30.0,
        help="the operator's periodic re-reconcile of every resource (its default: 30); "
        "a run longer than this also pays for resyncing the resources already settled",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh operators per N, interleaved across N"
    )
    args = parser.parse_args()
    counts = sorted(set(args.counts))
    if len(counts) < 2:
        parser.error("--counts needs at least two distinct values to say how cost grows")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cluster = LocalCluster(workdir / "cluster", find_binaries()).start()
        try:
            cluster.kubectl("apply", "-f", str(ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "crd", "--all")
            by_count: dict[int, list[Run]] = {count: [] for count in counts}
            for repeat in range(args.repeats):
                for count in counts:
                    run = measure(
                        cluster, count, repeat, workdir, args.timeout, args.resync_seconds
                    )
                    by_count[count].append(run)
        finally:
            cluster.stop()
    print(
        f"operator --resync-seconds={args.resync_seconds:g}, counts {counts}, "
        f"{args.repeats} repeats"
    )
    print_table(by_count)
    print_growth(by_count)
    print_results(by_count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
