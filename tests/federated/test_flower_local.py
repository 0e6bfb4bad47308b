"""A real local federation on Flower's deployment engine: a SuperLink and three SuperNodes
of ranks 4, 8 and 16 as processes on loopback, FLoRA over their adapters with
differential privacy; the SuperLink and then the ServerApp are killed mid-run and the run
resumes from its checkpoints, and a client whose data is broken is dropped from rounds."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from peft import PeftModel

from modelfleet.federated.checkpoint import (
    ADAPTER_DIR,
    load_latest,
    read_latest_state,
    read_result,
)
from modelfleet.federated.client_training import shared_projection
from modelfleet.federated.credentials import (
    CA_CERT,
    NODE_KEY,
    mint_credentials,
    node_files,
    superlink_files,
    write_credentials,
)
from modelfleet.federated.datasets import write_site_dataset
from modelfleet.federated.job import (
    JOB_FILE,
    ClientSettings,
    JobSettings,
    Method,
    PrivacySettings,
)
from modelfleet.federated.local_federation import (
    CONNECTION,
    LocalFederation,
    Security,
    find_federated_venv,
    read_sites,
    render_node_config,
    run_federation,
    supernode_arguments,
    write_sites,
)
from modelfleet.federated.privacy import Accountant
from modelfleet.federated.processes import (
    MARKER_VARIABLE,
    find_marked_processes,
    pick_free_ports,
)
from modelfleet.federated.secure import upload_bytes
from modelfleet.zoo.cache import load_model

BASE_MODEL = "qwen-tiny"
SKILLS = ("reversal", "sorting", "maximum")
RANKS = (4, 8, 16)
NOISE = 2.0
DELTA = 1e-5
MARKER = "test-flower-local"
TIMEOUT = 600
REFUSED_SUPERNODE = 305
"""The code Flower logs for a SuperNode the SuperLink would not activate."""


def target_epsilon_for(rounds: int) -> float:
    """A budget that ``rounds`` rounds fit and one more would exceed."""
    accountant = Accountant(NOISE, 1.0)
    after = accountant.epsilon_after(rounds, DELTA), accountant.epsilon_after(rounds + 1, DELTA)
    return sum(after) / 2


def prepare_run(tmp_path: Path, job: JobSettings) -> Path:
    """A run directory for ``job`` and a dataset per client, each mostly one skill."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    datasets = {
        client.name: write_site_dataset(tmp_path / client.name, skill, SKILLS, i, 200, 10)
        for i, (client, skill) in enumerate(zip(job.clients, SKILLS, strict=True))
    }
    (run_dir / JOB_FILE).write_text(job.to_json())
    write_sites(run_dir, datasets)
    return run_dir


def three_clients(rounds: int, min_clients: int = 3) -> JobSettings:
    return JobSettings(
        base_model=BASE_MODEL,
        alpha=16.0,
        dropout=0.0,
        target_modules=("q_proj", "v_proj"),
        clients=tuple(ClientSettings(f"site-{i}", rank, 1.0) for i, rank in enumerate(RANKS)),
        rounds=rounds,
        local_steps=2,
        method=Method.FLORA,
        min_clients=min_clients,
        client_fraction=1.0,
        eval_examples=10,
    )


def tls_handshake(port: int, ca_cert: Path) -> str:
    """The common name of the certificate served on ``port``, verified against ``ca_cert``."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
    ):
        certificate = wrapped.getpeercert()
    assert certificate is not None
    names = [value for rdn in certificate["subject"] for key, value in rdn if key == "commonName"]
    return str(names[0])


def kill_after_round(
    run_dir: Path, round_number: int, program: bytes, stop: threading.Event
) -> int:
    """Once ``round_number`` is checkpointed, SIGKILL the federation's ``program``."""
    while not stop.wait(0.5):
        state = read_latest_state(run_dir)
        if state is None or state.round < round_number:
            continue
        for pid in find_marked_processes(MARKER):
            if program in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
                return pid
    return 0


