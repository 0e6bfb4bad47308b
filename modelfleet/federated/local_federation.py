"""Run one FedJob's Flower federation on this machine: a SuperLink, a SuperNode per client,
real processes on loopback with ``--insecure`` and runtime dependency installation off.

The run directory holds what the operator wrote (``job.json``, and ``sites.json`` with each
client's dataset directory) and what the run writes (checkpoints, ``result.json``, the final
adapter, logs). ``python -m modelfleet.federated.local_federation RUN_DIR`` is the
supervisor the local backend starts, detached, for each FedJob: it resumes after the last
checkpointed round, so killing it (or anything it started) loses at most the round in
flight, and the next supervisor carries on.

Flower's pins clash with Ray Serve's, so Flower lives in its own virtualenv
(``make federated-venv``); this module only spawns that venv's executables and reads files,
so it runs from either venv without importing flwr. Ports are picked free on every run
(Flower's SuperLink would otherwise take 8000, Ray Serve's port).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from modelfleet.federated.checkpoint import RunResult, read_result, write_result
from modelfleet.federated.credentials import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    public_keys,
)
from modelfleet.federated.job import JobSettings, read_job
from modelfleet.federated.processes import (
    MARKER_VARIABLE,
    pick_free_ports,
    stop_processes,
    wait_for_port,
)

APP_DIR = Path(__file__).parent / "flower_app"
DEFAULT_VENV = Path(__file__).parents[2] / ".venv-federated"
SITES_FILE = "sites.json"
LOOPBACK = "127.0.0.1"
CONNECTION = "local"
"""Name of the SuperLink connection in the run's private Flower config."""
STARTUP_SECONDS = 60.0
POLL_SECONDS = 2.0
FINISHED_PREFIX = "finished:"
COMPLETED = "finished:completed"


class RuntimeNotInstalled(FileNotFoundError):
    """The federated virtualenv is missing: no retry will help until it is built."""


def find_federated_venv(venv: Path = DEFAULT_VENV) -> Path:
    """``venv``'s ``bin`` directory, or an error saying how to build it."""
    bin_dir = venv / "bin"
    missing = [
        name
        for name in ("python", "flwr", "flower-superlink", "flower-supernode")
        if not (bin_dir / name).exists()
    ]
    if missing:
        raise RuntimeNotInstalled(
            f"the federated runtime's virtualenv {venv} lacks {missing}; "
            "build it with `make federated-venv`"
        )
    return bin_dir


def write_sites(run_dir: Path, datasets: Mapping[str, Path]) -> None:
    """Record each client's dataset directory, for the launcher only."""
    (run_dir / SITES_FILE).write_text(json.dumps({k: str(v) for k, v in datasets.items()}))


def read_sites(run_dir: Path) -> dict[str, Path]:
    return {k: Path(v) for k, v in json.loads((run_dir / SITES_FILE).read_text()).items()}


def render_node_config(client: str, dataset: PurePath) -> str:
    """A SuperNode's ``--node-config``: which client it is and where its own data lives."""
    return f"client={json.dumps(client)} dataset={json.dumps(str(dataset))}"


def parse_run_status(listing: str, run_id: str) -> str:
    """The status of ``run_id`` in ``flwr ls --format json`` output; an unreachable
    SuperLink is an interruption (``RuntimeError``), not a malformed listing."""
    document = json.loads(listing)
    if document.get("success") is False:
        raise RuntimeError(f"flwr ls failed: {document.get('error-message', listing[:200])}")
    for run in document.get("runs", []):
        if str(run.get("run-id")) == run_id:
            return str(run["status"])
    raise ValueError(f"run {run_id} is not in the SuperLink's run list: {listing[:200]}")


@dataclass(frozen=True)
class Security:
    """TLS with SuperNode authentication: the SuperLink's credential files (CA, certificate,
    key, the clients' public keys) and each client's private key. Without it a federation
    runs ``--insecure``, which only loopback makes acceptable."""

    superlink_dir: Path
    node_keys: Mapping[str, Path]


