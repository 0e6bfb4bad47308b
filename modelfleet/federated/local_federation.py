"""Run the FedJob Flower App on one machine: a SuperLink, a SuperNode per client, real
processes on loopback with ``--insecure`` and runtime dependency installation off.

Flower's pins clash with Ray Serve's, so Flower lives in its own virtualenv
(``make federated-venv``); this module only spawns that venv's executables and reads the
files the ServerApp writes, so it runs from the project's main venv without importing
flwr. Ports are picked free on every run (Flower's SuperLink would otherwise take 8000,
Ray Serve's port).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelfleet.federated.processes import (
    MARKER_VARIABLE,
    pick_free_ports,
    stop_processes,
    wait_for_port,
)
from modelfleet.federated.round_log import ADAPTER_DIR, ROUNDS_FILE, RoundRecord, parse_round_log

APP_DIR = Path(__file__).parent / "flower_app"
DEFAULT_VENV = Path(__file__).parents[2] / ".venv-federated"
CONNECTION = "local"
"""Name of the SuperLink connection in the run's private Flower config."""

STARTUP_SECONDS = 60.0
POLL_SECONDS = 2.0
FINISHED_PREFIX = "finished:"
COMPLETED = "finished:completed"

RunConfig = Mapping[str, str | int | float | bool]


@dataclass(frozen=True)
class FederationResult:
    """What a finished local federation left: its rounds and its final adapter."""

    rounds: list[RoundRecord]
    adapter_dir: Path
    """PEFT layout: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    seconds: float
    marker: str
    """The environment tag every process of the federation carried."""


def find_federated_venv(venv: Path = DEFAULT_VENV) -> Path:
    """``venv``'s ``bin`` directory, or an error saying how to build it."""
    bin_dir = venv / "bin"
    missing = [
        name
        for name in ("flwr", "flower-superlink", "flower-supernode")
        if not (bin_dir / name).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"the federated runtime's virtualenv {venv} lacks {missing}; "
            "build it with `make federated-venv`"
        )
    return bin_dir


def render_toml_table(values: RunConfig) -> str:
    """``values`` as TOML ``key = value`` lines; JSON scalars are valid TOML scalars."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def render_node_config(partition_id: int, skill: str) -> str:
    """A SuperNode's ``--node-config``: its partition and the skill it mostly holds."""
    if not skill.isidentifier():
        raise ValueError(f"client skill {skill!r} must be a plain skill name")
    return f"partition-id={partition_id} skill='{skill}'"


def parse_run_status(listing: str, run_id: str) -> str:
    """The status of ``run_id`` in ``flwr ls --format json`` output."""
    document = json.loads(listing)
    for run in document.get("runs", []):
        if str(run.get("run-id")) == run_id:
            return str(run["status"])
    raise ValueError(f"run {run_id} is not in the SuperLink's run list: {listing[:200]}")


class LocalFederation:
    """The processes of one federation and the files they write under ``work_dir``."""

    def __init__(self, bin_dir: Path, work_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.work_dir = work_dir
        self.marker = uuid.uuid4().hex
        self.started: list[subprocess.Popen[bytes]] = []
        self.environment = self._isolate_environment()

    def _isolate_environment(self) -> dict[str, str]:
        """This process's environment pointed at the federated venv and a private Flower
        home, with the marker every descendant inherits."""
        flwr_home = self.work_dir / "flwr-home"
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
        """Start ``name`` from the venv, its output in ``logs/<name>.log``."""
        log_dir = self.work_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        with (log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [str(self.bin_dir / arguments[0]), *arguments[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                cwd=self.work_dir,
            )
        self.started.append(process)
        return process

    def flwr(self, *arguments: str) -> str:
        """Run the ``flwr`` CLI against this federation's SuperLink; its stdout."""
        done = subprocess.run(
            [str(self.bin_dir / "flwr"), *arguments],
            capture_output=True,
            env=self.environment,
            cwd=self.work_dir,
            timeout=STARTUP_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr {arguments[0]} failed: {done.stderr.decode()[-2000:]}")
        return done.stdout.decode()

    def start(self, skills: Sequence[str]) -> None:
        """A SuperLink, then one SuperNode per entry of ``skills``, all listening."""
        link_port, *node_ports = pick_free_ports(1 + len(skills))
        (self.work_dir / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
        )
        link = self.spawn(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            f"--port={link_port}",
        )
        wait_for_port(link_port, link, STARTUP_SECONDS)
        for partition_id, (skill, port) in enumerate(zip(skills, node_ports, strict=True)):
            node = self.spawn(
                f"supernode-{partition_id}",
                "flower-supernode",
                "--insecure",
                f"--superlink=127.0.0.1:{link_port}",
                f"--port={port}",
                f"--node-config={render_node_config(partition_id, skill)}",
            )
            wait_for_port(port, node, STARTUP_SECONDS)

    def run_app(self, run_config: RunConfig, timeout: float) -> None:
        """Submit the app with ``run_config`` and wait until the SuperLink reports it done."""
        config_file = self.work_dir / "run-config.toml"
        config_file.write_text(render_toml_table(run_config))
        submitted = json.loads(
            self.flwr(
                "run", str(APP_DIR), CONNECTION, "--format=json", f"--run-config={config_file}"
            )
        )
        run_id = str(submitted["run-id"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = parse_run_status(
                self.flwr("ls", f"--run-id={run_id}", "--format=json"), run_id
            )
            if status == COMPLETED:
                return
            if status.startswith(FINISHED_PREFIX):
                raise RuntimeError(f"run {run_id} ended {status}; logs in {self.work_dir / 'logs'}")
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f}s")

    def stop(self) -> None:
        """End every process of this federation, spawned by us or by Flower."""
        stop_processes(self.started, self.marker)


def run_local_federation(
    skills: Sequence[str],
    run_config: RunConfig,
    work_dir: Path,
    timeout: float = 600.0,
    venv: Path = DEFAULT_VENV,
) -> FederationResult:
    """Run the app with one client per entry of ``skills`` (the skill it mostly holds) and
    return its rounds and final adapter; every process is gone when this returns or raises.

    ``run_config`` overrides the app's defaults (``flower_app/pyproject.toml``); unless it
    says otherwise every client must report each round. The output goes to ``work_dir``."""
    bin_dir = find_federated_venv(venv)
    work_dir.mkdir(parents=True, exist_ok=True)
    federation = LocalFederation(bin_dir, work_dir.resolve())
    started = time.monotonic()
    try:
        federation.start(skills)
        defaults: dict[str, str | int | float | bool] = {
            "skills": ",".join(dict.fromkeys(skills)),
            "min-clients": len(skills),
        }
        federation.run_app(
            {**defaults, **run_config, "output-dir": str(work_dir.resolve())}, timeout
        )
    finally:
        federation.stop()
    return FederationResult(
        rounds=parse_round_log((work_dir / ROUNDS_FILE).read_text()),
        adapter_dir=work_dir / ADAPTER_DIR,
        seconds=time.monotonic() - started,
        marker=federation.marker,
    )