def run_and_kill(run_dir: Path, round_number: int, program: bytes) -> None:
    """Run the federation until ``program`` is killed after ``round_number``; the run
    raises, leaves no process behind and no result, only its checkpoints."""
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(
        target=lambda: killed.append(kill_after_round(run_dir, round_number, program, stop))
    )
    killer.start()
    try:
        with pytest.raises(RuntimeError):
            run_federation(run_dir, timeout=TIMEOUT)
    finally:
        stop.set()
        killer.join()
    assert killed and killed[0], f"{program!r} was never killed"
    assert find_marked_processes(MARKER) == []
    state = read_latest_state(run_dir)
    assert state is not None and state.round >= round_number
    assert read_result(run_dir) is None


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT)
def test_a_killed_federation_resumes_and_stops_before_the_privacy_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MARKER_VARIABLE, MARKER)
    privacy = PrivacySettings(1.0, NOISE, target_epsilon_for(3), DELTA)
    run_dir = prepare_run(tmp_path, replace(three_clients(rounds=4), privacy=privacy))

    run_and_kill(run_dir, 1, b"flower-superlink")
    run_and_kill(run_dir, 2, b"flwr-serverapp")
    result = run_federation(run_dir, timeout=TIMEOUT)

    assert (result.phase, result.reason) == ("Succeeded", "PrivacyBudgetReached")
    assert "stopped after round 3 of 4" in result.message
    state = read_latest_state(run_dir)
    assert state is not None and state.accountant is not None
    assert [report.round for report in state.reports] == [1, 2, 3], "a round redone or skipped"
    assert Accountant.from_dict(state.accountant).rounds == 3
    epsilons = [report.epsilon for report in state.reports]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] <= privacy.target_epsilon
    for report in state.reports:
        assert report.clients == ("site-0", "site-1", "site-2") and not report.dropped
        assert report.bytes_sent == report.uncompressed_bytes > 0
    assert find_marked_processes(MARKER) == []

    adapter = PeftModel.from_pretrained(load_model(BASE_MODEL)[0], run_dir / ADAPTER_DIR)
    assert adapter.peft_config["default"].r >= max(RANKS)


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT)
def test_a_failing_client_is_dropped_and_below_min_clients_the_job_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MARKER_VARIABLE, MARKER)
    tolerant = prepare_run(tmp_path / "tolerant", three_clients(rounds=1, min_clients=2))
    broken = tmp_path / "tolerant" / "site-2" / "train.jsonl"
    broken.write_text('{"prompt": "no answer"}\n')

    result = run_federation(tolerant, timeout=TIMEOUT)

    assert (result.phase, result.reason) == ("Succeeded", "RoundsCompleted")
    state = read_latest_state(tolerant)
    assert state is not None
    [report] = state.reports
    assert report.clients == ("site-0", "site-1") and report.dropped == ("site-2",)

    strict = tolerant.with_name("strict")
    strict.mkdir()
    (strict / JOB_FILE).write_text(three_clients(rounds=1).to_json())
    (strict / "sites.json").write_text((tolerant / "sites.json").read_text())

    result = run_federation(strict, timeout=TIMEOUT)

    assert (result.phase, result.reason) == ("Failed", "ClientsMissing")
    assert "fewer than minClients=3; missing: site-2" in result.message
    assert read_latest_state(strict) is None
    assert find_marked_processes(MARKER) == []


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT)
def test_over_tls_only_registered_supernodes_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The federation as a cluster runs it: TLS with the job's own CA and Flower's
    CLI-managed SuperNode authentication. A SuperNode whose key the SuperLink has not
    registered is refused (Flower's exit code 305); the registered ones train a round."""
    monkeypatch.setenv(MARKER_VARIABLE, MARKER)
    job = replace(three_clients(rounds=1, min_clients=2), clients=three_clients(1).clients[:2])
    run_dir = prepare_run(tmp_path, replace(three_clients(1), rounds=1))
    (run_dir / JOB_FILE).write_text(job.to_json())
    material = mint_credentials(["127.0.0.1", "localhost"], ["site-0", "site-1", "intruder"])
    superlink_dir = write_credentials(
        tmp_path / "superlink", material, superlink_files(["site-0", "site-1"])
    )
    assert not (superlink_dir / "intruder.pub").exists()
    node_keys = {
        name: write_credentials(tmp_path / name, material, node_files(name)) / NODE_KEY
        for name in ("site-0", "site-1", "intruder")
    }
    security = Security(superlink_dir, node_keys)
    bin_dir = find_federated_venv()

    federation = LocalFederation(bin_dir, run_dir, MARKER, security)
    try:
        federation.start(job, read_sites(run_dir))
        link_port = federation.link_port
        assert tls_handshake(link_port, superlink_dir / CA_CERT) == "superlink"
        intruder = federation.spawn(
            "supernode-intruder",
            *supernode_arguments(
                f"127.0.0.1:{link_port}",
                render_node_config("intruder", tmp_path / "site-2"),
                pick_free_ports(1)[0],
                superlink_dir / CA_CERT,
                node_keys["intruder"],
            ),
        )
        federation.started.remove(intruder)
        assert intruder.wait(timeout=60) != 0
        refusal = (run_dir / "logs" / "supernode-intruder.log").read_text()
        assert f"Exit Code: {REFUSED_SUPERNODE}" in refusal
        federation.run_app(TIMEOUT)
    finally:
        federation.stop()

    result = read_result(run_dir)
    assert result is not None and (result.phase, result.reason) == ("Succeeded", "RoundsCompleted")
    state = read_latest_state(run_dir)
    assert state is not None and state.reports[0].clients == ("site-0", "site-1")
    assert find_marked_processes(MARKER) == []


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT)
def test_a_secure_round_reveals_only_the_sum_and_masks_again_without_a_failed_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secure aggregation in the runtime: clients exchange X25519 keys through the server,
    train B against the shared frozen A and upload it masked. site-2 fails after the keys
    were exchanged, so its masks cannot cancel: the round is masked again without it. The
    global update is exactly in the shared A's row space (B_sum @ A), and every upload is
    one uint32 per entry of the padded B's."""
    monkeypatch.setenv(MARKER_VARIABLE, MARKER)
    job = replace(three_clients(rounds=1, min_clients=2), secure=True)
    run_dir = prepare_run(tmp_path, job)
    (tmp_path / "site-2" / "train.jsonl").write_text('{"prompt": "no answer"}\n')

    result = run_federation(run_dir, timeout=TIMEOUT)

    assert (result.phase, result.reason) == ("Succeeded", "RoundsCompleted"), result.message
    loaded = load_latest(run_dir)
    assert loaded is not None
    state, delta = loaded
    [report] = state.reports
    assert report.clients == ("site-0", "site-1") and report.dropped == ("site-2",)
    projection = shared_projection(job)
    assert report.bytes_sent == 2 * upload_bytes(projection)
    for layer, value in delta.items():
        a = projection.a(layer)
        in_row_space = value @ np.linalg.pinv(a) @ a
        assert np.max(np.abs(in_row_space - value)) <= 1e-9 * max(1.0, np.max(np.abs(value)))
        assert np.max(np.abs(value)) > 0
    assert find_marked_processes(MARKER) == []


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT)
def test_a_stalled_client_is_dropped_at_the_round_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """site-2's SuperNode is frozen (SIGSTOP) once the federation is up: it stays connected
    but never replies, and the round closes without it when ``roundTimeoutSeconds`` pass."""
    monkeypatch.setenv(MARKER_VARIABLE, MARKER)
    job = replace(three_clients(rounds=1, min_clients=2), round_timeout_seconds=30.0)
    run_dir = prepare_run(tmp_path, job)
    federation = LocalFederation(find_federated_venv(), run_dir, MARKER)
    try:
        federation.start(job, read_sites(run_dir))
        stalled = next(p for p in federation.started if 'client="site-2"' in str(p.args))

        def online() -> int:
            listing = json.loads(federation.flwr("supernode", "ls", CONNECTION, "--format=json"))
            return sum(node["status"] == "online" for node in listing.get("nodes", []))

        deadline = time.monotonic() + 60
        while online() < 3:
            assert time.monotonic() < deadline, "the SuperNodes did not all connect"
            time.sleep(1)
        os.kill(stalled.pid, signal.SIGSTOP)
        started = time.monotonic()
        federation.run_app(TIMEOUT)
        elapsed = time.monotonic() - started
        os.kill(stalled.pid, signal.SIGCONT)
    finally:
        federation.stop()

    state = read_latest_state(run_dir)
    assert state is not None
    [report] = state.reports
    assert report.clients == ("site-0", "site-1") and report.dropped == ("site-2",)
    assert elapsed >= job.round_timeout_seconds, "the round waited for the deadline"
    assert find_marked_processes(MARKER) == []