def superlink_arguments(security: Security | None, host: str, port: int) -> list[str]:
    """``flower-superlink``'s command line: one port serves the Fleet, Control and
    ServerAppIo APIs; with ``security`` over TLS, admitting registered SuperNodes only."""
    arguments = [
        "flower-superlink",
        "--disable-runtime-dependency-installation",
        f"--host={host}",
        f"--port={port}",
    ]
    if security is None:
        return [*arguments, "--insecure"]
    files = security.superlink_dir
    return [
        *arguments,
        f"--ssl-ca-certfile={files / CA_CERT}",
        f"--ssl-certfile={files / SERVER_CERT}",
        f"--ssl-keyfile={files / SERVER_KEY}",
        "--enable-supernode-auth",
    ]


def supernode_arguments(
    superlink: str,
    node_config: str,
    port: int,
    ca_cert: PurePath | None,
    node_key: PurePath | None,
) -> list[str]:
    """``flower-supernode``'s command line: without a CA it connects ``--insecure``."""
    arguments = [
        "flower-supernode",
        f"--superlink={superlink}",
        f"--port={port}",
        f"--node-config={node_config}",
    ]
    if ca_cert is None:
        return [*arguments, "--insecure"]
    arguments.append(f"--root-certificates={ca_cert}")
    if node_key is not None:
        arguments.append(f"--auth-supernode-private-key={node_key}")
    return arguments


