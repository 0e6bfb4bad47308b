"""The SuperLink pod of a FedJob on a cluster: the SuperLink over TLS, the run, and its
progress published where the operator reads it.

``python -m modelfleet.federated.superlink_pod`` is the container's command. It starts
``flower-superlink`` with the job's certificate and SuperNode authentication on, registers
the public key of every client of the job (a restarted SuperLink has forgotten them),
submits the ServerApp for the run directory on the output volume, and after every poll
writes the run's report into the job's status ConfigMap with the pod's own service account,
which may update that one ConfigMap and nothing else. A run that ends leaves the pod idle
until the operator scales it to zero; an interrupted one exits 1, and the restarted pod
resumes after the last checkpointed round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from modelfleet.federated.checkpoint import read_result
from modelfleet.federated.job import JOB_FILE
from modelfleet.federated.local_federation import (
    LocalFederation,
    Security,
    find_federated_venv,
)
from modelfleet.federated.processes import MARKER_VARIABLE
from modelfleet.federated.progress import read_progress

STATUS_KEY = "status.json"
"""The key of the status ConfigMap that holds the report and, once ended, the result."""
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
IDLE_POLL_SECONDS = 30.0
"""Once the run has ended: how often a result not yet published is tried again."""


@dataclass(frozen=True)
class ConfigMapTarget:
    """Where the report goes: a ConfigMap, and the API server with a bearer token."""

    server: str
    namespace: str
    name: str
    token_file: Path
    ca_file: Path | None

    @classmethod
    def in_cluster(
        cls, namespace: str, name: str, account: Path = SERVICE_ACCOUNT
    ) -> ConfigMapTarget:
        """The pod's own API server (from the variables the kubelet sets) and service
        account (its token and CA, where the kubelet mounts them)."""
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        return cls(f"https://{host}:{port}", namespace, name, account / "token", account / "ca.crt")


def status_document(run_dir: Path, output_uri: str) -> str:
    """The run's report and result as the operator reads them from the ConfigMap."""
    progress, result = read_progress(run_dir, output_uri)
    return json.dumps(
        {"report": progress, "result": asdict(result) if result else None}, sort_keys=True
    )


def publish(target: ConfigMapTarget, document: str) -> None:
    """Merge ``document`` into the ConfigMap's data (the token is re-read: it rotates)."""
    request = urllib.request.Request(
        f"{target.server}/api/v1/namespaces/{target.namespace}/configmaps/{target.name}",
        data=json.dumps({"data": {STATUS_KEY: document}}).encode(),
        method="PATCH",
        headers={
            "Content-Type": "application/merge-patch+json",
            "Authorization": f"Bearer {target.token_file.read_text().strip()}",
        },
    )
    context = ssl.create_default_context(
        cafile=str(target.ca_file) if target.ca_file is not None else None
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        response.read()


class Publisher:
    """Publishes the run's status when it changed since the last publication."""

    def __init__(self, target: ConfigMapTarget, run_dir: Path, output_uri: str) -> None:
        self.target = target
        self.run_dir = run_dir
        self.output_uri = output_uri
        self.published = ""

    def __call__(self) -> None:
        """Publish if changed. An API server that does not answer costs a retry at the next
        poll, never the run: the report is rebuilt from the run's files each time."""
        document = status_document(self.run_dir, self.output_uri)
        if document == self.published:
            return
        try:
            publish(self.target, document)
        except OSError as error:
            print(f"publishing status failed, retried at the next poll: {error}", file=sys.stderr)
            return
        self.published = document


def adopt_job(run_dir: Path, job_file: Path) -> None:
    """Put the job's settings in the run directory unless a started run is there: a run
    keeps the settings it started with (the ServerApp does not resume a checkpoint of
    other settings)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / JOB_FILE).is_file():
        partial = run_dir / f".{JOB_FILE}.{uuid.uuid4().hex}"
        shutil.copyfile(job_file, partial)
        partial.replace(run_dir / JOB_FILE)


def serve(run_dir: Path, security: Security, port: int, publisher: Publisher, venv: Path) -> int:
    """Run or resume the federation; 0 once it has ended, 1 to be restarted."""
    federation = LocalFederation(
        find_federated_venv(venv), run_dir, os.environ.get(MARKER_VARIABLE, "superlink"), security
    )
    try:
        federation.start_superlink(port, host="0.0.0.0")
        federation.run_app(None, on_poll=publisher)
    except (RuntimeError, TimeoutError, OSError, ValueError) as error:
        print(f"federation interrupted, to be resumed: {error}", file=sys.stderr)
        return 1
    finally:
        federation.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the run, then stay idle with its result published."""
    parser = argparse.ArgumentParser(prog="python -m modelfleet.federated.superlink_pod")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--output-uri", required=True)
    parser.add_argument("--job", type=Path, required=True, help="the job.json to start with")
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status-configmap", required=True)
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""))
    parser.add_argument("--service-account", type=Path, default=SERVICE_ACCOUNT)
    args = parser.parse_args(argv)
    publisher = Publisher(
        ConfigMapTarget.in_cluster(args.namespace, args.status_configmap, args.service_account),
        args.run_dir,
        args.output_uri,
    )
    adopt_job(args.run_dir, args.job)
    if read_result(args.run_dir) is None:
        security = Security(args.credentials, {})
        code = serve(args.run_dir, security, args.port, publisher, Path(sys.prefix))
        publisher()
        if code:
            return code
    else:
        publisher()
    print("the run has ended; idle until the operator scales this pod to zero")
    while True:
        time.sleep(IDLE_POLL_SECONDS)
        publisher()


if __name__ == "__main__":
    raise SystemExit(main())