class LocalFederation:
    """The processes of one federation and the files they write under ``run_dir``."""

    def __init__(
        self, bin_dir: Path, run_dir: Path, marker: str, security: Security | None = None
    ) -> None:
        self.bin_dir = bin_dir
        self.run_dir = run_dir
        self.marker = marker
        self.security = security
        self.link_port = 0
        self.started: list[subprocess.Popen[bytes]] = []
        self.environment = self._isolate_environment()

    def _isolate_environment(self) -> dict[str, str]:
        """This process's environment pointed at the federated venv and a private Flower
        home, with the marker every descendant inherits."""
        flwr_home = self.run_dir / "flwr-home"
        flwr_home.mkdir(parents=True, exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        environment.update(
            PATH=f"{self.bin_dir}{os.pathsep}{environment.get('PATH', '')}",
            VIRTUAL_ENV=str(self.bin_dir.parent),
            FLWR_HOME=str(flwr_home),
            **{MARKER_VARIABLE: self.marker},
        )
        return environment

    def spawn(self, name: str, *arguments: str) -> subprocess.Popen[bytes]:
        """Start ``name`` from the venv, its output appended to ``logs/<name>.log``."""
        log_dir = self.run_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        with (log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [str(self.bin_dir / arguments[0]), *arguments[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                cwd=self.run_dir,
            )
        self.started.append(process)
        return process

    def flwr(self, *arguments: str) -> str:
        """Run the ``flwr`` CLI against this federation's SuperLink; its stdout."""
        done = subprocess.run(
            [str(self.bin_dir / "flwr"), *arguments],
            capture_output=True,
            env=self.environment,
            cwd=self.run_dir,
            timeout=STARTUP_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr {arguments[0]} failed: {done.stderr.decode()[-2000:]}")
        return done.stdout.decode()

    def start_superlink(self, port: int, host: str = LOOPBACK) -> None:
        """The SuperLink, the CLI's connection to it, and (with security) the registration
        of every client's public key, which a restarted SuperLink has forgotten."""
        security = self.security
        connection = f'address = "127.0.0.1:{port}"\n'
        if security is None:
            connection += "insecure = true\n"
        else:
            connection += (
                f"root-certificates = {json.dumps(str(security.superlink_dir / CA_CERT))}\n"
            )
        (self.run_dir / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n{connection}'
        )
        link = self.spawn("superlink", *superlink_arguments(security, host, port))
        wait_for_port(port, link, STARTUP_SECONDS)
        self.link_port = port
        if security is not None:
            for client, key in public_keys(security.superlink_dir).items():
                self.flwr("supernode", "register", str(key), CONNECTION, f"--name={client}")

    def start(self, job: JobSettings, datasets: Mapping[str, Path]) -> None:
        """A SuperLink, then one SuperNode per client, each told only its own dataset."""
        link_port, *node_ports = pick_free_ports(1 + len(job.clients))
        self.start_superlink(link_port)
        security = self.security
        for client, port in zip(job.clients, node_ports, strict=True):
            arguments = supernode_arguments(
                f"127.0.0.1:{link_port}",
                render_node_config(client.name, datasets[client.name]),
                port,
                None if security is None else security.superlink_dir / CA_CERT,
                None if security is None else security.node_keys.get(client.name),
            )
            node = self.spawn(f"supernode-{client.name}", *arguments)
            wait_for_port(port, node, STARTUP_SECONDS)

    def run_app(self, timeout: float | None, on_poll: Callable[[], None] = lambda: None) -> None:
        """Submit the app for this run directory and wait until the SuperLink reports it
        done, calling ``on_poll`` between polls; a process of the federation that dies ends
        the wait with an error."""
        config_file = self.run_dir / "run-config.toml"
        config_file.write_text(f"work-dir = {json.dumps(str(self.run_dir))}\n")
        submitted = json.loads(
            self.flwr(
                "run", str(APP_DIR), CONNECTION, "--format=json", f"--run-config={config_file}"
            )
        )
        run_id = str(submitted["run-id"])
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            dead = [p.args for p in self.started if p.poll() is not None]
            if dead:
                raise RuntimeError(f"federation processes exited: {dead}")
            status = parse_run_status(
                self.flwr("ls", f"--run-id={run_id}", "--format=json"), run_id
            )
            if status == COMPLETED:
                return
            if status.startswith(FINISHED_PREFIX):
                log = self.run_dir / "logs" / "serverapp.log"
                log.write_text(self.flwr("log", run_id, CONNECTION, "--show"))
                raise RuntimeError(f"run {run_id} ended {status}; the ServerApp's log is {log}")
            on_poll()
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f}s")

    def stop(self) -> None:
        """End every process of this federation, spawned by us or by Flower."""
        stop_processes(self.started, self.marker)


def run_federation(
    run_dir: Path,
    timeout: float | None = None,
    venv: Path = DEFAULT_VENV,
    security: Security | None = None,
) -> RunResult:
    """Run (or resume) the federation of ``run_dir`` to its end; every process it started
    is gone when this returns or raises. The outcome is also in ``result.json``."""
    if (done := read_result(run_dir)) is not None:
        return done
    bin_dir = find_federated_venv(venv)
    marker = os.environ.get(MARKER_VARIABLE) or uuid.uuid4().hex
    federation = LocalFederation(bin_dir, run_dir.resolve(), marker, security)
    try:
        federation.start(read_job(run_dir), read_sites(run_dir))
        federation.run_app(timeout)
    finally:
        federation.stop()
    result = read_result(run_dir)
    if result is None:
        raise RuntimeError(f"the ServerApp ended without a result; logs in {run_dir / 'logs'}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Supervise one run: 0 when it ended (``result.json`` says how), 1 to be restarted."""
    parser = argparse.ArgumentParser(prog="python -m modelfleet.federated.local_federation")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        result = run_federation(args.run_dir)
    except RuntimeNotInstalled as error:
        write_result(args.run_dir, RunResult("Failed", "RuntimeNotInstalled", str(error)))
        return 0
    except (RuntimeError, TimeoutError, OSError, ValueError) as error:
        print(f"federation interrupted, to be resumed: {error}", file=sys.stderr)
        return 1
    print(f"{result.phase}: {result.reason}: {result.message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
